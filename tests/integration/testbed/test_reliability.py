"""Reliability under traffic, against a real daemon: a SIGKILL that costs no packet, whole-policy
swaps of 10k+ rules that never judge a packet by a mix of old and new rules, failed applies that
leave the old set in force, and a policy too big for the configured capacities refused before
anything of it reaches the kernel.

Traffic is sequence-numbered UDP (testbed.flows) from a sender namespace to the daemon's
namespace at a few thousand packets per second, counted per sequence number at the receiver:
"no loss" means every sequence number sent arrived. The policies are testbed.policy_sets' A and
B: each allows the `allow*` flows and denies the `deny*` flows, and any mix of the two judges
them the other way or not at all (see that module). With only test traffic on the link
(testbed.flow_topology), the verdict counters must move by exactly what was sent.

The swap is a bank switch of the classifier (dataplane/match/table.py: the new bank written
whole, then one write of match_bank); its write order is also checked state by state against a
model of the search in tests/dataplane/match/test_compiler.py.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from control.policy.models import Leg, NextHop, Policy, ServiceChain
from testbed import flow_topology, policy_sets
from testbed.daemon import DaemonProcess
from testbed.flow_checks import apply, current, describe, stats, verdicts
from testbed.flows import interface_drops
from testbed.kernel_maps import policy_maps_digest

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

IFNAME = flow_topology.RECV_IF
PROBES = 8
RATE = 4000  # frames/s over all probe flows: half allowed, half denied
SWAPS = 6
SETTLE = 0.3  # traffic before and after each change
# Room for two 10k-rule sets at once (an apply keeps old and new side by side), not three.
CAPACITIES = {"acl_rules": 24576, "acl_buckets": 65536, "acl_buckets4": 65536}
TOO_MANY = 25000  # rules: more than acl_rules holds even with nothing else live
EXTRA_RULE = 3000  # allows policy_sets.extra_flow in set A only
UNREACHABLE_VIA = "10.99.0.2"  # no route to it: the kernel refuses the chain's route part-way


@pytest.fixture(scope="module")
def daemon(flow_topo: flow_topology.FlowTopology, daemon_on_veth: Any) -> Iterator[DaemonProcess]:
    with daemon_on_veth(flow_topo.receiver, IFNAME, capacities=CAPACITIES) as d:
        yield d


def set_a(filler: int = policy_sets.FILLER, seed: int | None = None) -> Policy:
    extra = [policy_sets.extra_rule(EXTRA_RULE)]
    return policy_sets.swap_policy("A", PROBES, filler, seed=seed, extra=extra)


def assert_policy_held(report: dict, drops_before: dict, flow_topo: flow_topology.FlowTopology) -> None:
    v = verdicts(report)
    now = interface_drops(flow_topo.receiver, flow_topo.recv_if)
    testbed_drops = {k: now[k] - drops_before[k] for k in drops_before}
    print(f"\n{v}; testbed drops {testbed_drops}")
    assert v.allowed_sent > 0 and v.denied_sent > 0
    assert (v.allowed_lost, v.denied_arrived, v.duplicates) == (0, 0, 0), \
        f"{v}; testbed drops {testbed_drops}\n{describe(report)}"


# --- 1. hitless restart -----------------------------------------------------------------------------


def test_sigkill_under_traffic_loses_no_allowed_packet_and_counters_continue(live, flow_topo):
    apply(live, set_a(filler=1000))
    policy_before, generation_before = current(live)
    before = stats(live)
    drops = interface_drops(flow_topo.receiver, flow_topo.recv_if)
    old_pid = live.proc.pid if live.proc else None

    with flow_topo.traffic(policy_sets.probe_flows(PROBES), RATE) as traffic:
        time.sleep(0.5)
        live.kill(signal.SIGKILL)
        at_kill = verdicts(traffic.report())
        time.sleep(1.0)  # no daemon at all: the attached programs and pinned maps carry on
        live.start(detach_on_exit=True)  # adopts the pins and reconciles, traffic still flowing
        at_serving = verdicts(traffic.report())
        time.sleep(0.5)
        report = traffic.stop()

    assert live.proc is not None and live.proc.pid != old_pid
    print(f"\nsent while no daemon served: {at_serving.allowed_sent - at_kill.allowed_sent} allowed, "
          f"{at_serving.denied_sent - at_kill.denied_sent} denied")
    assert_policy_held(report, drops, flow_topo)
    assert current(live) == (policy_before, generation_before)
    # per-rule counters carried on through the crash: every packet is in its rule's counter
    moved = stats(live) - before
    for i in range(PROBES):
        assert moved.acl_rule(policy_sets.ALLOW_A + i) == report[f"allow{i}"].sent
        assert moved.acl_rule(policy_sets.DENY_A + i) == report[f"deny{i}"].sent
    v = verdicts(report)
    assert (moved.reason("PASS_ALLOWED"), moved.reason("DROP_DENIED")) == (v.allowed_sent, v.denied_sent)
    assert moved.reason("DROP_DEFAULT") == 0


# --- 2. atomic policy swap under traffic -------------------------------------------------------------


def test_swapping_10k_rule_sets_under_traffic_never_mixes_them(live, flow_topo):
    sets = {"A": set_a(), "B": policy_sets.swap_policy("B", PROBES)}
    assert all(len(p.acl) > policy_sets.FILLER for p in sets.values())
    apply(live, sets["A"])
    before = stats(live)
    drops = interface_drops(flow_topo.receiver, flow_topo.recv_if)
    durations = []

    with flow_topo.traffic(policy_sets.probe_flows(PROBES), RATE) as traffic:
        time.sleep(SETTLE)
        for n in range(SWAPS):
            side = "B" if n % 2 == 0 else "A"
            started = time.monotonic()
            apply(live, sets[side])
            durations.append(time.monotonic() - started)
            time.sleep(SETTLE)
            if side == "A":  # the guards exist only in A; a mix while A came in would count here
                now = stats(live)
                guards = [now.acl_rule(base + i) for base in (policy_sets.GUARD_A, policy_sets.GUARD_DENY_A)
                          for i in range(PROBES)]
                assert not any(guards), f"guard rules matched during the swap to A: {guards}"
        report = traffic.stop()

    moved = stats(live) - before
    v = verdicts(report)
    print(f"\n{SWAPS} swaps of {len(sets['A'].acl)}/{len(sets['B'].acl)} rules, "
          f"{min(durations):.2f}-{max(durations):.2f} s each")
    assert_policy_held(report, drops, flow_topo)
    # every packet judged by a whole set: exactly the allowed passed, the denied denied, no misses
    assert moved.reason("DROP_DEFAULT") == 0
    assert (moved.reason("PASS_ALLOWED"), moved.reason("DROP_DENIED")) == (v.allowed_sent, v.denied_sent)


# --- failed applies leave the old set in force -------------------------------------------------------


def _extra_arrives(live: DaemonProcess, flow_topo: flow_topology.FlowTopology) -> tuple[int, int, int]:
    """(sent, received, rule EXTRA_RULE's counter moved) for the flow only set A allows."""
    before = stats(live)
    with flow_topo.traffic([policy_sets.extra_flow()], 1000) as traffic:
        time.sleep(0.3)
        report = traffic.stop()
    count = report["extra"]
    return count.sent, count.received, (stats(live) - before).acl_rule(EXTRA_RULE)


def test_an_apply_the_kernel_refuses_part_way_leaves_the_old_set_under_traffic(live, flow_topo):
    apply(live, set_a())
    policy_before, generation_before = current(live)
    chain = ServiceChain(name="svc", forward=Leg(interfaces=[IFNAME], mark=0x30, table=1030,
                                                 nexthops=[NextHop(via=UNREACHABLE_VIA)]))
    refused = policy_sets.swap_policy("B", PROBES).model_copy(update={"chains": [chain]})
    drops = interface_drops(flow_topo.receiver, flow_topo.recv_if)

    with flow_topo.traffic(policy_sets.probe_flows(PROBES), RATE) as traffic:
        time.sleep(SETTLE)
        with pytest.raises(grpc.RpcError) as info:
            apply(live, refused)  # B's maps are written, then the route fails: A comes back
        time.sleep(SETTLE)
        report = traffic.stop()

    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
    assert "previous state is in force again" in info.value.details()
    assert_policy_held(report, drops, flow_topo)  # A, then B, then A again: each judges the probes alike
    assert current(live) == (policy_before, generation_before)
    assert live.ns.run(["ip", "route", "show", "table", "1030"]).stdout == ""
    sent, received, counted = _extra_arrives(live, flow_topo)  # A allows it, B would not
    assert sent > 0 and received == sent == counted


def test_a_policy_over_the_configured_capacity_is_refused_and_writes_nothing(live, flow_topo):
    apply(live, set_a())
    policy_before, generation_before = current(live)
    pin_dir = live.pin_dir(IFNAME)
    assert pin_dir is not None
    kernel_before = policy_maps_digest(pin_dir)
    before = stats(live)
    too_big = policy_sets.swap_policy("B", PROBES, filler=TOO_MANY)
    drops = interface_drops(flow_topo.receiver, flow_topo.recv_if)

    with flow_topo.traffic(policy_sets.probe_flows(PROBES), RATE) as traffic:
        time.sleep(SETTLE)
        with pytest.raises(grpc.RpcError) as info:
            apply(live, too_big)
        time.sleep(SETTLE)
        report = traffic.stop()

    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    details = info.value.details()
    assert "capacities.acl_rules" in details and str(CAPACITIES["acl_rules"]) in details, details
    assert_policy_held(report, drops, flow_topo)
    assert current(live) == (policy_before, generation_before)
    assert policy_maps_digest(pin_dir) == kernel_before  # not one entry of it reached the kernel
    moved = stats(live) - before  # and no rule was recreated: the counters went on
    for i in range(PROBES):
        assert moved.acl_rule(policy_sets.ALLOW_A + i) == report[f"allow{i}"].sent
