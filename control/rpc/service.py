"""gRPC servicers: translate requests (control.rpc.convert), hand edits to the controller, map errors.

No policy logic lives here. Error mapping, so clients can rely on codes rather than text:
    invalid input or a state this machine cannot hold -> INVALID_ARGUMENT (field: reason; ...),
                                                         with a google.rpc.BadRequest in the details
    (and, before a servicer runs, control.rpc.request_guard: bytes that do not parse, impossible keys)
    unknown rule/tunnel/chain/interface               -> NOT_FOUND
    duplicate id on an incremental add                -> ALREADY_EXISTS
    detaching an interface a chain still names        -> FAILED_PRECONDITION
    a local policy change on a fleet member            -> FAILED_PRECONDITION (names the source)
    the kernel refused (previous state restored)      -> FAILED_PRECONDITION
    the attached programs do not use our maps         -> FAILED_PRECONDITION (health NOT_SERVING)
    expected_generation is stale                      -> ABORTED (read again, retry)
    too many event streams or traces at once          -> RESOURCE_EXHAUSTED
    a tracer this kernel cannot load                  -> FAILED_PRECONDITION
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from control import errors
from control.apply.controller import Controller
from control.apply.reconcile import (
    ApplyError,
    DataplaneMismatch,
    InterfaceOccupied,
    InvalidState,
    MissingInterface,
)
from control.apply.state import StateError
from control.policy import edits
from control.policy.models import DesiredState
from control.rpc import acl_wire, convert, request_guard, wire_scan
from control.rpc.api import pb2, pb2_grpc
from control.rpc.edit_priority import EditPriority
from control.rpc.request_guard import bounded_details
from control.rpc.status_details import abort_invalid

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (MissingInterface, grpc.StatusCode.NOT_FOUND),
    (InterfaceOccupied, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidState, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.InUse, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.GenerationMismatch, grpc.StatusCode.ABORTED),
    (errors.Exhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.PolicyOwned, grpc.StatusCode.FAILED_PRECONDITION),
    (ApplyError, grpc.StatusCode.FAILED_PRECONDITION),
    (DataplaneMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (StateError, grpc.StatusCode.INTERNAL),
]


def rpc(method: F) -> F:
    """Runs a servicer method; known errors become status codes, anything else INTERNAL."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - the daemon must answer, never die
            code = next((c for t, c in _CODES if isinstance(exc, t)), None)
            if code is None:
                log.exception("unexpected error in %s", method.__name__)
                code = grpc.StatusCode.INTERNAL
            else:
                log.info("request refused",
                         extra={"rpc": method.__name__, "code": code.name, "error": str(exc)})
            errors = getattr(exc, "errors", None)
            if code == grpc.StatusCode.INVALID_ARGUMENT and errors:
                abort_invalid(context, errors, bounded_details(str(exc)))  # + BadRequest details
            context.abort(code, bounded_details(str(exc)))

    return wrapper  # type: ignore[return-value]


def single_edit(method: F) -> F:
    """Runs a servicer method of one list edit at the edit priority (control.rpc.edit_priority):
    decoding, programming and persisting the edit; the answer is sent after, as an ordinary task."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        with self.priority.serving():
            return method(self, request, context)

    return wrapper  # type: ignore[return-value]


def in_kernel(name: str) -> bool:
    """Whether XDP and TC ingress programs are on the interface right now (it may have vanished)."""
    from pyroute2.netlink.exceptions import NetlinkError

    from dataplane.kernel import attach

    try:
        return attach.xdp_attached(name) and attach.tc_filter_attached(name)
    except (attach.AttachError, NetlinkError):  # no such interface (or it went while we asked)
        return False


class InterfaceService(pb2_grpc.InterfaceServiceServicer):
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def _status(self, name: str, memory: dict[str, dict[str, int]]) -> Any:
        state = self.controller.read()
        iface = next((i for i in state.interfaces if i.name == name), None)
        mode = self.controller.xdp_mode(name)
        # what the kernel has now, not what the last apply set: the proto promises "right now"
        active = mode if mode is not None and in_kernel(name) else None
        status = pb2.InterfaceStatus(
            name=name,
            requested_mode=convert.xdp_mode_to_proto(iface.mode if iface else None),
            active_mode=convert.xdp_mode_to_proto(active),
            attached=active is not None,
        )
        if name in memory:
            status.kernel_memory_bytes = sum(memory[name].values())
        return status

    @rpc
    def AttachInterface(self, request: Any, context: grpc.ServicerContext) -> Any:
        iface = convert.validated(convert.interface_from_proto, request.interface, where="interface")
        try:
            state = self.controller.change(lambda s: edits.attach(s, iface))
        except (MissingInterface, InterfaceOccupied) as exc:  # the state's path: name the request's
            last = f"interfaces[{len(self.controller.read().interfaces)}]"
            raise type(exc)([("interface" + path.removeprefix(last) if path.startswith(last + ".") else path,
                              reason) for path, reason in exc.errors]) from None
        status = self._status(iface.name, self.controller.kernel_memory())
        return pb2.AttachInterfaceResponse(interface=status, generation=state.generation)

    @rpc
    def DetachInterface(self, request: Any, context: grpc.ServicerContext) -> Any:
        state = self.controller.change(lambda s: edits.detach(s, request.name))
        return pb2.DetachInterfaceResponse(generation=state.generation)

    @rpc
    def ListInterfaces(self, request: Any, context: grpc.ServicerContext) -> Any:
        names = [i.name for i in self.controller.read().interfaces]
        memory = self.controller.kernel_memory()
        return pb2.ListInterfacesResponse(interfaces=[self._status(n, memory) for n in names])


def _diff_to_proto(d: edits.PolicyDiff) -> Any:
    def ids(x: edits.Diff) -> Any:
        return pb2.IdDiff(added=x.added, removed=x.removed, changed=x.changed)

    return pb2.PolicyDiff(acl=ids(d.acl), tunnels=ids(d.tunnels),
                          chains=pb2.NameDiff(added=d.chains.added, removed=d.chains.removed,
                                              changed=d.chains.changed),
                          settings_changed=d.settings_changed)


_POLICY_FIELD = pb2.ApplyPolicyRequest.DESCRIPTOR.fields_by_name["policy"].number


def _policy_bytes() -> bytes | None:
    """The Policy of the ApplyPolicy request being served, as the client encoded it (None when
    the request's bytes are not at hand, or hold the field other than once)."""
    data = request_guard.request_bytes()
    if data is None:
        return None
    try:
        start, end = wire_scan.Wire(data).entries(_POLICY_FIELD)
    except wire_scan.NotPlain:
        return None
    return data[int(start[0]):int(end[0])] if len(start) == 1 else None


class PolicyService(pb2_grpc.PolicyServiceServicer):
    def __init__(self, controller: Controller, priority: EditPriority | None = None) -> None:
        self.controller = controller
        self.priority = priority or EditPriority(None)

    def _edit(self, edit: Callable[[DesiredState], DesiredState]) -> int:
        return self.controller.change(edit).generation

    def _attached(self) -> set[str]:
        return {i.name for i in self.controller.read().interfaces}

    @rpc
    def ApplyPolicy(self, request: Any, context: grpc.ServicerContext) -> Any:
        policy = convert.validated(convert.policy_from_proto, request.policy, where="policy",
                                   encoded=_policy_bytes())
        change = self.controller.apply_policy(policy, expected_generation=request.expected_generation,
                                              dry_run=request.dry_run)
        return pb2.ApplyPolicyResponse(generation=change.state.generation, diff=_diff_to_proto(change.diff),
                                       unchanged=change.unchanged)

    @rpc
    def GetPolicy(self, request: Any, context: grpc.ServicerContext) -> Any:
        state = self.controller.read()
        return pb2.GetPolicyResponse(policy=convert.policy_to_proto(state.policy, request.acl_columns),
                                     generation=state.generation)

    @rpc
    @single_edit
    def AddAclRule(self, request: Any, context: grpc.ServicerContext) -> Any:
        rule = convert.validated(convert.acl_rule_from_proto, request.rule, where="rule")
        return pb2.AddAclRuleResponse(generation=self._edit(edits.Edit("add_rule", rule)))

    @rpc
    @single_edit
    def DeleteAclRule(self, request: Any, context: grpc.ServicerContext) -> Any:
        generation = self._edit(edits.Edit("delete_rule", request.id))
        return pb2.DeleteAclRuleResponse(generation=generation)

    @rpc
    def ListAclRules(self, request: Any, context: grpc.ServicerContext) -> Any:
        state = self.controller.read()
        return pb2.ListAclRulesResponse(rules=acl_wire.messages_from_table(state.policy.acl),
                                        generation=state.generation)

    @rpc
    @single_edit
    def AddTunnel(self, request: Any, context: grpc.ServicerContext) -> Any:
        tunnel = convert.validated(convert.tunnel_from_proto, request.tunnel, where="tunnel")
        return pb2.AddTunnelResponse(generation=self._edit(edits.Edit("add_tunnel", tunnel)))

    @rpc
    @single_edit
    def DeleteTunnel(self, request: Any, context: grpc.ServicerContext) -> Any:
        generation = self._edit(edits.Edit("delete_tunnel", request.vni))
        return pb2.DeleteTunnelResponse(generation=generation)

    @rpc
    def ListTunnels(self, request: Any, context: grpc.ServicerContext) -> Any:
        state = self.controller.read()
        return pb2.ListTunnelsResponse(tunnels=[convert.tunnel_to_proto(t) for t in state.policy.tunnels],
                                       generation=state.generation)

    @rpc
    @single_edit
    def AddChain(self, request: Any, context: grpc.ServicerContext) -> Any:
        chain = convert.validated(convert.service_chain_from_proto, request.chain, where="chain")
        edits.require_attached([("chain", chain)], self._attached())
        return pb2.AddChainResponse(generation=self._edit(edits.Edit("add_chain", chain)))

    @rpc
    @single_edit
    def DeleteChain(self, request: Any, context: grpc.ServicerContext) -> Any:
        generation = self._edit(edits.Edit("delete_chain", request.name))
        return pb2.DeleteChainResponse(generation=generation)

    @rpc
    def ListChains(self, request: Any, context: grpc.ServicerContext) -> Any:
        state = self.controller.read()
        return pb2.ListChainsResponse(chains=[convert.service_chain_to_proto(c) for c in state.policy.chains],
                                      generation=state.generation)


def _counter(c: Any) -> Any:
    return pb2.Counter(packets=c.packets, bytes=c.bytes)


# interfaces asked for (None = all) -> PolicyEventDelivery (control.rpc.stream_service.delivery)
DeliveryReader = Callable[[list[str] | None], Any]


class StatsService(pb2_grpc.StatsServiceServicer):
    def __init__(self, controller: Controller, delivery: DeliveryReader | None = None) -> None:
        self.controller = controller
        self.delivery = delivery

    @rpc
    def GetStats(self, request: Any, context: grpc.ServicerContext) -> Any:
        from dataplane import abi

        stats = self.controller.stats(list(request.interfaces))
        delivery = self.delivery(list(request.interfaces) or None) if self.delivery else None
        return pb2.GetStatsResponse(
            acl_rules=[pb2.AclRuleCounter(rule_id=k, counter=_counter(c))
                       for k, c in sorted(stats.rules.items())],
            tunnels=[pb2.TunnelCounter(vni=k, counter=_counter(c)) for k, c in sorted(stats.tunnels.items())],
            chain_legs=[pb2.ChainLegCounter(chain=k[0], leg=k[1], counter=_counter(c))
                        for k, c in sorted(stats.legs.items())],
            reasons=[pb2.ReasonCounter(reason=convert.reason_to_proto(abi.Reason[k]), counter=_counter(c))
                     for k, c in stats.reasons.items()],
            events=[pb2.EventCounter(event=convert.event_to_proto(abi.Event[k]), counter=_counter(c))
                    for k, c in stats.events.items()],
            interfaces=[pb2.InterfaceCounter(name=k, counter=_counter(c))
                        for k, c in sorted(stats.interfaces.items())],
            generation=self.controller.read().generation,
            policy_events=delivery,
        )


def add_services(server: grpc.Server, controller: Controller,
                 delivery: DeliveryReader | None = None, priority: EditPriority | None = None) -> list[str]:
    """Registers the unary servicers; returns their full service names (for reflection and
    health). The streaming ones are control.rpc.stream_service's."""
    pb2_grpc.add_InterfaceServiceServicer_to_server(InterfaceService(controller), server)
    pb2_grpc.add_PolicyServiceServicer_to_server(PolicyService(controller, priority), server)
    pb2_grpc.add_StatsServiceServicer_to_server(StatsService(controller, delivery), server)
    return [pb2.DESCRIPTOR.services_by_name[n].full_name
            for n in ("InterfaceService", "PolicyService", "StatsService")]
