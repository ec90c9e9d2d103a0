"""The policy-routing adapter against a real kernel, each test in a fresh network namespace.

The namespace holds two veth pairs (up0/svc0, up1/svc1) with IPv4 and IPv6 addresses on the
up* ends, so next hops 10.9.0.2, 10.9.1.2, fd09::2 and fd09:1::2 are reachable on-link.
What the adapter did is checked with a fresh netlink socket and with `ip rule`/`ip route`.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from control.apply.netlink import RTPROT_TIDEGATE, RoutingError, read_actual, remove_all, sync
from control.apply.routing_plan import AddRule, ReplaceRoute, desired_routing
from control.policy.models import ServiceChain
from testbed.netns import Namespace, add_address, created_namespaces, list_namespaces, veth_pair

pytestmark = [
    pytest.mark.root,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's `ip` to inspect rules"),
]


@pytest.fixture(scope="module", autouse=True)
def no_leftover_namespaces() -> Iterator[None]:
    yield
    live = set(list_namespaces())
    left = [n for n in created_namespaces() if n in live]
    assert not left, f"these namespaces were left behind: {left}"


@pytest.fixture
def ns() -> Iterator[Namespace]:
    with Namespace() as ns:
        for i in (0, 1):
            veth_pair(ns, f"up{i}", ns, f"svc{i}")
            add_address(ns, f"up{i}", f"10.9.{i}.1/24")
            add_address(ns, f"up{i}", f"fd09:{i}::1/64")
        yield ns


@pytest.fixture
def ipr(ns: Namespace) -> Iterator[IPRoute]:
    with ns.ipr() as ipr:
        yield ipr


def chain(name: str, mark: int, table: int, nexthops: list[dict], *, priority: int = 1000,
          ret: dict | None = None) -> ServiceChain:
    spec: dict = {"name": name, "priority": priority,
                  "forward": {"interfaces": ["up0"], "mark": mark, "table": table, "nexthops": nexthops}}
    if ret is not None:
        spec["return_path"] = {"interfaces": ["up1"], **ret}
    return ServiceChain.model_validate(spec)


FW = chain("fw", 0x10, 1001,
           [{"via": "10.9.0.2"}, {"via": "10.9.1.2"}, {"via": "fd09:0::2"}, {"via": "fd09:1::2"}],
           ret={"mark": 0x11, "table": 1002, "nexthops": [{"dev": "up1"}]})
LB = chain("lb", 0x20, 1003, [{"via": "10.9.1.2", "dev": "up1"}, {"via": "fd09:1::2"}], priority=10)


def ip(ns: Namespace, args: str) -> str:
    """`ip <args>` inside the namespace, e.g. ip(ns, "-6 rule"); its output."""
    return ns.run(["ip", *args.split()]).stdout


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def rules_with_proto(ns: Namespace, family: int, proto: int) -> set[tuple[int, int, int]]:
    """(priority, fwmark, table) of rules with protocol `proto`, from a fresh netlink socket."""
    with ns.ipr() as fresh:
        return {(r.get_attr("FRA_PRIORITY"), r.get_attr("FRA_FWMARK"), r.get_attr("FRA_TABLE"))
                for r in fresh.get_rules(family=family) if r.get_attr("FRA_PROTOCOL") == proto}


def route_text(ns: Namespace, table: int) -> str:
    return ip(ns, f"-4 route show table {table}") + ip(ns, f"-6 route show table {table}")


def test_sync_installs_tagged_rules_and_routes_and_is_then_a_no_op(ns: Namespace, ipr: IPRoute):
    ops = sync(ipr, [FW, LB])
    assert ops and all(isinstance(op, (AddRule, ReplaceRoute)) for op in ops)

    expected = {(10000, 0x20, 1003), (10001, 0x10, 1001), (10002, 0x11, 1002)}  # lb first: priority 10
    assert rules_with_proto(ns, socket.AF_INET, RTPROT_TIDEGATE) == expected
    assert rules_with_proto(ns, socket.AF_INET6, RTPROT_TIDEGATE) == expected
    assert "10001:\tfrom all fwmark 0x10 lookup 1001 proto 84" in ip(ns, "-4 rule")
    assert "10002:\tfrom all fwmark 0x11 lookup 1002 proto 84" in ip(ns, "-6 rule")

    # multipath in each family, each with the hops of its family
    assert lines(ip(ns, "-4 route show table 1001")) == [
        "default proto 84 metric 1024",
        "nexthop via 10.9.0.2 dev up0 weight 1", "nexthop via 10.9.1.2 dev up1 weight 1"]
    assert lines(ip(ns, "-6 route show table 1001")) == [
        "default proto 84 metric 1024 pref medium",
        "nexthop via fd09::2 dev up0 weight 1", "nexthop via fd09:1::2 dev up1 weight 1"]
    assert "default dev up1 proto 84 scope link metric 1024" in ip(ns, "-4 route show table 1002")
    assert "default dev up1 proto 84 metric 1024" in ip(ns, "-6 route show table 1002")
    assert "default via 10.9.1.2 dev up1 proto 84" in route_text(ns, 1003)

    with ns.ipr() as fresh:
        assert sync(fresh, [FW, LB]) == []
        assert {r.key for r in read_actual(fresh).routes} == {r.key for r in desired_routing([FW, LB]).routes}


def test_changing_a_chain_changes_only_that_route(ns: Namespace, ipr: IPRoute):
    sync(ipr, [FW, LB])
    rules_before = ip(ns, "-4 rule") + ip(ns, "-6 rule")
    untouched = {t: route_text(ns, t) for t in (1001, 1002)}

    lb2 = chain("lb", 0x20, 1003, [{"via": "10.9.0.2"}, {"via": "fd09:1::2"}], priority=10)
    ops = sync(ipr, [FW, lb2])

    assert len(ops) == 1 and isinstance(ops[0], ReplaceRoute)
    assert ops[0].describe() == "chain lb forward: route default via 10.9.0.2 in table 1003"
    assert "default via 10.9.0.2 dev up0 proto 84" in route_text(ns, 1003)
    assert ip(ns, "-4 rule") + ip(ns, "-6 rule") == rules_before
    assert {t: route_text(ns, t) for t in (1001, 1002)} == untouched


def test_multipath_shrinks_to_one_hop_and_grows_back_in_both_families(ns: Namespace, ipr: IPRoute):
    sync(ipr, [FW])
    single = chain("fw", 0x10, 1001, [{"via": "10.9.1.2"}, {"via": "fd09:1::2"}],
                   ret={"mark": 0x11, "table": 1002, "nexthops": [{"dev": "up1"}]})
    ops = sync(ipr, [single])
    assert sorted(op.describe() for op in ops) == [
        "chain fw forward: IPv6 route default via fd09:1::2 in table 1001",
        "chain fw forward: route default via 10.9.1.2 in table 1001"]
    assert lines(ip(ns, "-4 route show table 1001")) == ["default via 10.9.1.2 dev up1 proto 84 metric 1024"]
    assert lines(ip(ns, "-6 route show table 1001")) == [
        "default via fd09:1::2 dev up1 proto 84 metric 1024 pref medium"]
    assert len(sync(ipr, [FW])) == 2 and sync(ipr, [FW]) == []
    assert len(lines(ip(ns, "-6 route show table 1001"))) == 3


def test_removing_a_chain_removes_its_rules_and_routes(ns: Namespace, ipr: IPRoute):
    sync(ipr, [FW, LB])
    sync(ipr, [LB])
    assert "lookup 1001" not in ip(ns, "-4 rule") + ip(ns, "-6 rule")
    assert "lookup 1002" not in ip(ns, "-4 rule") + ip(ns, "-6 rule")
    assert route_text(ns, 1001) == route_text(ns, 1002) == ""
    assert "default via 10.9.1.2" in route_text(ns, 1003)  # the other chain stays
    assert rules_with_proto(ns, socket.AF_INET, RTPROT_TIDEGATE) == {(10000, 0x20, 1003)}


def test_remove_all_and_sync_leave_foreign_entries_alone(ns: Namespace, ipr: IPRoute):
    # In our band and tables, but not ours: another protocol. One rule even looks exactly like
    # the one Tidegate writes for fw's forward leg.
    ip(ns, "rule add fwmark 0x77 lookup 1001 priority 10005 proto static")
    ip(ns, "-6 rule add fwmark 0x10 lookup 1001 priority 10001 proto boot")
    ip(ns, "route add 192.0.2.0/24 via 10.9.0.2 table 1001 proto static")
    ip(ns, "-6 route add 2001:db8::/64 dev up0 table 1002 proto static")
    foreign4 = rules_with_proto(ns, socket.AF_INET, 4)
    foreign6 = rules_with_proto(ns, socket.AF_INET6, 3)

    sync(ipr, [FW, LB])
    assert rules_with_proto(ns, socket.AF_INET6, RTPROT_TIDEGATE) >= {(10001, 0x10, 1001)}
    assert sync(ipr, [FW, LB]) == []  # the foreign entries are not "stale entries of ours"

    removed = remove_all(ipr)
    assert len(removed) == 6 + 6  # rules: 3 legs x 2 families; routes: tables 1001-1003 x 2 families
    assert rules_with_proto(ns, socket.AF_INET, RTPROT_TIDEGATE) == set()
    assert rules_with_proto(ns, socket.AF_INET6, RTPROT_TIDEGATE) == set()
    assert rules_with_proto(ns, socket.AF_INET, 4) == foreign4 == {(10005, 0x77, 1001)}
    assert rules_with_proto(ns, socket.AF_INET6, 3) == foreign6 == {(10001, 0x10, 1001)}
    assert route_text(ns, 1001).strip() == "192.0.2.0/24 via 10.9.0.2 dev up0 proto static"
    assert route_text(ns, 1002).strip() == "2001:db8::/64 dev up0 proto static metric 1024 pref medium"
    assert route_text(ns, 1003) == ""
    assert remove_all(ipr) == []


def test_unreachable_next_hop_names_the_chain_and_leaves_the_previous_state(ns: Namespace, ipr: IPRoute):
    sync(ipr, [FW, LB])
    before = read_actual(ipr)
    text_before = {t: route_text(ns, t) for t in (1001, 1002, 1003)}
    rules_before = ip(ns, "-4 rule") + ip(ns, "-6 rule")

    fw2 = chain("fw", 0x10, 1001, [{"via": "10.9.1.2"}])  # a change that is applied, then undone
    bad = chain("bad", 0x30, 1004, [{"via": "10.99.0.2"}])
    with pytest.raises(RoutingError) as info:
        sync(ipr, [fw2, LB, bad])

    err = info.value
    assert str(err).startswith("chain bad forward: route default via 10.99.0.2 in table 1004: "
                               "Network is unreachable (ENETUNREACH)")
    assert err.errno_name == "ENETUNREACH" and err.op.route.table == 1004  # type: ignore[union-attr]
    (applied,) = err.applied
    assert applied.describe() == "chain fw forward: route default via 10.9.1.2 in table 1001"
    assert err.in_effect == [] and "were undone" in str(err)
    assert read_actual(ipr) == before
    assert {t: route_text(ns, t) for t in (1001, 1002, 1003)} == text_before
    assert ip(ns, "-4 rule") + ip(ns, "-6 rule") == rules_before


def test_missing_device_is_reported_before_the_kernel_is_asked(ns: Namespace, ipr: IPRoute):
    with pytest.raises(RoutingError, match=r"^chain gone forward: route default dev nope0 in table 1005: "
                                           r"interface nope0 does not exist \(ENODEV\)$"):
        sync(ipr, [chain("gone", 0x40, 1005, [{"dev": "nope0"}])])
    assert read_actual(ipr).routes == frozenset() and read_actual(ipr).rules == frozenset()
