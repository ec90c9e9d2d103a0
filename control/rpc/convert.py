"""Proto messages <-> policy models: the one module that translates between them.

From proto, a message is turned into a plain dict of the model's shape (proto field names are
the model's field names) and handed to pydantic, which does all of the validation: this module
checks nothing itself, so every error comes out of the models, with the field path pydantic
gives it. Absence is translated, never guessed:

- an `optional` scalar that is not set, an enum at *_UNSPECIFIED, an empty prefix/address/dev
  string and an unset message field are left out of the dict, so the model's default applies
  (or pydantic reports a required field as missing, e.g. an AclRule without an action);
- an enum number this version does not know is passed through as a number, for pydantic to
  reject with the field's path.

To proto, every field is set explicitly, defaults included, so
`policy_from_proto(policy_to_proto(p)) == p` and a client reading a policy sees every value.

Validation errors become InvalidArgument (a ValueError) with (field path, reason) pairs, paths
written as in the proto with list indexes in brackets: `acl[3].match.dport`. The gRPC layer
answers it with INVALID_ARGUMENT and `str(exc)` as the message.
"""

from __future__ import annotations

import enum
import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from pydantic import ValidationError

from control.errors import InvalidArgument
from control.observe.fanout import EventFilter
from control.policy.acl_decode import AclErrors
from control.policy.acl_table import AclTable
from control.policy.models import (
    PROTOCOL_MAX,
    AclRule,
    Interface,
    Leg,
    Match,
    NextHop,
    Policy,
    ServiceChain,
    Settings,
    Tunnel,
    describe_errors,
    protocol_conflict,
    protocol_error,
)
from control.rpc import acl_wire
from control.rpc.api import pb2

T = TypeVar("T")
Dict = dict[str, Any]

_ROOT = "(policy)"  # describe_errors' name for an error of the whole object


def field_path(path: str, where: str = "") -> str:
    """A describe_errors path ("acl[3].match") under the request field `where` ("policy.acl[3]...")."""
    if path == _ROOT:
        return where or _ROOT
    return f"{where}.{path}" if where else path


def validated(fn: Callable[..., T], *args: Any, where: str = "", **kwargs: Any) -> T:
    """fn(*args, **kwargs), with a pydantic ValidationError raised as InvalidArgument.

    `where` prefixes the paths with the request field that held the object ("rule", "chain").
    """
    try:
        return fn(*args, **kwargs)
    except ValidationError as exc:
        raise InvalidArgument([(field_path(p, where), r) for p, r in describe_errors(exc)]) from exc
    except InvalidArgument as exc:
        if not where:
            raise
        raise InvalidArgument([(field_path(p, where), r) for p, r in exc.errors]) from exc


# --- enums: by name, "PROTOCOL_TCP" <-> "tcp" ---------------------------------------------------

def _name(enum: EnumTypeWrapper, prefix: str, number: int) -> str | int | None:
    """The model's literal for an enum number; None for *_UNSPECIFIED; unknown numbers as is."""
    if number == 0:
        return None
    try:
        return enum.Name(number).removeprefix(prefix).lower()
    except ValueError:
        return number


def _number(enum: EnumTypeWrapper, prefix: str, name: str | None) -> Any:
    """The enum number of a model literal (typed Any: the stubs give each enum its own int type)."""
    return 0 if name is None else enum.Value(prefix + name.upper())


def _put(d: Dict, key: str, value: object) -> None:
    if value is not None and value != "":
        d[key] = value


def _put_optional(d: Dict, msg: Any, field: str) -> None:
    if msg.HasField(field):
        d[field] = getattr(msg, field)


# --- proto -> dict of the model's shape (no checks: pydantic does them) -------------------------

# Errors of wire fields the models do not have (Match.protocol_number): the model is handed an
# invalid value in the field the wire field stands for, so that it checks what it checks when
# that field is refused, and its error there is replaced by the wire field's. model path ->
# (wire path, reason), paths relative to the object converted.
Wire = dict[str, tuple[str, str]]
_REFUSED_PROTOCOL = -1  # a protocol the model refuses


def _protocol(msg: pb2.Match, where: str, wire: Wire) -> int | str | None:
    """The model's protocol of a Match: by name when the enum has one, else the number (the enum
    is open, and protocol_number says any number 0-255, which must agree with the enum)."""
    named = _name(pb2.Protocol, "PROTOCOL_", msg.protocol)
    if not msg.HasField("protocol_number"):
        return named
    number = msg.protocol_number
    reason = None
    if msg.protocol and msg.protocol != number:
        reason = protocol_conflict(msg.protocol, number)
    elif number > PROTOCOL_MAX:
        reason = protocol_error(number)
    if reason is not None:
        wire[field_path("protocol", where)] = (field_path("protocol_number", where), reason)
        return _REFUSED_PROTOCOL
    return _name(pb2.Protocol, "PROTOCOL_", number) if number else 0


def _match_dict(msg: pb2.Match, wire: Wire, where: str = "match") -> Dict:
    d: Dict = {}
    _put(d, "src", msg.src)
    _put(d, "dst", msg.dst)
    protocol = _protocol(msg, where, wire)
    if protocol is not None:
        d["protocol"] = protocol
    for field in ("dport", "sport"):
        if msg.HasField(field):
            ports = getattr(msg, field)
            d[field] = {"low": ports.low, "high": ports.high}
    for field in ("icmp_type", "icmp_code"):
        _put_optional(d, msg, field)
    if msg.syn:
        d["syn"] = True
    return d


def _acl_rule_dict(msg: pb2.AclRule, wire: Wire) -> Dict:
    d: Dict = {"id": msg.id, "log": msg.log, "description": msg.description, "metrics": msg.metrics}
    _put_optional(d, msg, "priority")
    _put(d, "action", _name(pb2.Action, "ACTION_", msg.action))
    if msg.HasField("match"):
        d["match"] = _match_dict(msg.match, wire)
    return d


def _tunnel_dict(msg: pb2.Tunnel) -> Dict:
    d: Dict = {"vni": msg.vni}
    _put_optional(d, msg, "vxlan")
    _put_optional(d, msg, "geneve")
    return d


def _nexthop_dict(msg: pb2.NextHop) -> Dict:
    d: Dict = {}
    _put(d, "via", msg.via)
    _put(d, "dev", msg.dev)
    return d


def _leg_dict(msg: pb2.Leg, where: str, wire: Wire) -> Dict:
    d: Dict = {"interfaces": list(msg.interfaces), "mark": msg.mark, "table": msg.table,
               "nexthops": [_nexthop_dict(n) for n in msg.nexthops]}
    if msg.HasField("match"):
        d["match"] = _match_dict(msg.match, wire, field_path("match", where))
    return d


def _chain_dict(msg: pb2.ServiceChain, wire: Wire, where: str = "") -> Dict:
    d: Dict = {"name": msg.name}
    _put_optional(d, msg, "priority")
    for leg in ("forward", "return_path"):
        if msg.HasField(leg):
            d[leg] = _leg_dict(getattr(msg, leg), field_path(leg, where), wire)
    return d


def _settings_dict(msg: pb2.Settings) -> Dict:
    d: Dict = {}
    for field in ("vxlan_port", "geneve_port", "decap", "rewrite_inner_dmac", "strict_tunnel_ports",
                  "allow_established"):
        _put_optional(d, msg, field)
    if msg.HasField("established_timeouts"):
        timeouts: Dict = {}
        for field in ("tcp", "tcp_closing", "udp", "icmp"):
            _put_optional(timeouts, msg.established_timeouts, field)
        d["established_timeouts"] = timeouts
    _put(d, "unknown_vni_action",
         _name(pb2.UnknownVniAction, "UNKNOWN_VNI_ACTION_", msg.unknown_vni_action))
    _put(d, "default_action", _name(pb2.Action, "ACTION_", msg.default_action))
    _put(d, "fragments", _name(pb2.Fragments, "FRAGMENTS_", msg.fragments))
    return d


def _acl(msg: pb2.Policy, encoded: bytes | None = None) -> AclTable | AclErrors:
    """The ACL decoded by column (control.rpc.acl_wire); its errors go to the Policy model, which
    reports them with those of the other fields. A packed ACL's errors are reported at once."""
    if msg.HasField("acl_columns"):
        if len(msg.acl):
            raise InvalidArgument([("acl_columns", f"use acl or acl_columns, not both ({len(msg.acl):,} "
                                                   "rules in acl)")])
        try:
            return acl_wire.table_from_packed(msg.acl_columns)
        except acl_wire.PackedErrors as exc:
            raise InvalidArgument([(f"acl_columns.{p}", m) for p, m in exc.errors]) from None
    try:
        return acl_wire.table_from_policy(msg, encoded)
    except AclErrors as exc:
        return exc


def _policy_dict(msg: pb2.Policy, wire: Wire, encoded: bytes | None = None) -> Dict:
    d: Dict = {"acl": _acl(msg, encoded),
               "tunnels": [_tunnel_dict(t) for t in msg.tunnels],
               "chains": [_chain_dict(c, wire, f"chains[{i}]") for i, c in enumerate(msg.chains)]}
    if msg.HasField("settings"):
        d["settings"] = _settings_dict(msg.settings)
    return d


def _interface_dict(msg: pb2.Interface) -> Dict:
    d: Dict = {"name": msg.name}
    _put(d, "mode", _name(pb2.XdpMode, "XDP_MODE_", msg.mode))
    _put(d, "replace", msg.replace or None)
    _put(d, "next_program", msg.next_program)
    return d


# --- public: proto -> model (raises InvalidArgument) --------------------------------------------

def _model(model: type[T], to_dict: Callable[[Any, Wire], Dict], msg: Any) -> T:
    wire: Wire = {}
    data = to_dict(msg, wire)
    try:
        return model.model_validate(data)  # type: ignore[attr-defined, no-any-return]
    except ValidationError as exc:
        errors = [wire.get(path, (path, reason)) for path, reason in describe_errors(exc)]
        raise InvalidArgument(errors) from exc


def policy_from_proto(msg: pb2.Policy, where: str = "", encoded: bytes | None = None) -> Policy:
    """`encoded`: the bytes `msg` was parsed from, when the caller has them (the ACL is read from
    them, control.rpc.acl_wire.table_from_policy; else from the message encoded again)."""
    return validated(_model, Policy, functools.partial(_policy_dict, encoded=encoded), msg, where=where)


def acl_rule_from_proto(msg: pb2.AclRule, where: str = "") -> AclRule:
    return validated(_model, AclRule, _acl_rule_dict, msg, where=where)


def tunnel_from_proto(msg: pb2.Tunnel, where: str = "") -> Tunnel:
    return validated(Tunnel.model_validate, _tunnel_dict(msg), where=where)


def service_chain_from_proto(msg: pb2.ServiceChain, where: str = "") -> ServiceChain:
    return validated(_model, ServiceChain, _chain_dict, msg, where=where)


def settings_from_proto(msg: pb2.Settings, where: str = "") -> Settings:
    return validated(Settings.model_validate, _settings_dict(msg), where=where)


def interface_from_proto(msg: pb2.Interface, where: str = "") -> Interface:
    return validated(Interface.model_validate, _interface_dict(msg), where=where)


# --- public: model -> proto (every field explicit) ----------------------------------------------

def _str(value: object) -> str:
    return "" if value is None else str(value)


def match_to_proto(m: Match) -> pb2.Match:
    """protocol_number and protocol both carry a rule's protocol (the enum the number itself when
    it has no name: a client of an older version sees a number it does not know, never "any")."""
    msg = pb2.Match(src=_str(m.src), dst=_str(m.dst))
    number = m.protocol_number
    if number is not None:
        msg.protocol = number  # type: ignore[assignment]
        msg.protocol_number = number
    for field in ("dport", "sport"):
        ports = getattr(m, field)
        if ports is not None:
            getattr(msg, field).CopyFrom(pb2.PortRange(low=ports.low, high=ports.high))
    for field in ("icmp_type", "icmp_code"):
        value = getattr(m, field)
        if value is not None:
            setattr(msg, field, value)
    msg.syn = m.syn
    return msg


def acl_rule_to_proto(rule: AclRule) -> pb2.AclRule:
    return pb2.AclRule(id=rule.id, priority=rule.priority, action=_number(pb2.Action, "ACTION_", rule.action),
                       match=match_to_proto(rule.match), log=rule.log, description=rule.description,
                       metrics=rule.metrics)


def tunnel_to_proto(tunnel: Tunnel) -> pb2.Tunnel:
    return pb2.Tunnel(vni=tunnel.vni, vxlan=tunnel.vxlan, geneve=tunnel.geneve)


def _nexthop_to_proto(hop: NextHop) -> pb2.NextHop:
    return pb2.NextHop(via=_str(hop.via), dev=_str(hop.dev))


def leg_to_proto(leg: Leg) -> pb2.Leg:
    return pb2.Leg(interfaces=leg.interfaces, match=match_to_proto(leg.match), mark=leg.mark,
                   table=leg.table, nexthops=[_nexthop_to_proto(n) for n in leg.nexthops])


def service_chain_to_proto(chain: ServiceChain) -> pb2.ServiceChain:
    msg = pb2.ServiceChain(name=chain.name, priority=chain.priority, forward=leg_to_proto(chain.forward))
    if chain.return_path is not None:
        msg.return_path.CopyFrom(leg_to_proto(chain.return_path))
    return msg


def settings_to_proto(s: Settings) -> pb2.Settings:
    return pb2.Settings(
        vxlan_port=s.vxlan_port, geneve_port=s.geneve_port, decap=s.decap,
        unknown_vni_action=_number(pb2.UnknownVniAction, "UNKNOWN_VNI_ACTION_", s.unknown_vni_action),
        default_action=_number(pb2.Action, "ACTION_", s.default_action),
        rewrite_inner_dmac=s.rewrite_inner_dmac, strict_tunnel_ports=s.strict_tunnel_ports,
        allow_established=s.allow_established,
        established_timeouts=pb2.EstablishedTimeouts(**s.established_timeouts.model_dump()),
        fragments=_number(pb2.Fragments, "FRAGMENTS_", s.fragments))


def policy_to_proto(policy: Policy, acl_columns: bool = False) -> pb2.Policy:
    """With acl_columns, the ACL in Policy.acl_columns (packed) instead of Policy.acl."""
    msg = pb2.Policy(settings=settings_to_proto(policy.settings),
                     tunnels=[tunnel_to_proto(t) for t in policy.tunnels],
                     chains=[service_chain_to_proto(c) for c in policy.chains])
    if acl_columns:
        msg.acl_columns.CopyFrom(acl_wire.packed_from_table(policy.acl))
    else:
        msg.acl.extend(acl_wire.messages_from_table(policy.acl))
    return msg


def interface_to_proto(interface: Interface) -> pb2.Interface:
    return pb2.Interface(name=interface.name, mode=xdp_mode_to_proto(interface.mode),
                         replace=interface.replace, next_program=interface.next_program or "")


# --- enums of the data plane and of attach results ----------------------------------------------

def xdp_mode_to_proto(mode: str | None) -> Any:
    """"native"/"generic"/"auto" (a model literal or what attach reports) -> XdpMode; None -> 0."""
    return _number(pb2.XdpMode, "XDP_MODE_", mode)


def reason_to_proto(reason: int) -> Any:
    """A tg_reason value (dataplane.abi.Reason) -> Reason: the same number, by design (typed Any:
    the stubs give each enum its own int type)."""
    return int(reason)


def event_to_proto(event: int) -> Any:
    """A tg_event value (dataplane.abi.Event) -> Event: the same number, by design."""
    return int(event)


# --- observability: policy events, trace requests and events ------------------------------------

def wall_offset_ns() -> int:
    """Wall clock minus CLOCK_MONOTONIC (what bpf_ktime_get_ns counts), in ns."""
    return time.time_ns() - time.monotonic_ns()


def _wall(ts_ns: int, offset_ns: int | None) -> int:
    return max(0, int(ts_ns) + (wall_offset_ns() if offset_ns is None else offset_ns))


def _text(value: Any) -> str:
    """An address, enum or name as text; None as ""."""
    if value is None:
        return ""
    if isinstance(value, enum.Enum):
        return value.name
    return str(value)


_ACTION_NAMES = {"ALLOW": "ALLOW", "PASS": "ALLOW", "XDP_PASS": "ALLOW",
                 "DENY": "DENY", "DROP": "DENY", "XDP_DROP": "DENY", "REJECT": "REJECT"}


def action_to_proto(action: Any) -> Any:
    """A tg_action (dataplane.abi.Action, its number, or "allow"/"deny"/"reject") -> Action."""
    from dataplane import abi

    if isinstance(action, int) and not isinstance(action, enum.Enum):
        action = abi.Action(action)
    name = _ACTION_NAMES.get(_text(action).upper())
    return 0 if name is None else pb2.Action.Value(f"ACTION_{name}")


def policy_event_to_proto(interface: str, event: Any, offset_ns: int | None = None) -> pb2.PolicyEvent:
    """A dataplane.kernel.events.PolicyEvent read on `interface` -> PolicyEvent."""
    msg = pb2.PolicyEvent(
        time_unix_nano=_wall(event.ts_ns, offset_ns), ts_ns=int(event.ts_ns), interface=interface,
        ifindex=int(event.ifindex), rule_id=int(event.rule_id or 0), reason=reason_to_proto(event.reason),
        action=action_to_proto(event.action), src=_text(event.src), dst=_text(event.dst),
        protocol=int(event.proto or 0), sport=int(event.sport or 0), dport=int(event.dport or 0),
        length=int(event.length or 0))
    if event.vni is not None:
        msg.vni = int(event.vni)
    return msg


def trace_event_to_proto(event: Any, offset_ns: int | None = None) -> pb2.TraceEvent:
    """A dataplane.trace.tracer.TraceEvent -> TraceEvent."""
    return pb2.TraceEvent(
        time_unix_nano=_wall(event.ts_ns, offset_ns), ts_ns=int(event.ts_ns), hook=_text(event.hook),
        ifindex=int(event.ifindex or 0), interface=_text(event.ifname), src=_text(event.src),
        dst=_text(event.dst), protocol=int(event.proto or 0), sport=int(event.sport or 0),
        dport=int(event.dport or 0), detail=_text(event.detail), drop_reason=_text(event.drop_reason))


TRACE_DURATION_DEFAULT = 30.0  # dataplane.trace.spec's defaults, for a field left at 0
TRACE_EVENTS_DEFAULT = 10_000


def trace_spec_from_proto(msg: pb2.TraceRequest) -> Dict:
    """The keyword arguments of dataplane.trace.tracer.TraceSpec, with the defaults for fields left at 0.

    The limits (host syntax, port range, duration, event count) are TraceSpec's to check: it
    names the field of each error, which the caller reports as INVALID_ARGUMENT."""
    protocol = _name(pb2.Protocol, "PROTOCOL_", msg.protocol)
    if isinstance(protocol, int):
        raise InvalidArgument([("protocol", f"{protocol} is not a Protocol this daemon knows")])
    return {"host": msg.host.strip() or None, "protocol": protocol, "port": msg.port or None,
            "duration_s": msg.duration_s or TRACE_DURATION_DEFAULT,
            "max_events": msg.max_events or TRACE_EVENTS_DEFAULT}


def event_filter_from_proto(msg: pb2.WatchEventsRequest) -> EventFilter:
    """WatchEventsRequest -> EventFilter; InvalidArgument naming every bad field."""
    errors: list[tuple[str, str]] = []
    for index, reason in enumerate(msg.reasons):
        if reason == 0 or reason not in pb2.Reason.values():
            errors.append((f"reasons[{index}]",
                           f"{reason} is not a verdict reason (e.g. REASON_DROP_DENIED)"))
    prefixes: Dict = {}
    for name in ("src", "dst"):
        try:
            prefixes[name] = EventFilter.build(**{name: getattr(msg, name).strip()})
        except ValueError as exc:
            field, _, reason = str(exc).partition(": ")
            errors.append((field, reason))
    if errors:
        raise InvalidArgument(errors)
    return EventFilter(frozenset(msg.rule_ids), frozenset(int(r) for r in msg.reasons),
                       frozenset(msg.interfaces), prefixes["src"].src, prefixes["dst"].dst)
