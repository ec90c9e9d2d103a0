"""Policy-routing adapter for service chains: reads and writes Tidegate's rules and routes.

`control.apply.routing_plan` decides (pure); this module talks netlink through a caller-owned pyroute2
`IPRoute` (`with IPRoute() as ipr`, or `Namespace.ipr()` in tests):

    ops = sync(ipr, policy.chains)   # read_actual + plan + apply, undone again if a step fails
    remove_all(ipr)                  # detach/shutdown: delete everything Tidegate owns

Ownership. Tidegate owns routing tables TABLE_MIN..TABLE_MAX and rule priorities
RULE_PRIORITY_MIN..RULE_PRIORITY_MAX (control.policy.models), and tags every rule (FRA_PROTOCOL) and
route (rtm_protocol) it writes with RTPROT_TIDEGATE. It reads back, and so changes or deletes,
only entries carrying that tag inside that range: an operator's rule in our priority band or an
operator's route in one of our tables, with any other protocol, is never touched. (An `ip route
replace` does overwrite a foreign route of the same destination and metric in one of our
tables: owning the table means that.)

RTPROT_TIDEGATE = 84, ASCII "T". The protocol is one byte with no registry beyond the kernel's
list; 84 is free in the kernel's rtnetlink.h (0-4 kernel-internal; 8-18, 42, 99, 186-192 named
daemons), in iproute2's /etc/iproute2/rt_protos (the same list), in FRR (186-198, its own
additions), and not a value the usual tools pick (BIRD 12, keepalived 18, Calico's 80,
systemd-networkd and NetworkManager 2/3/4/9/16). Values above 192 are avoided: routing daemons
add new ones there.
`echo "84 tidegate" > /etc/iproute2/rt_protos.d/tidegate.conf` makes `ip rule`/`ip route`
print "proto tidegate" instead of "proto 84".

Every request spells out family, priority (rule preference / route metric), table, protocol and
prefix lengths: pyroute2 otherwise fills rule priority 32000 and full-length prefixes silently.
Only the errno each step expects is ignored: EEXIST when adding a rule, ENOENT/ESRCH when
deleting; anything else becomes a RoutingError naming the chain, the entry and the reason.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from control.apply.routing_plan import (
    FAMILIES,
    AddRule,
    DeleteRoute,
    DeleteRule,
    Family,
    Hop,
    Op,
    ReplaceRoute,
    Route,
    RoutingState,
    Rule,
    desired_routing,
    plan,
)
from control.policy.models import RULE_PRIORITY_MAX, RULE_PRIORITY_MIN, TABLE_MAX, TABLE_MIN, ServiceChain

RTPROT_TIDEGATE = 84  # see the module docstring for why this value
AF: dict[int, int] = {4: socket.AF_INET, 6: socket.AF_INET6}
FR_ACT_TO_TBL = 1  # rule action "lookup <table>"
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0  # a route through a gateway
RT_SCOPE_LINK = 253  # an IPv4 route straight out of a device (what `ip route add ... dev` sets)
RT_SCOPE_NOWHERE = 255  # on delete: "any scope" (the IPv4 delete otherwise matches scope 0 only)

# What a step may fail with and still have reached its goal.
EXPECTED: dict[type, frozenset[int]] = {
    AddRule: frozenset({errno.EEXIST}),
    DeleteRule: frozenset({errno.ENOENT, errno.ESRCH}),
    ReplaceRoute: frozenset(),
    DeleteRoute: frozenset({errno.ESRCH, errno.ENOENT}),
}


class RoutingError(Exception):
    """A netlink step failed. `op` is the step, `code` the errno, `applied` the steps of this
    run that had taken effect before it, `in_effect` those still in effect after any rollback
    (empty when everything was undone)."""

    def __init__(self, op: Op, code: int, reason: str, *, applied: Sequence[Op] = (),
                 in_effect: Sequence[Op] | None = None, rollback_failures: Sequence[RoutingError] = ()):
        self.op = op
        self.code = code
        self.reason = reason
        self.applied = list(applied)
        self.in_effect = list(applied if in_effect is None else in_effect)
        self.rollback_failures = list(rollback_failures)
        super().__init__(self._message())

    @property
    def errno_name(self) -> str:
        return errno.errorcode.get(self.code, str(self.code))

    def _message(self) -> str:
        msg = f"{self.op.describe()}: {self.reason} ({self.errno_name})"
        if self.applied and not self.in_effect:
            msg += f"; the {len(self.applied)} change(s) made before it were undone"
        elif self.in_effect:
            msg += "; still in effect: " + "; ".join(op.describe() for op in self.in_effect)
        for failure in self.rollback_failures:
            msg += f"; undo failed: {failure.op.describe()}: {failure.reason} ({failure.errno_name})"
        return msg


# --- reading -------------------------------------------------------------------------------------


def read_actual(ipr: IPRoute) -> RoutingState:
    """The rules and routes Tidegate owns: our protocol, and our priority band / table range."""
    names = {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
    rules = [rule for family in FAMILIES for msg in ipr.get_rules(family=AF[family])
             if (rule := _rule_from(msg, family)) is not None]
    routes = [route for family in FAMILIES for msg in ipr.get_routes(family=AF[family])
              if (route := _route_from(msg, family, names)) is not None]
    return RoutingState.of(rules, routes)


def _rule_from(msg: Any, family: Family) -> Rule | None:
    if msg.get_attr("FRA_PROTOCOL") != RTPROT_TIDEGATE:
        return None
    priority = msg.get_attr("FRA_PRIORITY") or 0
    if not RULE_PRIORITY_MIN <= priority <= RULE_PRIORITY_MAX:
        return None
    table = msg.get_attr("FRA_TABLE") or msg["table"]
    return Rule(priority, family, msg.get_attr("FRA_FWMARK") or 0, msg.get_attr("FRA_FWMASK") or 0, table)


def _route_from(msg: Any, family: Family, names: dict[int, str]) -> Route | None:
    table = msg.get_attr("RTA_TABLE") or msg["table"]
    if msg["proto"] != RTPROT_TIDEGATE or not TABLE_MIN <= table <= TABLE_MAX:
        return None
    dst_addr = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == 4 else "::")
    dst = ipaddress.ip_network(f"{dst_addr}/{msg['dst_len']}", strict=False)
    multipath = msg.get_attr("RTA_MULTIPATH")
    if multipath:
        hops = tuple(_hop(nh.get_attr("RTA_GATEWAY"), nh["oif"], nh["hops"] + 1, names) for nh in multipath)
    elif msg.get_attr("RTA_GATEWAY") or msg.get_attr("RTA_OIF"):
        hops = (_hop(msg.get_attr("RTA_GATEWAY"), msg.get_attr("RTA_OIF"), 1, names),)
    else:
        hops = ()  # blackhole and the like: not what we write, so it will be replaced or deleted
    return Route(family, table, dst, hops, msg.get_attr("RTA_PRIORITY") or 0)


def _hop(gateway: str | None, oif: int | None, weight: int, names: dict[int, str]) -> Hop:
    dev = names.get(oif, f"if{oif}") if oif else None
    return Hop(ipaddress.ip_address(gateway) if gateway else None, dev, weight)


# --- writing -------------------------------------------------------------------------------------


def apply(ipr: IPRoute, ops: Iterable[Op], *, rollback: bool = False) -> list[Op]:
    """Execute `ops` in order; return those that changed something (not the ignored errnos).

    On a failure, RoutingError; with `rollback`, the steps already taken are first undone in
    reverse order (what could not be undone is listed in the error's `in_effect`).
    """
    ifindex = _ifindexes(ipr)
    applied: list[Op] = []
    for op in ops:
        try:
            if _execute(ipr, op, ifindex):
                applied.append(op)
        except RoutingError as exc:
            if not rollback:
                raise RoutingError(op, exc.code, exc.reason, applied=applied) from exc
            kept, failures = _undo(ipr, applied, ifindex)
            raise RoutingError(op, exc.code, exc.reason, applied=applied, in_effect=kept,
                               rollback_failures=failures) from exc
    return applied


def sync(ipr: IPRoute, chains: list[ServiceChain]) -> list[Op]:
    """Make the kernel hold exactly what `chains` need; return the steps that changed something.

    ValueError if the chains cannot be routed (before anything is written); RoutingError if a
    step fails, after the steps of this call were undone (see `RoutingError.in_effect`).
    """
    desired = desired_routing(chains)
    return apply(ipr, plan(desired, read_actual(ipr)), rollback=True)


def remove_all(ipr: IPRoute) -> list[Op]:
    """Delete every rule and route Tidegate owns (detach, shutdown); leave everything else.

    Best effort: a failing delete does not stop the others; the first failure is raised after.
    """
    ops = plan(RoutingState(), read_actual(ipr))
    done: list[Op] = []
    failures: list[RoutingError] = []
    for op in ops:
        try:
            if _execute(ipr, op, {}):
                done.append(op)
        except RoutingError as exc:
            failures.append(exc)
    if failures:
        first = failures[0]
        more = f" (and {len(failures) - 1} more failure(s))" if len(failures) > 1 else ""
        raise RoutingError(first.op, first.code, first.reason + more, applied=done)
    return done


def _undo(ipr: IPRoute, applied: list[Op], ifindex: dict[str, int]) -> tuple[list[Op], list[RoutingError]]:
    kept: list[Op] = []
    failures: list[RoutingError] = []
    for op in reversed(applied):
        try:
            _execute(ipr, op.inverse(), ifindex)
        except RoutingError as exc:
            kept.append(op)
            failures.append(exc)
    return kept[::-1], failures


def _execute(ipr: IPRoute, op: Op, ifindex: dict[str, int]) -> bool:
    """One step; False if it failed with the errno that means "already so"."""
    try:
        if isinstance(op, (AddRule, DeleteRule)):
            ipr.rule("add" if isinstance(op, AddRule) else "del", **_rule_args(op.rule))
        elif isinstance(op, ReplaceRoute):
            ipr.route("replace", **_route_args(op.route), **_nexthop_args(op, ifindex))
        else:
            ipr.route("del", **_route_args(op.route), scope=RT_SCOPE_NOWHERE)
    except NetlinkError as exc:
        if exc.code in EXPECTED[type(op)]:
            return False
        raise RoutingError(op, exc.code, os.strerror(exc.code)) from exc
    return True


def _rule_args(rule: Rule) -> dict[str, Any]:
    return {"family": AF[rule.family], "priority": rule.priority, "fwmark": rule.mark,
            "fwmask": rule.mask, "table": rule.table, "action": FR_ACT_TO_TBL,
            "protocol": RTPROT_TIDEGATE, "src_len": 0, "dst_len": 0}


def _route_args(route: Route) -> dict[str, Any]:
    """What identifies a route: family, table, destination, metric, and our protocol."""
    args: dict[str, Any] = {"family": AF[route.family], "table": route.table, "dst_len": route.dst.prefixlen,
                            "priority": route.metric, "proto": RTPROT_TIDEGATE}
    if route.dst.prefixlen:
        args["dst"] = str(route.dst.network_address)
    return args


def _nexthop_args(op: ReplaceRoute, ifindex: dict[str, int]) -> dict[str, Any]:
    route = op.route
    dev_only = all(h.via is None for h in route.hops)
    scope = RT_SCOPE_LINK if route.family == 4 and dev_only else RT_SCOPE_UNIVERSE
    hops = [_hop_args(op, hop, ifindex) for hop in route.hops]
    args: dict[str, Any] = {"type": RTN_UNICAST, "scope": scope}
    if len(hops) == 1:
        args.update({k: v for k, v in hops[0].items() if k != "hops"})
    else:
        args["multipath"] = hops
    return args


def _hop_args(op: Op, hop: Hop, ifindex: dict[str, int]) -> dict[str, Any]:
    args: dict[str, Any] = {"hops": hop.weight - 1}  # rtnexthop.rtnh_hops is weight - 1
    if hop.via is not None:
        args["gateway"] = str(hop.via)
    if hop.dev is not None:
        if hop.dev not in ifindex:
            raise RoutingError(op, errno.ENODEV, f"interface {hop.dev} does not exist")
        args["oif"] = ifindex[hop.dev]
    return args


def _ifindexes(ipr: IPRoute) -> dict[str, int]:
    return {str(link.get_attr("IFLA_IFNAME")): int(link["index"]) for link in ipr.get_links()}


class NetlinkRouting:
    """The reconciler's view of policy routing, in the calling thread's network namespace."""

    def check(self, chains: list[ServiceChain]) -> None:
        desired_routing(chains)  # raises ValueError naming the chain

    def sync(self, chains: list[ServiceChain]) -> list[Op]:
        with IPRoute() as ipr:
            return sync(ipr, chains)

    def remove_all(self) -> None:
        with IPRoute() as ipr:
            remove_all(ipr)
