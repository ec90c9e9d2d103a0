"""Pure tests of the policy-routing planner: desired state from chains, and minimal plans.

Plans are also applied to a fake routing table (`apply_to`) to check they reach the goal.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from control.apply import routing_plan
from control.apply.routing_plan import (
    DEFAULT_DST,
    FWMASK_EXACT,
    ROUTE_METRIC,
    AddRule,
    DeleteRoute,
    DeleteRule,
    Hop,
    Op,
    ReplaceRoute,
    Route,
    RoutingState,
    Rule,
    desired_routing,
    plan,
)
from control.policy.models import RULE_PRIORITY_MAX, RULE_PRIORITY_MIN, ServiceChain

BAND = RULE_PRIORITY_MAX - RULE_PRIORITY_MIN + 1


def chain(name: str, *, mark: int = 0x10, table: int = 1001, nexthops: list[dict] | None = None,
          priority: int = 1000, ret: dict | None = None) -> ServiceChain:
    spec: dict = {"name": name, "priority": priority,
                  "forward": {"interfaces": ["eth0"], "mark": mark, "table": table,
                              "nexthops": nexthops or [{"via": "10.9.0.2"}]}}
    if ret is not None:
        spec["return_path"] = {"interfaces": ["eth1"], **ret}
    return ServiceChain.model_validate(spec)


def hop(via: str | None = None, dev: str | None = None, weight: int = 1) -> Hop:
    return Hop(ipaddress.ip_address(via) if via else None, dev, weight)


def default(family: int, table: int, *hops: Hop, metric: int = ROUTE_METRIC) -> Route:
    return Route(family, table, DEFAULT_DST[family], hops, metric)  # type: ignore[arg-type]


def routes_of(state: RoutingState) -> dict[tuple[int, int], tuple[Hop, ...]]:
    return {(r.family, r.table): r.hops for r in state.routes}


def as_read(state: RoutingState) -> RoutingState:
    """`state` as read back from the kernel, which does not know which chain wrote what."""
    return RoutingState.of([replace(r, owner="") for r in state.rules],
                           [replace(r, owner="") for r in state.routes])


def apply_to(state: RoutingState, ops: list[Op]) -> RoutingState:
    """A fake kernel: rules are a set, routes are keyed like the kernel keys them."""
    rules = set(state.rules)
    routes = state.route_map()
    for op in ops:
        if isinstance(op, AddRule):
            rules.add(op.rule)
        elif isinstance(op, DeleteRule):
            rules.remove(op.rule)
        elif isinstance(op, ReplaceRoute):
            routes[op.route.key] = op.route
        else:
            del routes[op.route.key]
    return RoutingState.of(rules, routes.values())


# --- desired state -------------------------------------------------------------------------------


def test_ipv4_via_gives_rules_in_both_families_and_only_a_v4_default():
    state = desired_routing([chain("fw")])
    assert state.rules == {Rule(RULE_PRIORITY_MIN, 4, 0x10, FWMASK_EXACT, 1001),
                           Rule(RULE_PRIORITY_MIN, 6, 0x10, FWMASK_EXACT, 1001)}
    assert routes_of(state) == {(4, 1001): (hop("10.9.0.2"),)}
    (route,) = state.routes
    assert route.dst == ipaddress.ip_network("0.0.0.0/0") and route.metric == ROUTE_METRIC
    assert route.owner == "chain fw forward"


def test_ipv6_via_gives_only_a_v6_default():
    state = desired_routing([chain("fw", nexthops=[{"via": "fd09::2"}])])
    assert routes_of(state) == {(6, 1001): (hop("fd09::2"),)}
    assert {r.family for r in state.rules} == {4, 6}


def test_dev_only_next_hop_is_a_device_route_in_both_families():
    state = desired_routing([chain("fw", nexthops=[{"dev": "svc0"}])])
    assert routes_of(state) == {(4, 1001): (hop(dev="svc0"),), (6, 1001): (hop(dev="svc0"),)}


def test_via_and_dev_are_kept_together():
    state = desired_routing([chain("fw", nexthops=[{"via": "10.9.0.2", "dev": "svc0"}])])
    assert routes_of(state) == {(4, 1001): (hop("10.9.0.2", "svc0"),)}


def test_several_next_hops_make_multipath_routes_split_by_family():
    state = desired_routing([chain("fw", nexthops=[
        {"via": "10.9.0.2"}, {"via": "10.9.1.2"}, {"via": "fd09::2"}, {"via": "fd09:1::2"}])])
    assert routes_of(state) == {(4, 1001): (hop("10.9.0.2"), hop("10.9.1.2")),
                                (6, 1001): (hop("fd09::2"), hop("fd09:1::2"))}


def test_dev_only_hop_joins_the_v4_multipath_and_stands_alone_in_v6():
    state = desired_routing([chain("fw", nexthops=[{"via": "10.9.0.2"}, {"dev": "svc1"}])])
    assert routes_of(state) == {(4, 1001): (hop("10.9.0.2"), hop(dev="svc1")),
                                (6, 1001): (hop(dev="svc1"),)}


def test_ipv6_multipath_with_a_dev_only_hop_is_refused_naming_the_chain():
    with pytest.raises(ValueError, match=r"chain fw forward: an IPv6 multipath route needs a via"):
        desired_routing([chain("fw", nexthops=[{"via": "fd09::2"}, {"dev": "svc1"}])])
    with pytest.raises(ValueError, match=r"chain fw forward"):
        desired_routing([chain("fw", nexthops=[{"dev": "svc0"}, {"dev": "svc1"}])])


def test_link_local_ipv6_via_needs_a_dev():
    with pytest.raises(ValueError, match=r"chain fw forward: next hop via fe80::1 is link-local"):
        desired_routing([chain("fw", nexthops=[{"via": "fe80::1"}])])
    state = desired_routing([chain("fw", nexthops=[{"via": "fe80::1", "dev": "svc0"}])])
    assert routes_of(state) == {(6, 1001): (hop("fe80::1", "svc0"),)}


def test_return_path_leg_gets_its_own_rules_and_table():
    ret = {"mark": 0x11, "table": 1002, "nexthops": [{"via": "10.8.0.1"}]}
    state = desired_routing([chain("fw", ret=ret)])
    assert sorted((r.priority, r.family, r.mark, r.table) for r in state.rules) == [
        (RULE_PRIORITY_MIN, 4, 0x10, 1001), (RULE_PRIORITY_MIN, 6, 0x10, 1001),
        (RULE_PRIORITY_MIN + 1, 4, 0x11, 1002), (RULE_PRIORITY_MIN + 1, 6, 0x11, 1002)]
    assert routes_of(state) == {(4, 1001): (hop("10.9.0.2"),), (4, 1002): (hop("10.8.0.1"),)}
    assert {r.owner for r in state.rules} == {"chain fw forward", "chain fw return_path"}


def test_rule_priority_follows_chain_priority_then_name_not_list_order():
    a = chain("a", mark=1, table=1001, priority=20)
    b = chain("b", mark=2, table=1002, priority=10, ret={"mark": 3, "table": 1003,
                                                         "nexthops": [{"via": "10.8.0.1"}]})
    c = chain("c", mark=4, table=1004, priority=20)
    for order in ([a, b, c], [c, b, a]):
        prio = {r.table: r.priority for r in desired_routing(order).rules}
        assert prio == {1002: RULE_PRIORITY_MIN, 1003: RULE_PRIORITY_MIN + 1,
                        1001: RULE_PRIORITY_MIN + 2, 1004: RULE_PRIORITY_MIN + 3}


def test_no_chains_want_nothing():
    assert desired_routing([]) == RoutingState()


def test_band_holds_one_rule_priority_per_leg():
    chains = [chain(f"c{i:04d}", mark=i + 1, table=1000 + i) for i in range(BAND)]
    state = desired_routing(chains)
    assert max(r.priority for r in state.rules) == RULE_PRIORITY_MAX


def test_band_exhaustion_is_refused_naming_the_chain_that_does_not_fit(monkeypatch):
    # With the shipped constants a leg per table never exhausts the band (as many priorities as
    # tables); the check guards against the two ranges drifting apart. Shrink the band to 3.
    monkeypatch.setattr(routing_plan, "RULE_PRIORITY_MAX", RULE_PRIORITY_MIN + 2)
    ret = {"mark": 0x11, "table": 1011, "nexthops": [{"via": "10.8.0.1"}]}
    a = chain("a", mark=1, table=1001, priority=1, ret=ret)
    b = chain("b", mark=2, table=1002, priority=2)
    assert max(r.priority for r in desired_routing([a, b]).rules) == RULE_PRIORITY_MIN + 2
    c = chain("c", mark=3, table=1003, priority=3)
    with pytest.raises(ValueError, match=r"^chain c: no rule priority left in 10000\.\.10002"):
        desired_routing([c, b, a])


def test_duplicate_names_marks_and_tables_are_refused():
    with pytest.raises(ValueError, match=r"chain a: the name is used twice"):
        desired_routing([chain("a"), chain("a", mark=2, table=1002)])
    with pytest.raises(ValueError, match=r"chain b forward: mark 16 is also used by chain a forward"):
        desired_routing([chain("a"), chain("b", table=1002)])
    with pytest.raises(ValueError, match=r"chain b forward: table 1001 is also used by chain a forward"):
        desired_routing([chain("a"), chain("b", mark=2)])


# --- plan ----------------------------------------------------------------------------------------


def test_plan_from_nothing_writes_routes_before_rules():
    desired = desired_routing([chain("fw", nexthops=[{"dev": "svc0"}])])
    ops = plan(desired, RoutingState())
    kinds = [type(op).__name__ for op in ops]
    assert kinds == ["ReplaceRoute", "ReplaceRoute", "AddRule", "AddRule"]
    assert all(op.previous is None for op in ops if isinstance(op, ReplaceRoute))
    assert apply_to(RoutingState(), ops) == desired


def test_plan_is_empty_when_equal():
    desired = desired_routing([chain("fw", nexthops=[{"via": "10.9.0.2"}, {"via": "fd09::2"}])])
    assert plan(desired, desired) == []


def test_plan_ignores_the_device_the_kernel_resolved_and_hop_order():
    desired = desired_routing([chain("fw", nexthops=[{"via": "10.9.0.2"}, {"via": "10.9.1.2", "dev": "b"}])])
    actual = RoutingState.of(desired.rules, [default(4, 1001, hop("10.9.1.2", "b"), hop("10.9.0.2", "a"))])
    assert plan(desired, actual) == []


def test_plan_replaces_a_route_on_the_wrong_device_or_weight():
    desired = desired_routing([chain("fw", nexthops=[{"via": "10.9.0.2", "dev": "a"}])])
    for wrong in (hop("10.9.0.2", "b"), hop("10.9.0.2", "a", weight=2)):
        actual = RoutingState.of(desired.rules, [default(4, 1001, wrong)])
        (op,) = plan(desired, actual)
        assert isinstance(op, ReplaceRoute) and op.previous == default(4, 1001, wrong)


def test_plan_replaces_only_the_changed_route():
    before = [chain("a", mark=1, table=1001), chain("b", mark=2, table=1002)]
    after = [chain("a", mark=1, table=1001), chain("b", mark=2, table=1002, nexthops=[{"via": "10.9.7.2"}])]
    actual = desired_routing(before)
    ops = plan(desired_routing(after), actual)
    assert len(ops) == 1
    (op,) = ops
    assert isinstance(op, ReplaceRoute)
    assert op.route.table == 1002 and op.route.hops == (hop("10.9.7.2"),)
    assert op.previous is not None and op.previous.hops == (hop("10.9.0.2"),)
    assert op.describe() == "chain b forward: route default via 10.9.7.2 in table 1002"
    assert apply_to(actual, ops) == desired_routing(after)


def test_plan_deletes_a_removed_chain_rules_before_its_routes():
    both = desired_routing([chain("a", mark=1, table=1001, nexthops=[{"dev": "svc0"}]),
                            chain("b", mark=2, table=1002, nexthops=[{"dev": "svc0"}])])
    only_a = desired_routing([chain("a", mark=1, table=1001, nexthops=[{"dev": "svc0"}])])
    ops = plan(only_a, as_read(both))
    assert [type(op).__name__ for op in ops] == ["DeleteRule", "DeleteRule", "DeleteRoute", "DeleteRoute"]
    assert all((op.rule if isinstance(op, DeleteRule) else op.route).table == 1002 for op in ops)
    assert ops[0].describe().startswith("stale: delete rule fwmark 0x2/0xffffffff lookup 1002")
    assert apply_to(both, ops) == only_a


def test_plan_deletes_routes_a_family_no_longer_has():
    before = desired_routing([chain("fw", nexthops=[{"dev": "svc0"}])])
    after = desired_routing([chain("fw", nexthops=[{"via": "10.9.0.2"}])])
    ops = plan(after, as_read(before))
    assert [type(op).__name__ for op in ops] == ["ReplaceRoute", "DeleteRoute"]
    assert ops[1].route.family == 6 and ops[1].describe().startswith("chain fw forward: delete IPv6 route")
    assert apply_to(before, ops) == after


def test_plan_deletes_stale_entries_of_ours_it_never_wrote():
    desired = desired_routing([chain("fw")])
    odd_rule = Rule(RULE_PRIORITY_MIN + 7, 4, 0x99, FWMASK_EXACT, 1500)
    odd_route = Route(4, 1001, ipaddress.ip_network("192.0.2.0/24"), (hop("10.9.0.2"),), 0)
    old_metric = default(4, 1001, hop("10.9.0.2"), metric=0)
    actual = RoutingState.of([*desired.rules, odd_rule], [*desired.routes, odd_route, old_metric])
    ops = plan(desired, actual)
    assert set(ops) == {DeleteRule(odd_rule), DeleteRoute(odd_route), DeleteRoute(old_metric)}
    assert apply_to(actual, ops) == desired


def test_renumbered_rules_are_added_before_the_old_ones_go():
    b = chain("b", mark=2, table=1002, priority=20)
    before = desired_routing([b])
    after = desired_routing([chain("a", mark=1, table=1001, priority=10), b])
    ops = plan(after, as_read(before))
    kinds = [type(op).__name__ for op in ops]
    assert kinds == ["ReplaceRoute", "AddRule", "AddRule", "AddRule", "AddRule", "DeleteRule", "DeleteRule"]
    moved = [op.rule for op in ops if isinstance(op, DeleteRule)]
    assert {(r.table, r.priority) for r in moved} == {(1002, RULE_PRIORITY_MIN)}
    assert all(op.rule.owner == "chain b forward" for op in ops if isinstance(op, DeleteRule))
    assert apply_to(before, ops) == after


def test_a_changed_mark_replaces_the_rules_and_keeps_the_route():
    before = desired_routing([chain("fw", mark=1)])
    after = desired_routing([chain("fw", mark=2)])
    ops = plan(after, before)
    assert [type(op).__name__ for op in ops] == ["AddRule", "AddRule", "DeleteRule", "DeleteRule"]
    assert apply_to(before, ops) == after


def test_inverse_ops_undo_a_plan():
    before = desired_routing([chain("a", mark=1, table=1001), chain("b", mark=2, table=1002)])
    after = desired_routing([chain("a", mark=1, table=1001, nexthops=[{"dev": "x"}]),
                             chain("c", mark=3, table=1003)])
    ops = plan(after, before)
    assert apply_to(apply_to(before, ops), [op.inverse() for op in reversed(ops)]) == before


def test_owner_is_not_part_of_identity():
    rule = Rule(RULE_PRIORITY_MIN, 4, 1, FWMASK_EXACT, 1001)
    assert replace(rule, owner="chain x forward") == rule
    route = default(4, 1001, hop("10.9.0.2"))
    assert replace(route, owner="chain x forward") == route
