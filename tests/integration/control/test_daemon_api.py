"""The daemon's own guarantees, against a real daemon in a namespace: a private socket, health
and reflection, an apply the kernel refuses part-way leaving the previous policy in force, and
single edits served by a real-time thread."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from control.rpc.api import pb2
from testbed.daemon import DaemonProcess
from testbed.netns import linked_namespaces

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

IFNAME, PEER_IFNAME = "tga0", "tga1"
ADDR = "10.88.0.1"
REACHABLE_VIA = "10.88.0.2"
UNREACHABLE_VIA = "10.99.0.2"  # no route to it in the namespace: the kernel refuses the route


@pytest.fixture(scope="module")
def daemon(daemon_on_veth: Any) -> Iterator[DaemonProcess]:
    with linked_namespaces("tgapi", IFNAME, PEER_IFNAME, ADDR, peer_namespace=False) as link, \
            daemon_on_veth(link.ns, IFNAME) as d:
        yield d


def _policy(deny_src: str, via: str, rule_id: int = 1) -> pb2.Policy:
    leg = pb2.Leg(interfaces=[IFNAME], mark=0x30, table=1030, nexthops=[pb2.NextHop(via=via)])
    rule = pb2.AclRule(id=rule_id, action=pb2.ACTION_DENY, match=pb2.Match(src=deny_src))
    return pb2.Policy(acl=[rule],
                      chains=[pb2.ServiceChain(name="svc", forward=leg)])


def test_the_socket_is_private(daemon):
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600


def test_health_and_reflection_list_every_service(daemon):
    stub = reflection_pb2_grpc.ServerReflectionStub(daemon.channel)
    answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for a in answers for s in a.list_services_response.service}
    assert names >= {"tidegate.v1.InterfaceService", "tidegate.v1.PolicyService", "tidegate.v1.StatsService",
                     "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
    assert daemon.serving()


def test_an_apply_the_kernel_refuses_leaves_the_previous_policy(daemon):
    good = daemon.policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=_policy("10.1.0.0/16", REACHABLE_VIA)))
    with pytest.raises(grpc.RpcError) as info:
        daemon.policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=_policy("10.2.0.0/16", UNREACHABLE_VIA, 2)))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "previous state is in force again" in info.value.details()

    now = daemon.policy.GetPolicy(pb2.GetPolicyRequest())
    assert now.generation == good.generation
    assert now.policy.acl[0].match.src == "10.1.0.0/16"
    routes = daemon.ns.run(["ip", "route", "show", "table", "1030"]).stdout
    assert f"via {REACHABLE_VIA}" in routes, routes
    # the maps hold the old ACL again: rule 1, not the refused policy's rule 2
    stats = daemon.stats.GetStats(pb2.GetStatsRequest())
    assert [c.rule_id for c in stats.acl_rules] == [1]
    assert daemon.serving()


def test_a_dry_run_changes_nothing(daemon):
    before = daemon.policy.GetPolicy(pb2.GetPolicyRequest())
    answer = daemon.policy.ApplyPolicy(pb2.ApplyPolicyRequest(
        policy=_policy("10.3.0.0/16", REACHABLE_VIA), dry_run=True))
    assert answer.generation == before.generation
    assert list(answer.diff.acl.changed) == [1]
    assert daemon.policy.GetPolicy(pb2.GetPolicyRequest()) == before


def _realtime_threads(pid: int) -> set[tuple[int, int]]:
    """(thread id, SCHED_FIFO/RR priority) of the process's threads that are real-time now."""
    found = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        policy, priority = int(fields[38]), int(fields[37])  # stat(5): policy 41, rt_priority 40
        # The kernel writes the two fields one after the other and /proc reads them unlocked: a
        # read inside the switch up sees the new policy with the old priority, 0, which no real-
        # time thread can have (sched_setscheduler refuses it): that reading is not a state.
        if policy in (os.SCHED_FIFO, os.SCHED_RR) and priority > 0:
            found.add((int(tid), priority))
    return found


def _watched(pid: int, work: Callable[[], object]) -> set[tuple[int, int]]:
    """The real-time threads seen while `work` runs (/proc polled meanwhile)."""
    seen: set[tuple[int, int]] = set()
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            seen.update(_realtime_threads(pid))

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        work()
    finally:
        done.set()
        poller.join()
    return seen


def test_single_edits_alone_are_served_real_time(daemon):
    """control.rpc.edit_priority: the thread serving AddAclRule/DeleteAclRule runs SCHED_FIFO at
    the default edit_priority (1) while it does; a whole-policy apply does not; nothing stays so."""
    pid = daemon.proc.pid
    ids = range(5000, 5100)

    def edits() -> None:
        for i in ids:
            rule = pb2.AclRule(id=i, action=pb2.ACTION_DENY, match=pb2.Match(src=f"10.77.{i % 250}.0/24"))
            daemon.policy.AddAclRule(pb2.AddAclRuleRequest(rule=rule))
        for i in ids:
            daemon.policy.DeleteAclRule(pb2.DeleteAclRuleRequest(id=i))

    seen = _watched(pid, edits)
    assert seen and {priority for _, priority in seen} == {1}, seen
    rules = [pb2.AclRule(id=i, action=pb2.ACTION_DENY, match=pb2.Match(src=f"10.{i // 250}.{i % 250}.0/24"))
             for i in range(6000, 8000)]
    before = daemon.policy.GetPolicy(pb2.GetPolicyRequest()).policy
    try:
        applied = _watched(pid, lambda: daemon.policy.ApplyPolicy(
            pb2.ApplyPolicyRequest(policy=pb2.Policy(acl=rules))))
    finally:
        daemon.policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=before))
    assert applied == set(), "a whole-policy apply runs as an ordinary task"
    assert _realtime_threads(pid) == set()
