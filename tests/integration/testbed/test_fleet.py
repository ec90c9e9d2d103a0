"""Fleet mode end to end: real etcd members, real daemons in namespaces, real forwarded traffic.

Three appliances (testbed.fleet_topology) forward UDP from a client namespace to a server
namespace, each judged by the policy its `tidegate serve` enforces; the daemons are fleet
members of a 3-member etcd cluster in a hub namespace that they reach over one link each. The
operator side is the `tidegate fleet` CLI run in the hub. A probe sends datagrams to a port and
counts what arrives: policies here differ by the UDP port they deny, so traffic says which
policy a node enforces (three datagrams arrive, or none).

The tests share the fleet and run in file order; each leaves every node following policy
"base" (or says otherwise).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2

from control.rpc.api import pb2
from testbed import fleet_topology
from testbed.daemon import RPC_TIMEOUT, DaemonProcess
from testbed.etcd import EtcdCluster, ServerTls, etcd_available
from testbed.fleet_topology import INGRESS, FleetNode, FleetTopology

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

NODES = 3
STATUS_TTL = 3
CONVERGE = 60.0  # a node applies a policy in well under a second; daemons compile nothing here
HEALTH_SERVICE = "tidegate.fleet"
A, B, C = 9000, 9001, 9002  # UDP ports the policies deny one of


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def topo(bpf_available: None) -> Iterator[FleetTopology]:
    reason = etcd_available()
    if reason:
        pytest.skip(reason)
    with fleet_topology.build(NODES) as t:
        yield t


@pytest.fixture(scope="module")
def cluster(topo: FleetTopology) -> Iterator[EtcdCluster]:
    with EtcdCluster(3, ns=topo.hub) as c:
        yield c


def fleet_config(node: FleetNode, cluster: EtcdCluster, **extra: Any) -> dict[str, Any]:
    return {"endpoints": cluster.endpoints(node.etcd_host), "node": node.name, "status_ttl": STATUS_TTL,
            **extra}


@pytest.fixture(scope="module")
def daemons(topo: FleetTopology, cluster: EtcdCluster,
            daemon_on_veth: Any) -> Iterator[dict[str, DaemonProcess]]:
    with ExitStack() as stack:  # interfaces stay local on a fleet member: attaching is allowed
        yield {node.name: stack.enter_context(daemon_on_veth(node.ns, INGRESS,
                                                             fleet=fleet_config(node, cluster)))
               for node in topo.nodes}


class Operator:
    """`tidegate fleet ...` in the hub against the cluster; policy files written to tmp."""

    def __init__(self, topo: FleetTopology, cluster: EtcdCluster, workdir: Path) -> None:
        self.topo, self.cluster, self.workdir = topo, cluster, workdir

    def run(self, *args: str, expect: int | None = 0, endpoints: list[str] | None = None) -> Any:
        done = self.topo.cli("-j", "fleet", *args, endpoints=endpoints or self.cluster.endpoints())
        if expect is not None:
            assert done.returncode == expect, f"fleet {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
        return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else done

    def policy_file(self, deny: int, name: str = "policy", chains: list[Any] | None = None) -> str:
        path = self.workdir / f"{name}-{deny}-{time.monotonic_ns()}.yaml"
        policy: dict[str, Any] = {"acl": [{"id": 1, "priority": 10, "action": "deny",
                                           "match": {"protocol": "udp", "dport": deny}}]}
        if chains:
            policy["chains"] = chains
        path.write_text(yaml.safe_dump(policy))
        return str(path)

    def push(self, name: str, deny: int, *extra: str) -> int:
        return int(self.run("push", "-f", self.policy_file(deny), "--policy", name, *extra)["revision"])

    def status(self) -> dict[str, Any]:
        return dict(self.run("status"))

    def node(self, name: str) -> dict[str, Any] | None:
        return next((n for n in self.status()["nodes"] if n["node"] == name), None)

    def converged(self, timeout: float = CONVERGE) -> dict[str, Any]:
        return dict(self.run("status", "--wait", str(timeout)))


@pytest.fixture
def op(topo: FleetTopology, cluster: EtcdCluster, tmp_path: Path) -> Operator:
    return Operator(topo, cluster, tmp_path)


def wait_until(what: str, check: Callable[[], Any], timeout: float = CONVERGE) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def denies(topo: FleetTopology, node: FleetNode, port: int) -> None:
    """The node drops `port` and forwards the others the policies here use."""
    arrived = {p: topo.probe(node, p) for p in (A, B, C)}
    expected = {p: 0 if p == port else fleet_topology.PROBE_DATAGRAMS for p in (A, B, C)}
    assert arrived == expected, f"{node.name}: datagrams that arrived per port {arrived}, expected {expected}"


def forwards_all(topo: FleetTopology, node: FleetNode) -> None:
    arrived = {p: topo.probe(node, p) for p in (A, B, C)}
    assert set(arrived.values()) == {fleet_topology.PROBE_DATAGRAMS}, f"{node.name}: {arrived}"


def fleet_health(daemon: DaemonProcess) -> int:
    request = health_pb2.HealthCheckRequest(service=HEALTH_SERVICE)
    return int(daemon.health.Check(request, timeout=5.0).status)


def node_by(topo: FleetTopology, name: str) -> FleetNode:
    return next(n for n in topo.nodes if n.name == name)


# --- tests -----------------------------------------------------------------------------------------


def test_three_nodes_converge_and_judge_traffic(topo: FleetTopology, daemons: dict[str, DaemonProcess],
                                               op: Operator) -> None:
    revision = op.push("base", B)
    op.run("assign", *daemons, "--policy", "base")
    status = op.converged()
    assert status["converged"] and status["policies"]["base"] == revision
    for row in status["nodes"]:
        assert (row["policy"], row["revision"], row["health"]) == ("base", revision, "ok"), row
    for node in topo.nodes:
        denies(topo, node, B)
        assert fleet_health(daemons[node.name]) == health_pb2.HealthCheckResponse.SERVING
        policy = daemons[node.name].policy.GetPolicy(pb2.GetPolicyRequest(), timeout=RPC_TIMEOUT).policy
        assert [r.match.dport.low for r in policy.acl] == [B]  # reads work on a fleet member


def test_local_policy_writes_refused_reads_work(topo: FleetTopology,
                                                daemons: dict[str, DaemonProcess]) -> None:
    daemon = daemons["n0"]
    rule = pb2.AclRule(id=99, action=pb2.ACTION_DENY, match=pb2.Match(protocol=pb2.PROTOCOL_UDP,
                                                                       dport=pb2.PortRange(low=A, high=A)))
    writes = [(daemon.policy.AddAclRule, pb2.AddAclRuleRequest(rule=rule)),
              (daemon.policy.DeleteAclRule, pb2.DeleteAclRuleRequest(id=1)),
              (daemon.policy.AddTunnel, pb2.AddTunnelRequest(tunnel=pb2.Tunnel(vni=7, vxlan=True))),
              (daemon.policy.ApplyPolicy, pb2.ApplyPolicyRequest(policy=pb2.Policy()))]
    for method, request in writes:
        with pytest.raises(grpc.RpcError) as info:
            method(request, timeout=RPC_TIMEOUT)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = info.value.details()
        assert "fleet" in details and "etcd" in details and "nodes/n0" in details, details
    dry_run = pb2.ApplyPolicyRequest(policy=pb2.Policy(), dry_run=True)
    dry = daemon.policy.ApplyPolicy(dry_run, timeout=RPC_TIMEOUT)
    assert list(dry.diff.acl.removed) == [1]  # a dry run changes nothing and is allowed
    cli = daemon.cli("acl", "del", "1")
    assert cli.returncode == 1 and "FAILED_PRECONDITION" in cli.stderr
    rules = daemon.policy.ListAclRules(pb2.ListAclRulesRequest(), timeout=RPC_TIMEOUT).rules
    assert [r.id for r in rules] == [1]
    denies(topo, node_by(topo, "n0"), B)


def test_retarget_one_node(topo: FleetTopology, daemons: dict[str, DaemonProcess], op: Operator) -> None:
    alt = op.push("alt", A)
    op.run("assign", "n1", "--policy", "alt")
    status = op.converged()
    assert {r["node"]: (r["policy"], r["revision"]) for r in status["nodes"]}["n1"] == ("alt", alt)
    denies(topo, node_by(topo, "n1"), A)
    denies(topo, node_by(topo, "n0"), B)
    op.run("assign", "n1", "--policy", "base")
    op.converged()
    denies(topo, node_by(topo, "n1"), B)


def test_invalid_policy_reported_with_its_field_old_policy_kept(topo: FleetTopology, cluster: EtcdCluster,
                                                                daemons: dict[str, DaemonProcess],
                                                                op: Operator) -> None:
    """A value no CLI would write (another writer, an older tool): every node refuses it as a
    whole, names the field, and keeps enforcing the last good revision."""
    good = op.status()["policies"]["base"]
    bad = pb2.Policy(acl=[pb2.AclRule(id=1, action=pb2.ACTION_DENY, match=pb2.Match(
        protocol=pb2.PROTOCOL_UDP, dport=pb2.PortRange(low=2000, high=1000)))])
    cluster.etcdctl("put", "/tidegate/policies/base", input=bad.SerializeToString())

    def all_refused() -> Any:
        rows = op.status()["nodes"]
        return rows if all(r["health"] == "error" for r in rows) else None

    for row in wait_until("every node to refuse the policy", all_refused):
        assert row["revision"] == good and not row["converged"]
        assert row["error"]["fields"][0]["field"] == "policy.acl[0].match.dport", row["error"]
        assert "above" in row["error"]["fields"][0]["reason"]
    for node in topo.nodes:
        denies(topo, node, B)
    assert op.run("status", "--wait", "1", expect=1).returncode == 1

    # wrong on one node only: a chain leg on an interface that node has not attached
    chain = {"name": "fw", "forward": {"interfaces": ["fw9"], "mark": 16, "table": 1010,
                                       "nexthops": [{"via": "10.81.2.1"}]}}
    op.run("push", "-f", op.policy_file(C, chains=[chain]), "--policy", "chainy")
    op.run("assign", "n2", "--policy", "chainy")
    op.push("base", B)  # the good base back for n0 and n1
    row = wait_until("n2 to refuse chainy", lambda: (r := op.node("n2")) and r["health"] == "error" and r)
    assert row["error"]["fields"][0]["field"] == "policy.chains[0].forward.interfaces[0]", row["error"]
    assert row["policy"] == "base"
    denies(topo, node_by(topo, "n2"), B)
    op.run("assign", "n2", "--policy", "base")
    status = op.converged()
    assert all(r["health"] == "ok" and r["error"] is None for r in status["nodes"])


def test_etcd_down_and_back_nodes_keep_forwarding(topo: FleetTopology, cluster: EtcdCluster,
                                                  daemons: dict[str, DaemonProcess], op: Operator) -> None:
    cluster.stop()
    try:
        for daemon in daemons.values():
            wait_until("fleet health NOT_SERVING",
                       lambda d=daemon: fleet_health(d) == health_pb2.HealthCheckResponse.NOT_SERVING)
        for node in topo.nodes:
            denies(topo, node, B)  # the last applied policy, enforced throughout
        unreachable = op.run("status", expect=3)
        assert "UNAVAILABLE" in unreachable.stderr
    finally:
        cluster.start()
    revision = op.push("base", C)
    status = op.converged()
    for row in status["nodes"]:
        assert row["revision"] == revision and row["reconnects"] >= 1 and row["last_outage"], row
    for node in topo.nodes:
        denies(topo, node, C)
        assert fleet_health(daemons[node.name]) == health_pb2.HealthCheckResponse.SERVING


def test_cluster_loses_its_leader(topo: FleetTopology, cluster: EtcdCluster,
                                  daemons: dict[str, DaemonProcess], op: Operator) -> None:
    leader = cluster.leader()
    leader.kill()
    try:
        for node in topo.nodes:
            denies(topo, node, C)
        revision = wait_until("a push through the remaining quorum",
                              lambda: _try_push(op, "base", B))
        status = op.converged()
        assert all(r["revision"] == revision for r in status["nodes"])
        for node in topo.nodes:
            denies(topo, node, B)
    finally:
        leader.start()
        cluster.wait_ready()


def _try_push(op: Operator, name: str, deny: int) -> int | None:
    done = op.topo.cli("-j", "fleet", "push", "-f", op.policy_file(deny), "--policy", name,
                       endpoints=op.cluster.endpoints())
    return int(json.loads(done.stdout)["revision"]) if done.returncode == 0 else None


def test_partitioned_node_keeps_its_policy_and_catches_up(topo: FleetTopology,
                                                          daemons: dict[str, DaemonProcess],
                                                          op: Operator) -> None:
    n2 = node_by(topo, "n2")
    topo.partition(n2)
    try:
        revision = op.push("base", A)
        wait_until("n0 and n1 to converge",
                   lambda: all(r["converged"] for r in op.status()["nodes"] if r["node"] != "n2"))
        denies(topo, n2, B)  # still the old policy, still forwarding
        row = wait_until("n2's status to expire with its lease", lambda: (r := op.node("n2")) and
                         r["health"] == "absent" and r)
        assert row["assigned"] == "base" and not row["converged"]
    finally:
        topo.heal(n2)
    status = op.converged()
    assert {r["node"]: r["revision"] for r in status["nodes"]}["n2"] == revision
    denies(topo, n2, A)


def test_node_away_across_a_compaction_sweeps_what_was_deleted(topo: FleetTopology, cluster: EtcdCluster,
                                                               daemons: dict[str, DaemonProcess],
                                                               op: Operator) -> None:
    """Cut off while its assignment is deleted and the history compacted: the delete event is
    gone, so only a relist can tell; the node must end on the empty policy."""
    n2 = node_by(topo, "n2")
    before = op.node("n2")
    assert before is not None
    topo.partition(n2)
    try:
        wait_until("n2 to notice",
                   lambda: fleet_health(daemons["n2"]) == health_pb2.HealthCheckResponse.NOT_SERVING)
        op.run("unassign", "n2")
        op.push("base", B)
        cluster.compact()
    finally:
        topo.heal(n2)
    # unassigned and its status expired meanwhile: n2 is in the view again once it reports
    row = wait_until("n2 back and converged", lambda: (r := op.node("n2")) and r["converged"] and r)
    assert (row["assigned"], row["policy"], row["revision"]) == (None, None, 0), row
    assert row["resyncs"] > before["resyncs"]  # it listed again: the resume was refused as compacted
    forwards_all(topo, n2)
    op.run("assign", "n2", "--policy", "base")
    op.converged()
    denies(topo, n2, B)


def test_daemon_restarted_across_a_change_catches_up(topo: FleetTopology, cluster: EtcdCluster,
                                                     daemons: dict[str, DaemonProcess], op: Operator) -> None:
    daemon = daemons["n1"]
    daemon.stop(keep=True)
    revision = op.push("base", C)
    cluster.compact()
    daemon.start()  # restores the old policy (hitless), then takes etcd's
    status = op.converged()
    assert {r["node"]: r["revision"] for r in status["nodes"]}["n1"] == revision
    denies(topo, node_by(topo, "n1"), C)


def test_push_on_a_stale_revision_is_refused(op: Operator) -> None:
    first = op.push("stale", A, "--expected-revision", "0")  # 0: only if it does not exist yet
    read = op.run("show", "--policy", "stale")["revision"]
    assert read == first
    newer = op.push("stale", B, "--expected-revision", str(read))
    assert newer > read
    stale = op.run("push", "-f", op.policy_file(C), "--policy", "stale", "--expected-revision", str(read),
                   expect=1)
    assert "ABORTED" in stale.stderr and f"revision {newer}" in stale.stderr
    after = op.run("show", "--policy", "stale")
    assert after["revision"] == newer and after["content"]["acl"][0]["match"]["dport"]["low"] == B
    exists = op.run("push", "-f", op.policy_file(C), "--policy", "stale", "--expected-revision", "0",
                    expect=1)
    assert "ABORTED" in exists.stderr


def test_tls_with_client_certificates(topo: FleetTopology, daemons: dict[str, DaemonProcess], op: Operator,
                                      tmp_path: Path) -> None:
    """etcd with --client-cert-auth: a node (and the CLI) with a certificate its CA signed
    converge; without one they are refused at the handshake and the node says so."""
    from testbed.pki import CertificateAuthority

    ca = CertificateAuthority("fleet etcd CA")
    ips = ["127.0.0.1", *(n.etcd_host for n in topo.nodes)]
    server = ca.issue("etcd", ips=ips, server=True).write(tmp_path, "server")
    client = ca.issue("tidegate", client=True).write(tmp_path, "client")
    ca_path = ca.write(tmp_path, "ca")
    tls = ServerTls(cert=server[0], key=server[1], ca=ca_path, client=client)
    with EtcdCluster(1, ns=topo.hub, tls=tls, base_port=2479) as secure:
        cert_flags = ["--etcd-ca", str(ca_path), "--etcd-cert", str(client[0]), "--etcd-key", str(client[1])]
        eps = secure.endpoints()
        op.run("push", "-f", op.policy_file(A), "--policy", "tls", *cert_flags, endpoints=eps)
        op.run("assign", "n0", "--policy", "tls", *cert_flags, endpoints=eps)
        refused = op.run("status", "--etcd-ca", str(ca_path), endpoints=eps, expect=3)
        assert "UNAVAILABLE" in refused.stderr

        n0, n1 = node_by(topo, "n0"), node_by(topo, "n1")
        daemons["n0"].stop(keep=True)
        daemons["n0"].fleet = fleet_config(n0, secure, tls={"ca": str(ca_path), "cert": str(client[0]),
                                                            "key": str(client[1])})
        daemons["n0"].start()
        daemons["n1"].stop(keep=True)
        daemons["n1"].fleet = fleet_config(n1, secure, tls={"ca": str(ca_path)})  # no client certificate
        daemons["n1"].start()
        status = op.run("status", "--wait", str(CONVERGE), *cert_flags, endpoints=eps)
        assert [(r["node"], r["policy"]) for r in status["nodes"]] == [("n0", "tls")]  # n1 never got in
        denies(topo, n0, A)
        assert fleet_health(daemons["n1"]) == health_pb2.HealthCheckResponse.NOT_SERVING
        denies(topo, n1, C)  # n1 keeps what it had
