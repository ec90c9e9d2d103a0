"""A daemon SIGKILLed at random points of an apply restarts into exactly the old or exactly the
new policy, and the kernel enforces what the daemon then reports.

Two 10k-rule policies, OLD and NEW (testbed.policy_sets' sets A and B with different filler on
every round), disagree on two flows: X is allowed by OLD (rule 3000) and denied by NEW (4000),
Y the other way round (3001 deny, 4001 allow). Each round sends ApplyPolicy(other) without
waiting, kills the daemon with SIGKILL after a random delay spread over the later part of the
apply's measured duration, looks at what the kernel does while no daemon runs (informative only: a write cut
short leaves some entries of each set, each packet still judged by one whole set), restarts
the daemon and checks:

  * GetPolicy is OLD at the old generation or NEW at the next one, never anything else; an
    apply the daemon acknowledged before it died is never lost;
  * the kernel agrees: X and Y arrive (or not) as the reported policy says, counted by the
    reported policy's rules, and GetStats lists exactly that policy's rule ids.

The test goes through the daemon's API only (not the state file's format).
Set TIDEGATE_CRASH_SEED to replay a run's kill points.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from control.policy.models import Policy
from control.rpc import convert
from control.rpc.api import pb2
from testbed import flow_topology, policy_sets
from testbed.daemon import DaemonProcess
from testbed.flow_checks import APPLY_TIMEOUT, apply, current, stats
from testbed.flows import Flow

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

IFNAME = flow_topology.RECV_IF
PROBES = 2
KILLS = 4
X_RULE_OLD, Y_RULE_OLD, X_RULE_NEW, Y_RULE_NEW = 3000, 3001, 4000, 4001
X_NET, Y_NET = 70, 71  # policy_sets.extra_flow/extra_rule's second octet
PROBE_RATE = 2000
PROBE_TIME = 0.25


@pytest.fixture(scope="module")
def daemon(flow_topo: flow_topology.FlowTopology, daemon_on_veth: Any) -> Iterator[DaemonProcess]:
    with daemon_on_veth(flow_topo.receiver, IFNAME) as d:
        yield d


def old_policy(seed: int) -> Policy:
    extra = [policy_sets.extra_rule(X_RULE_OLD, X_NET, "allow"),
             policy_sets.extra_rule(Y_RULE_OLD, Y_NET, "deny")]
    return policy_sets.swap_policy("A", PROBES, seed=seed, extra=extra)


def new_policy(seed: int) -> Policy:
    extra = [policy_sets.extra_rule(X_RULE_NEW, X_NET, "deny"),
             policy_sets.extra_rule(Y_RULE_NEW, Y_NET, "allow")]
    return policy_sets.swap_policy("B", PROBES, seed=seed, extra=extra)


FLOWS = [policy_sets.extra_flow("x", X_NET), policy_sets.extra_flow("y", Y_NET)]


def what_arrives(flow_topo: flow_topology.FlowTopology,
                 flows: list[Flow] = FLOWS) -> dict[str, tuple[int, int]]:
    """flow name -> (sent, received) for a short burst of each flow."""
    with flow_topo.traffic(flows, PROBE_RATE) as traffic:
        time.sleep(PROBE_TIME)
        report = traffic.stop()
    return {name: (c.sent, c.received) for name, c in report.items()}


def kernel_holds(arrived: dict[str, tuple[int, int]]) -> str:
    """Which policy X and Y were judged by: "old", "new", or "mixed" (a write cut short)."""
    x, y = (arrived[n][1] == arrived[n][0] for n in ("x", "y"))
    x_none, y_none = (arrived[n][1] == 0 for n in ("x", "y"))
    if x and y_none:
        return "old"
    if y and x_none:
        return "new"
    return "mixed"


def test_a_kill_at_any_point_of_an_apply_restarts_into_the_old_or_the_new_policy(daemon, flow_topo):
    seed = int(os.environ.get("TIDEGATE_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    policies = {"old": old_policy(10), "new": new_policy(20)}
    apply(daemon, policies["new"])
    started = time.monotonic()
    apply(daemon, policies["old"])  # also measures how long a switch between them takes
    duration = time.monotonic() - started
    print(f"\nseed {seed}; one apply takes {duration:.2f} s")
    outcomes: list[tuple[float, str, str, bool]] = []  # delay, kernel while dead, result, acknowledged

    for n in range(KILLS):
        model, generation = current(daemon)
        side = "old" if model == policies["old"] else "new"
        assert model == policies[side]
        target = "new" if side == "old" else "old"
        if n >= 2:  # fresh filler (another compile) on later rounds; one side changes per round
            policies[target] = (new_policy if target == "new" else old_policy)(100 + n)
        # kill points spread over the apply's later part (before it, the request is only being
        # received and compiled): round n draws from the n-th slice of 0.4-1.1 x its duration
        delay = (0.4 + rng.uniform(n, n + 1) * 0.7 / KILLS) * duration
        request = pb2.ApplyPolicyRequest(policy=convert.policy_to_proto(policies[target]))
        future = daemon.policy.ApplyPolicy.future(request, timeout=APPLY_TIMEOUT)
        time.sleep(delay)
        acknowledged = future.done() and future.exception() is None
        daemon.kill(signal.SIGKILL)
        held = kernel_holds(what_arrives(flow_topo))
        while_dead = {side: "the previous policy", target: "the applied policy"}.get(held, held)

        daemon.start(detach_on_exit=True)
        got, got_generation = current(daemon)
        if got == policies[side]:
            now = side
            assert got_generation == generation
        else:
            assert got == policies[target], "the restarted daemon holds neither the old nor the new policy"
            now = target
            assert got_generation == generation + 1
        assert not (acknowledged and now == side), "an acknowledged apply was lost"
        outcomes.append((delay, while_dead, "the applied" if now == target else "the previous", acknowledged))

        # the kernel enforces what the daemon reports, counted by that policy's rules
        before = stats(daemon)
        arrived = what_arrives(flow_topo)
        moved = stats(daemon) - before
        allowed, denied = ("x", "y") if now == "old" else ("y", "x")
        assert arrived[allowed][1] == arrived[allowed][0] > 0, (now, arrived)
        assert arrived[denied][1] == 0, (now, arrived)
        rules = (X_RULE_OLD, Y_RULE_OLD) if now == "old" else (Y_RULE_NEW, X_RULE_NEW)
        assert moved.acl_rule(rules[0]) == arrived[allowed][0]
        assert moved.acl_rule(rules[1]) == arrived[denied][0]
        assert moved.reason("DROP_DEFAULT") == 0
        assert set(stats(daemon).acl) == {r.id for r in got.acl}

    for delay, dead, now, ack in outcomes:
        print(f"  kill {delay:.3f} s after ApplyPolicy{' (acknowledged)' if ack else ''}: the kernel "
              f"while no daemon ran enforced {dead}; the restarted daemon holds {now} policy")
