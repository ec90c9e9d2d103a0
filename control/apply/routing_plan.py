"""Policy routing for service chains, as data: what the kernel should hold and how to get there.

Pure (no I/O): `desired_routing(chains)` says which `ip rule`s and routes the chains need,
`plan(desired, actual)` lists the operations that turn `actual` into `desired`. The adapter in
`control.apply.netlink` reads `actual` from the kernel and applies the operations.

What a chain leg becomes (per leg, `mark` M, `table` T, next hops H):

* two rules, one per family: `ip [-6] rule add fwmark M/0xffffffff lookup T priority P`.
  The mask is exact because the data plane writes the whole skb->mark.
* the default route of table T, per family, with the hops of that family: a hop's `via`
  decides its family (an IPv4 via only goes into the IPv4 default, an IPv6 via only into the
  IPv6 one), a hop with only `dev` is a device route in both. Several hops make a multipath
  (ECMP, equal weights) route. A family without hops gets no route: its rule then finds an
  empty table and the lookup falls through to the following rules (main).

Rule priorities: the legs are ordered by (chain priority, chain name) - lower priority first,
as for ACL rules; the name makes ties independent of list order - and within a chain forward
before return_path; the n-th leg (from 0) gets RULE_PRIORITY_MIN + n. Marks are exact and
unique, so the order never changes which rule a packet matches; it makes `ip rule` read in
policy order. A chain inserted before others shifts their priorities by one: the plan then adds
the renumbered rules before deleting the old ones, so no packet misses its rule. More legs than
the band holds is refused (ValueError naming the first chain that does not fit).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

from control.policy.models import RULE_PRIORITY_MAX, RULE_PRIORITY_MIN, NextHop, ServiceChain

FWMASK_EXACT = 0xFFFFFFFF
# Metric of our routes: the kernel's default for IPv6 user routes; the same for IPv4 so both read
# alike. It is part of a route's identity (replace and delete match on it).
ROUTE_METRIC = 1024
STALE = "stale"  # owner of an entry no chain asks for any more

Family = Literal[4, 6]
FAMILIES: tuple[Family, ...] = (4, 6)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_DST: dict[int, IPNetwork] = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}


# --- state ---------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Rule:
    """`ip rule fwmark mark/mask lookup table priority priority` in one family."""

    priority: int
    family: Family
    mark: int
    mask: int
    table: int
    owner: str = field(default="", compare=False)  # "chain fw forward": for messages only

    def describe(self) -> str:
        return (f"rule fwmark {self.mark:#x}/{self.mask:#x} lookup {self.table} "
                f"priority {self.priority} (IPv{self.family})")


@dataclass(frozen=True, order=True)
class Hop:
    """One next hop: a gateway, a device, or both; `weight` as in `ip route ... weight`."""

    via: IPAddress | None = None
    dev: str | None = None
    weight: int = 1

    def describe(self) -> str:
        parts = ([f"via {self.via}"] if self.via is not None else []) + \
                ([f"dev {self.dev}"] if self.dev is not None else [])
        if self.weight != 1:
            parts.append(f"weight {self.weight}")
        return " ".join(parts)

    def satisfied_by(self, actual: Hop) -> bool:
        """A hop without dev is satisfied whatever device the kernel resolved its gateway to."""
        return (self.via == actual.via and self.weight == actual.weight
                and (self.dev is None or self.dev == actual.dev))


@dataclass(frozen=True)
class Route:
    """A unicast route in one of our tables. Identity (what replace/delete match): `key`."""

    family: Family
    table: int
    dst: IPNetwork
    hops: tuple[Hop, ...]
    metric: int = ROUTE_METRIC
    owner: str = field(default="", compare=False)

    @property
    def key(self) -> tuple[int, int, str, int]:
        return (self.table, self.family, str(self.dst), self.metric)

    def describe(self) -> str:
        dst = "default" if self.dst.prefixlen == 0 else str(self.dst)
        if len(self.hops) == 1:
            how = self.hops[0].describe()
        else:
            how = " ".join(f"nexthop {h.describe()}" for h in self.hops) or "(no next hop)"
        family = "" if self.family == 4 else "IPv6 "
        return f"{family}route {dst} {how} in table {self.table}"

    def satisfied_by(self, actual: Route) -> bool:
        """Same key and the same hops (as a multiset; see `Hop.satisfied_by` for dev)."""
        if self.key != actual.key or len(self.hops) != len(actual.hops):
            return False
        left = list(actual.hops)
        # Hops naming a dev can only take an identical actual hop; assign them before the
        # dev-less ones, which accept any dev, so a greedy assignment is exact.
        for hop in sorted(self.hops, key=lambda h: h.dev is None):
            match = next((a for a in left if hop.satisfied_by(a)), None)
            if match is None:
                return False
            left.remove(match)
        return True


@dataclass(frozen=True)
class RoutingState:
    """The rules and routes Tidegate owns (desired, or as read from the kernel)."""

    rules: frozenset[Rule] = frozenset()
    routes: frozenset[Route] = frozenset()

    @classmethod
    def of(cls, rules: Iterable[Rule] = (), routes: Iterable[Route] = ()) -> RoutingState:
        return cls(frozenset(rules), frozenset(routes))

    def route_map(self) -> dict[tuple[int, int, str, int], Route]:
        return {r.key: r for r in self.routes}


# --- operations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddRule:
    rule: Rule

    def describe(self) -> str:
        return f"{_owner(self.rule.owner)}: add {self.rule.describe()}"

    def inverse(self) -> Op:
        return DeleteRule(self.rule)


@dataclass(frozen=True)
class DeleteRule:
    rule: Rule

    def describe(self) -> str:
        return f"{_owner(self.rule.owner)}: delete {self.rule.describe()}"

    def inverse(self) -> Op:
        return AddRule(self.rule)


@dataclass(frozen=True)
class ReplaceRoute:
    """`ip route replace`; `previous` is the route it overwrites (None: it creates one)."""

    route: Route
    previous: Route | None = None

    def describe(self) -> str:
        return f"{_owner(self.route.owner)}: {self.route.describe()}"

    def inverse(self) -> Op:
        if self.previous is None:
            return DeleteRoute(self.route)
        return ReplaceRoute(self.previous, self.route)


@dataclass(frozen=True)
class DeleteRoute:
    route: Route

    def describe(self) -> str:
        return f"{_owner(self.route.owner)}: delete {self.route.describe()}"

    def inverse(self) -> Op:
        return ReplaceRoute(self.route, None)


Op = AddRule | DeleteRule | ReplaceRoute | DeleteRoute


def _owner(owner: str) -> str:
    return owner or STALE


# --- desired state -------------------------------------------------------------------------------


def leg_owner(chain: ServiceChain, leg_name: str) -> str:
    return f"chain {chain.name} {leg_name}"


def desired_routing(chains: list[ServiceChain]) -> RoutingState:
    """Rules and routes the chains need. ValueError (naming the chain) if they cannot be had."""
    _check_unique(chains)
    rules: list[Rule] = []
    routes: list[Route] = []
    ordered = sorted(chains, key=lambda c: (c.priority, c.name))
    slot = 0
    for chain in ordered:
        for leg_name, leg in chain.legs():
            priority = RULE_PRIORITY_MIN + slot
            if priority > RULE_PRIORITY_MAX:
                raise ValueError(
                    f"chain {chain.name}: no rule priority left in {RULE_PRIORITY_MIN}..{RULE_PRIORITY_MAX} "
                    f"(one per leg; {RULE_PRIORITY_MAX - RULE_PRIORITY_MIN + 1} legs at most): "
                    "remove or merge chains")
            slot += 1
            owner = leg_owner(chain, leg_name)
            for family in FAMILIES:
                rules.append(Rule(priority, family, leg.mark, FWMASK_EXACT, leg.table, owner))
            routes.extend(_leg_routes(owner, leg.table, leg.nexthops))
    return RoutingState.of(rules, routes)


def _leg_routes(owner: str, table: int, nexthops: list[NextHop]) -> list[Route]:
    out = []
    for family in FAMILIES:
        hops = tuple(Hop(nh.via, nh.dev) for nh in nexthops if nh.via is None or nh.via.version == family)
        if not hops:
            continue
        if family == 6:
            _check_ipv6_hops(owner, hops)
        out.append(Route(family, table, DEFAULT_DST[family], hops, ROUTE_METRIC, owner))
    return out


def _check_ipv6_hops(owner: str, hops: tuple[Hop, ...]) -> None:
    for hop in hops:
        if hop.via is not None and hop.via.is_link_local and hop.dev is None:
            raise ValueError(f"{owner}: next hop via {hop.via} is link-local: name its dev too")
    if len(hops) > 1 and any(h.via is None for h in hops):
        # The kernel balances IPv6 only across gateways (a dev-only hop is refused with EINVAL).
        raise ValueError(
            f"{owner}: an IPv6 multipath route needs a via on every next hop, and the dev-only "
            "next hops apply to IPv6 as well: give them an IPv6 via, or use a single dev-only next hop")


def _check_unique(chains: list[ServiceChain]) -> None:
    """The Policy model checks this too; chains can reach us without it."""
    names: set[str] = set()
    marks: dict[int, str] = {}
    tables: dict[int, str] = {}
    for chain in chains:
        if chain.name in names:
            raise ValueError(f"chain {chain.name}: the name is used twice")
        names.add(chain.name)
        for leg_name, leg in chain.legs():
            owner = leg_owner(chain, leg_name)
            for what, seen, value in (("mark", marks, leg.mark), ("table", tables, leg.table)):
                if value in seen:
                    raise ValueError(f"{owner}: {what} {value} is also used by {seen[value]}")
                seen[value] = owner


# --- plan ----------------------------------------------------------------------------------------


def plan(desired: RoutingState, actual: RoutingState) -> list[Op]:
    """Operations turning `actual` into `desired`; entries already right are not touched.

    Order keeps traffic flowing: routes are written before the rules that lead to them, new
    rules before stale ones go, and stale routes last, when no rule of ours leads there.
    """
    owners = {r.table: r.owner for r in desired.rules}
    have = actual.route_map()
    replace = [ReplaceRoute(route, have.get(route.key))
               for route in sorted(desired.routes, key=lambda r: r.key)
               if route.key not in have or not route.satisfied_by(have[route.key])]
    wanted = {r.key for r in desired.routes}
    stale_routes = [DeleteRoute(_owned(route, owners.get(route.table, "")))
                    for route in sorted(actual.routes, key=lambda r: r.key) if route.key not in wanted]
    add_rules = [AddRule(rule) for rule in sorted(desired.rules - actual.rules)]
    stale_rules = [DeleteRule(_owned(rule, owners.get(rule.table, "")))
                   for rule in sorted(actual.rules - desired.rules)]
    return [*replace, *add_rules, *stale_rules, *stale_routes]


_Entry = TypeVar("_Entry", Rule, Route)


def _owned(entry: _Entry, owner: str) -> _Entry:
    """The entry labelled with the leg that now uses its table (for messages), if any."""
    return replace(entry, owner=owner) if owner and not entry.owner else entry
