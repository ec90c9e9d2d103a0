"""Benchmark 5: fleet mode, a policy pushed to N daemons through etcd.

One etcd member (Debian's etcd-server) runs in a hub namespace; N real daemons
(testbed.daemon.DaemonProcess), each in its own namespace with the data plane attached natively
to a veth, are fleet members that reach etcd over a veth each (testbed.fleet_topology). The
pool grows, 1, then 5, then 20 daemons, all following one named policy.

- convergence: testbed.bench.fleet_driver, run in the hub, pushes a different policy of R rules
  each time (`tidegate fleet push`'s transaction) and times from the push until every node's
  status key reports the pushed revision (a watch on the status keys, opened before the push):
  the node has decoded, validated, applied (maps written, state persisted) and reported it;
- beside it, the same policies sent with ApplyPolicy over gRPC to each daemon in turn (the
  daemons restarted without their fleet: section, the way a script would do without fleet mode),
  timed from the first call until the last one returned.

All daemons share the machine's 2 cores: N daemons applying at once compete for them, where the
gRPC loop applies one at a time.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import ExitStack

from control.rpc.api import pb2
from testbed import fleet_topology
from testbed.bench import rules
from testbed.bench.common import Profile, Section, Table, Target, Value
from testbed.bench.control_report import percentile
from testbed.daemon import DaemonProcess
from testbed.etcd import EtcdCluster, etcd_available

log = logging.getLogger(__name__)

NAME = "fleet"
TITLE = "Fleet mode: one push, N daemons, through etcd"
RPC_TIMEOUT = 600.0
TARGET_NODES, TARGET_RULES, TARGET_P99_S = 20, 10, 1.0
REPO_ROOT = fleet_topology.REPO_ROOT
FLEET = "etcd (fleet push, until every status key shows it)"
GRPC = "gRPC ApplyPolicy to each daemon in turn"


class Bench:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.section = Section(NAME, TITLE, method=__doc__ or "")
        self.samples: dict[tuple[str, int, int], list[float]] = defaultdict(list)
        self.sizes: dict[int, int] = {}

    def runs(self, n: int) -> int:
        return self.profile.fleet_runs if n <= 1_000 else self.profile.fleet_runs_large

    def run(self) -> None:
        nodes_max = max(self.profile.fleet_nodes)
        with ExitStack() as stack:
            topo = stack.enter_context(fleet_topology.build(nodes_max))
            etcd = stack.enter_context(EtcdCluster(1, ns=topo.hub))
            daemons: list[DaemonProcess] = []
            for k in self.profile.fleet_nodes:
                while len(daemons) < k:
                    daemons.append(self._start(stack, topo, etcd, len(daemons)))
                for n in self.profile.fleet_rules:
                    self._fleet(topo, etcd, [f"n{i}" for i in range(k)], n)
            for d in daemons:  # the same daemons, without fleet mode, for the gRPC loop
                d.stop(keep=True)
                d.fleet = None
                d.start()
            for k in self.profile.fleet_nodes:
                for n in self.profile.fleet_rules:
                    self._grpc(daemons[:k], n)

    def _start(self, stack: ExitStack, topo: fleet_topology.FleetTopology, etcd: EtcdCluster,
               i: int) -> DaemonProcess:
        node = topo.nodes[i]
        fleet = {"endpoints": etcd.endpoints(node.etcd_host), "node": node.name}
        d = stack.enter_context(DaemonProcess(node.ns, fleet=fleet))
        iface = pb2.Interface(name=fleet_topology.INGRESS, mode=pb2.XDP_MODE_NATIVE)
        d.interfaces.AttachInterface(pb2.AttachInterfaceRequest(interface=iface), timeout=RPC_TIMEOUT)
        return d

    def _fleet(self, topo: fleet_topology.FleetTopology, etcd: EtcdCluster, nodes: list[str], n: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        cmd = ["ip", "netns", "exec", topo.hub.name, sys.executable, "-m", "testbed.bench.fleet_driver",
               "--endpoints", ",".join(etcd.endpoints()), "--nodes", ",".join(nodes), "--rules", str(n),
               "--runs", str(self.runs(n))]
        done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=3600,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"fleet driver ({len(nodes)} nodes, {n} rules): {done.stderr.strip()[-2000:]}")
        result = json.loads(done.stdout)
        self.samples[(FLEET, len(nodes), n)] += result["samples"]
        self.sizes[n] = max(result["bytes"])

    def _grpc(self, daemons: list[DaemonProcess], n: int) -> None:
        for rep in range(self.runs(n)):
            policy = rules.proto_policy(rules.ruleset(n, seed=rules.SEED + 1 + rep))
            request = pb2.ApplyPolicyRequest(policy=policy)
            started = time.perf_counter()
            for d in daemons:
                d.policy.ApplyPolicy(request, timeout=RPC_TIMEOUT)
            self.samples[(GRPC, len(daemons), n)].append(time.perf_counter() - started)


def _report(bench: Bench) -> None:
    p = bench.profile
    t = Table("From push to every node applied: p50 and p99 over the pushes (seconds)",
              ["daemons", "rules", "how", "pushes", "p50", "p99", "max"])
    for k in p.fleet_nodes:
        for n in p.fleet_rules:
            for how in (FLEET, GRPC):
                s = bench.samples.get((how, k, n))
                if s:
                    t.add(k, f"{n:,}", how, len(s), Value.of([percentile(s, 0.5)], "s"),
                          Value.of([percentile(s, 0.99)], "s"), Value.of([max(s)], "s"))
    bench.section.tables.append(t)
    if bench.sizes:
        bench.section.notes.append("Policy size in etcd (tidegate.v1.Policy, protobuf): " + ", ".join(
            f"{n:,} rules = {b / 1024:,.0f} KiB" for n, b in sorted(bench.sizes.items())))
    s = bench.samples.get((FLEET, TARGET_NODES, TARGET_RULES))
    if s:
        p99 = percentile(s, 0.99)
        bench.section.targets.append(Target(
            f"{TARGET_NODES} nodes converge on a {TARGET_RULES}-rule change", f"p99 < {TARGET_P99_S:g} s",
            f"p99 {p99:.3f} s over {len(s)} pushes", p99 < TARGET_P99_S))
    else:
        bench.section.targets.append(Target(
            f"{TARGET_NODES} nodes converge on a {TARGET_RULES}-rule change", f"p99 < {TARGET_P99_S:g} s",
            "not measured in this profile", None))


def run(profile: Profile) -> Section:
    bench = Bench(profile)
    reason = etcd_available()
    if reason:
        bench.section.failures.append(reason)
        return bench.section
    bench.run()
    _report(bench)
    return bench.section
