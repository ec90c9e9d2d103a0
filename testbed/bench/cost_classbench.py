"""Per-packet cost behind the ClassBench rule sets (part of the cost section, testbed.bench.cost).

For each ClassBench set found (testbed.classbench.sets: the shipped acl1, fw1 and ipc1, and any
other seed's set put beside them) and size in the profile: the set is written to the ACL of
one harness (compile + write timed), then probes drawn from the set's own rules (a packet at the
low corner of a random rule: its source and destination addresses, its protocol or TCP, the low
ends of its port ranges) run through the restoring entry of a build without the ACL's flow cache
(each repetition searches): ns/packet is the mean over the probes, net of the harness. Beside
it: the same probes tunnelled in VxLAN (the full pipeline: decap, then the ACL), the search's
work for the probes as the classifier holds them (subtables probed, candidates checked:
dataplane.match.explain) and the ACL maps' kernel memory.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass

import numpy as np
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP
from scapy.packet import Raw

from dataplane.kernel.memory import map_memory
from dataplane.kernel.testrun import run_xdp
from dataplane.map_config import RuntimeConfig, TunnelEntry
from dataplane.match.columns import RuleColumns
from dataplane.match.explain import Probe, Searcher
from testbed import classbench
from testbed.bench.common import Profile, Table, Target, Value, runs_meeting
from testbed.bench.programs import SEARCHED, Harness
from testbed.packets import vxlan

log = logging.getLogger(__name__)

IF_MAC = bytes.fromhex("02aa00000001")
VNI = 100
OUTER = Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02") / IP(src="192.0.2.1", dst="192.0.2.2")
TUNNEL_PORTS = (4789, 6081)
ACL_MAPS = ("acl_rules", "acl_rule_stats", "acl_subtables", "acl_buckets", "acl_buckets4")
TARGET_FAMILY, TARGET_SIZE, TARGET_RATIO = "fw", 10_000, 3.0  # every firewall set of this size
MiB = 1 << 20


@dataclass(frozen=True)
class SetResult:
    seed: str
    size: int
    rules: int
    write_s: float
    subtables: int
    buckets: int
    memory_mib: float
    probed: float  # subtables probed per probe (mean)
    checked: float  # candidates checked per probe (mean)
    net: Value  # ns/packet, mean over the probes, harness subtracted
    full: Value  # the same probes in VxLAN


def probes(cols: RuleColumns, count: int, seed: int) -> list[tuple[bytes, Probe]]:
    """(frame, probe) at the low corner of `count` random rules of the set."""
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.choice(len(cols), min(count, len(cols)), replace=False).tolist():
        v6 = int(cols.family[i]) == 6
        src, dst = (str(ipaddress.IPv6Address(bytes(a[i])) if v6 else ipaddress.IPv4Address(bytes(a[i, :4])))
                    for a in (cols.src_addr, cols.dst_addr))
        proto = 6 if cols.proto_any[i] else int(cols.proto[i])
        sport, dport = int(cols.sport_lo[i]), int(cols.dport_lo[i])
        if proto == 17 and dport in TUNNEL_PORTS:
            dport += 1 if dport + 1 <= int(cols.dport_hi[i]) else 0
        ip = IPv6(src=src, dst=dst, nh=proto) if v6 else IP(src=src, dst=dst, proto=proto)
        l4 = {6: TCP(sport=sport, dport=dport), 17: UDP(sport=sport, dport=dport, chksum=0),
              132: SCTP(sport=sport, dport=dport)}.get(proto)
        eth = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:99")
        pkt = eth / ip / l4 / Raw(bytes(64)) if l4 is not None else eth / ip / Raw(bytes(72))
        out.append((bytes(pkt), Probe.of(src, dst, proto, sport, dport)))
    return out


def measure(profile: Profile, overhead: float) -> list[SetResult]:
    """Every ClassBench set and size of the profile (empty without the shared data)."""
    found = [(seed, size) for seed, size in classbench.sets() if size in profile.classbench_sizes]
    if not found:
        log.warning("ClassBench sets not found: the ClassBench rows are left out")
        return []
    h = Harness(SEARCHED)  # the classifier's work per probe: no flow cache answers the repetitions
    try:
        h.dp.configure(RuntimeConfig(), if_mac=IF_MAC)
        h.dp.maps.put_tunnel(TunnelEntry(vni=VNI))
        return [_one(h, profile, overhead, seed, size) for seed, size in found]
    finally:
        h.close()


def _one(h: Harness, profile: Profile, overhead: float, seed: str, size: int) -> SetResult:
    cols = classbench.load(seed, size)
    h.dp.acl.replace(RuleColumns.empty())
    started = time.perf_counter()
    h.dp.acl.replace(cols)
    write_s = time.perf_counter() - started
    live = h.dp.acl.current
    sample = probes(cols, profile.classbench_probes, seed=size)
    search = Searcher(live)
    work = [search(p) for _, p in sample]
    if any(w.rule_id is None for w in work):
        raise RuntimeError(f"{seed} {size}: a probe inside a rule matched nothing")
    reps = max(1_000, profile.testrun_repeat // len(sample))
    tunnelled = [vxlan(OUTER, VNI, f) for f, _ in sample]
    def mean_ns(frames: list[bytes]) -> float:
        return float(np.mean([run_xdp(h.restoring_fd, f, reps).duration_ns for f in frames])) - overhead

    net, full = [], []
    for _ in range(profile.runs):
        net.append(mean_ns([f for f, _ in sample]))
        full.append(mean_ns(tunnelled))
    memory = map_memory(h.dp.program)
    log.info("ClassBench set measured", extra={"set": seed, "size": size, "seconds": write_s})
    return SetResult(seed, size, len(cols), write_s, len(live.tables), len(live.keys),
                     sum(memory[m] for m in ACL_MAPS) / MiB, float(np.mean([w.subtables for w in work])),
                     float(np.mean([w.candidates for w in work])), Value.of(net, "ns"), Value.of(full, "ns"))


def table(results: list[SetResult], acl1: Value | None, profile: Profile) -> Table:
    t = Table(f"ClassBench sets: probes drawn from each set's own rules ({profile.classbench_probes} a set), "
              f"ns/packet the mean over them, median [min–max] of {profile.runs} runs",
              ["set", "rules", "compiled and written in", "subtables", "buckets", "ACL map memory",
               "subtables probed", "candidates checked", "ns/packet (net)", "× ACL(1)",
               "full: VxLAN + ACL, ns/packet"])
    for r in results:
        t.add(f"{r.seed} {r.size:,}", r.rules, Value.of([r.write_s], "s"), r.subtables, r.buckets,
              Value.of([r.memory_mib], "MiB"), f"{r.probed:.1f}", f"{r.checked:.1f}", r.net,
              r.net.ratio_to(acl1) if acl1 is not None else None, r.full)
    return t


def target(results: list[SetResult], acl1: Value | None) -> Target:
    goal = (f"every ClassBench {TARGET_FAMILY} set of {TARGET_SIZE:,} rules: ≤ {TARGET_RATIO}x the cost of a "
            "1-rule ACL")
    found = [r for r in results if r.seed.startswith(TARGET_FAMILY) and r.size == TARGET_SIZE]
    if not found or acl1 is None:
        return Target("ClassBench lookup", goal, "not measured in this profile", None)
    ratios = [(r, r.net.ratio_to(acl1)) for r in found]
    met = all(ratio.median <= TARGET_RATIO for _, ratio in ratios)
    why = "; ".join(f"{r.seed}'s probes probe {r.probed:.1f} subtables and check {r.checked:.1f} "
                    "candidates on average" for r, ratio in ratios if ratio.median > TARGET_RATIO)
    measured = "; ".join(f"{r.seed} {ratio.median:.2f}x ({r.net.median:.0f} vs {acl1.median:.0f} ns)"
                         f"{runs_meeting(ratio, lambda x: x <= TARGET_RATIO)}" for r, ratio in ratios)
    return Target("ClassBench lookup", goal, measured, met, why)
