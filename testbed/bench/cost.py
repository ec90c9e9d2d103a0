"""Benchmark 1: per-packet cost of the XDP program, measured by the kernel (BPF_PROG_TEST_RUN).

Rows, each the kernel's ns/packet over `testrun_repeat` repetitions, all measured in every
repetition of the suite (so the ratios pair side by side):

- floor: a BCC-compiled `return XDP_PASS;`;
- parse only: Tidegate with decap off and no rules, a plain UDP packet;
- VxLAN decap, Geneve decap with two (non-critical) options: no rules;
- ACL with N rules (N-1 random realistic rules, testbed.bench.rules, then the probe flow's
  own deny rule, judged last), the probe packet: the classifier's search (docs/classifier.md:
  a hash probe per subtable, by the lowest order each holds, until the match found comes
  first), then XDP_DROP; built without the ACL's flow cache (programs.SEARCHED), so every
  repetition searches;
- full pipeline: VxLAN decap, the largest ACL (the inner flow allowed by a rule of its own
  among them), 64 classifiers with one matching: XDP_PASS with a mark. As deployed: one flow
  repeated, so every repetition after the first is a flow cache hit; beside it the same on the
  build without the cache ("searched"), the cost of a flow's first packet (or of a flow the cache
  no longer holds: a miss costs that plus one lookup of the cache, and one insert in N);
- the ClassBench sets (testbed.bench.cost_classbench): each shipped set and size, probes drawn
  from its own rules, with the full pipeline (VxLAN + that ACL) beside;
- where the ACL probe's ns go (testbed.bench.cost_profile): the program built with one part taken
  out at a time (the policy event, the search's mark, the judge stage, the tail call), at 1 rule
  and at 1,000, the differences per run attributing the cost; and the same for the full
  pipeline's packet (the tunnels lookup, the tunnel's counter, next_program, the hand-over, the
  ACL's search, the rest of the judge).

Tidegate rows run through the restoring harness (testbed.bench.programs) so every repetition
sees the original packet; its own cost, measured as the harness around `return XDP_PASS`
minus the floor in the same repetition, is subtracted ("net"). ACL rows drop without touching
metadata or headers, so the plain entry is exact there: it is shown beside them as a check.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from dataplane.acl import classifier
from dataplane.kernel.testrun import run_xdp
from dataplane.map_config import RuntimeConfig, TunnelEntry
from dataplane.match.adapter import MatchRule
from dataplane.match.explain import Probe, Searcher
from testbed.bench import cost_classbench, cost_profile, rules
from testbed.bench.common import (
    Plot,
    Profile,
    Section,
    Series,
    Table,
    Target,
    Value,
    runs_meeting,
)
from testbed.bench.programs import SEARCHED, Harness, Noop
from testbed.packets import geneve, geneve_option, vxlan

log = logging.getLogger(__name__)

NAME = "cost"
TITLE = "Per-packet cost (BPF_PROG_TEST_RUN)"
IF_MAC = bytes.fromhex("02aa00000001")
VNI = 100
XDP_DROP, XDP_PASS = 1, 2
PAYLOAD = bytes(64)  # inner frame 106 bytes: above the harness's saved bytes
OUTER = Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02") / IP(src="192.0.2.1", dst="192.0.2.2")
GENEVE_OPTIONS = [geneve_option(0x0102, 0x01, b"abcd"), geneve_option(0xFFFF, 0x7F, b"12345678")]
# The full pipeline's inner flow, allowed by a rule of its own and marked by a classifier.
FULL_FLOW = rules.Flow("198.18.9.9", "198.19.2.2", rules.TCP, 443)
FULL_RULE_ID, FULL_MARK = 2, 0x10
CLASSIFIERS = 64
TARGET_ACL_RATIO = 1.5
TARGET_ACL_SIZE = 100_000
TARGET_FULL_RATIO = 10.0  # issue 14 item 5: the full pipeline under 10x the floor
FULL_LABEL = "full:"  # the full pipeline as deployed: a flow cache hit
SEARCHED_LABEL = "full, searched:"  # the same built without the cache


def frame(flow: rules.Flow) -> bytes:
    l4: Packet = UDP(sport=rules.PROBE_SPORT, dport=flow.dport, chksum=0)
    if flow.proto == rules.TCP:
        l4 = TCP(sport=rules.PROBE_SPORT, dport=flow.dport, flags="S")
    eth = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:99")
    return bytes(eth / IP(src=flow.src, dst=flow.dst) / l4 / PAYLOAD)


@dataclass
class Case:
    label: str
    packet: str
    fd: int
    data: bytes
    harness: Harness | None  # None: the floor (no harness to subtract)
    config: RuntimeConfig | None  # written before each measurement
    expect: int
    direct_fd: int | None = None  # the plain entry, where it is exact (drop verdicts)
    acl_size: int | None = None


class Bench:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.section = Section(NAME, TITLE, method=__doc__ or "")
        self.noop = Noop()
        self.base = self._harness([])
        self.acl: dict[int, Harness] = {}  # built without the flow cache: the search
        self.full: Harness | None = None  # the largest ACL with the flow cache, as deployed
        self.rulesets: dict[int, list[rules.RuleSpec]] = {}
        self.write_seconds: dict[int, float] = {}
        self.classifiers: list[MatchRule] = []

    def close(self) -> None:
        self.noop.close()
        for h in [self.base, *self.acl.values(), *([self.full] if self.full else [])]:
            h.close()

    @staticmethod
    def _harness(acl: list[rules.RuleSpec], searched: bool = False) -> Harness:
        h = Harness(SEARCHED if searched else None)
        h.dp.configure(RuntimeConfig(), if_mac=IF_MAC)
        h.dp.maps.put_tunnel(TunnelEntry(vni=VNI))
        if acl:
            h.dp.acl.replace([r.match_rule() for r in acl])
        return h

    def load_acls(self) -> None:
        largest = max(self.profile.acl_sizes)
        for n in self.profile.acl_sizes:
            spec = [*rules.generate(n - 1, avoid=(rules.PROBE, FULL_FLOW)), rules.probe_rule()]
            if n == largest:
                spec.append(rules.probe_rule(FULL_FLOW, "allow", FULL_RULE_ID, rules.LAST_PRIORITY - 1))
            h = self._harness([], searched=True)
            started = time.perf_counter()
            h.dp.acl.replace([r.match_rule() for r in spec])
            self.write_seconds[n] = time.perf_counter() - started
            self.acl[n] = h
            self.rulesets[n] = spec
            log.info("ACL loaded", extra={"rules": len(spec), "seconds": self.write_seconds[n]})
        self.full = self._harness(self.rulesets[largest])
        rng = random.Random(rules.SEED + 1)
        cls = [
            classifier(5000 + i, 100 + i, 0x100 + i, src=r.src, dst=r.dst, proto=r.proto, dport=r.dport)
            for i, r in enumerate(
                rules.generate(CLASSIFIERS - 1, avoid=(FULL_FLOW,), seed=rng.randrange(1 << 30))
            )
        ]
        f = FULL_FLOW
        cls.append(
            classifier(
                FULL_RULE_ID,
                1000,
                FULL_MARK,
                src=f"{f.src}/32",
                dst=f"{f.dst}/32",
                proto=f.proto,
                dport=(f.dport, f.dport),
            )
        )
        for h in (self.full, self.acl[largest]):
            h.dp.classifiers.replace(cls)
        self.classifiers = cls

    def cases(self) -> list[Case]:
        plain = frame(rules.PROBE)
        vx = vxlan(OUTER, VNI, plain)
        gn = geneve(OUTER, VNI, plain, options=GENEVE_OPTIONS)
        decap_off = RuntimeConfig(decap=False)
        on = RuntimeConfig()
        b = self.base
        out = [
            Case("floor: return XDP_PASS", f"UDP {len(plain)} B", self.noop.fd, plain, None, None, XDP_PASS),
            Case(
                "parse only (decap off, no rules)",
                f"UDP {len(plain)} B",
                b.restoring_fd,
                plain,
                b,
                decap_off,
                XDP_PASS,
            ),
            Case("VxLAN decap", f"VxLAN/UDP {len(vx)} B", b.restoring_fd, vx, b, on, XDP_PASS),
            Case("Geneve decap, 2 options", f"Geneve/UDP {len(gn)} B", b.restoring_fd, gn, b, on, XDP_PASS),
        ]
        for n, h in self.acl.items():
            out.append(
                Case(
                    f"ACL, {n:,} rule{'s' if n != 1 else ''}",
                    f"UDP {len(plain)} B, denied",
                    h.restoring_fd,
                    plain,
                    h,
                    on,
                    XDP_DROP,
                    direct_fd=h.ingress_fd,
                    acl_size=n,
                )
            )
        largest = max(self.acl)
        full = vxlan(OUTER, VNI, frame(FULL_FLOW))
        assert self.full is not None
        for label, h in ((f"{FULL_LABEL} VxLAN + ACL {largest:,} + classifier", self.full),
                         (f"{SEARCHED_LABEL} VxLAN + ACL {largest:,} + classifier (no flow cache)",
                          self.acl[largest])):
            out.append(Case(label, f"VxLAN/TCP {len(full)} B, allowed, marked", h.restoring_fd, full, h, on,
                            XDP_PASS))
        return out

    def full_setup(self) -> cost_profile.FullSetup:
        largest = max(self.acl)
        return cost_profile.FullSetup([r.match_rule() for r in self.rulesets[largest]], self.classifiers, VNI,
                                      vxlan(OUTER, VNI, frame(FULL_FLOW)),
                                      f"VxLAN + ACL {largest:,} + classifiers, allowed")

    def verify(self, cases: list[Case]) -> None:
        """Each case does what its label says, once, through the plain entry."""
        for c in cases:
            if c.harness is None:
                continue
            c.harness.dp.configure(c.config or RuntimeConfig(), if_mac=IF_MAC)
            result = c.harness.dp.run_xdp(c.data)
            if result.action != c.expect:
                raise RuntimeError(f"{c.label}: verdict {result.action}, expected {c.expect}")
            if c.label.startswith("full") and len(result.meta) >= 8:
                mark = int.from_bytes(result.meta[4:8], "little")
                if mark != FULL_MARK:
                    raise RuntimeError(f"{c.label}: mark {mark:#x}, expected {FULL_MARK:#x}")
            before = c.harness.dp.maps.event_counts()
            again = run_xdp(c.fd, c.data, 1000)
            after = c.harness.dp.maps.event_counts()
            decaps = sum(after[e].packets - before[e].packets for e in after if e.name.startswith("DECAP_"))
            if c.packet.startswith(("VxLAN", "Geneve")) and decaps != 1000:
                raise RuntimeError(f"{c.label}: {decaps} of 1000 repetitions decapsulated")
            if again.data != c.data:
                raise RuntimeError(f"{c.label}: the harness did not restore the packet")

    def measure(self, cases: list[Case]) -> tuple[dict[str, Value], dict[str, Value], Value, Value]:
        raw: dict[str, list[float]] = {c.label: [] for c in cases}
        direct: dict[str, list[float]] = {c.label: [] for c in cases if c.direct_fd is not None}
        floor, harness = [], []
        reps = self.profile.testrun_repeat
        for _ in range(self.profile.runs):
            floor.append(run_xdp(self.noop.fd, cases[0].data, reps).duration_ns)
            harness.append(run_xdp(self.base.restoring_noop_fd, cases[0].data, reps).duration_ns)
            for c in cases:
                if c.config is not None and c.harness is not None:
                    c.harness.dp.configure(c.config, if_mac=IF_MAC)
                raw[c.label].append(run_xdp(c.fd, c.data, reps).duration_ns)
                if c.direct_fd is not None:
                    direct[c.label].append(run_xdp(c.direct_fd, c.data, reps).duration_ns)
        overhead = Value.of([h - f for h, f in zip(harness, floor, strict=True)], "ns")
        net = {}
        for c in cases:
            v = Value.of(raw[c.label], "ns")
            net[c.label] = v if c.harness is None else v.minus(overhead)
        return net, {k: Value.of(v, "ns") for k, v in direct.items()}, overhead, Value.of(floor, "ns")

    def search_profile(self) -> Table:
        """The probe's search at each ACL size, as the classifier holds the rules."""
        t = Table("The ACL probe's search (dataplane.match.explain): subtables the rules went into, "
                  "subtables probed and candidates checked before the verdict",
                  ["rules", "subtables", "buckets", "subtables probed", "candidates checked",
                   "compiled and written in (MatchTable.replace)"])
        p = rules.PROBE
        probe = Probe.of(p.src, p.dst, p.proto, rules.PROBE_SPORT, p.dport)
        for n, h in self.acl.items():
            live = h.dp.acl.current
            found = Searcher(live)(probe)
            t.add(n, len(live.tables), len(live.keys), found.subtables, found.candidates,
                  Value.of([self.write_seconds[n]], "s"))
        return t


def run(profile: Profile) -> Section:
    bench = Bench(profile)
    try:
        bench.load_acls()
        cases = bench.cases()
        bench.verify(cases)
        measured = Measured(*bench.measure(cases))
        search_table = bench.search_profile()
        _report(bench, cases, measured, search_table)
        bench.section.tables.append(search_table)
        bench.section.tables.append(cost_profile.measure(bench.profile, bench.rulesets, frame(rules.PROBE),
                                                         IF_MAC, bench.noop.fd))
        bench.section.tables.append(cost_profile.measure_full(bench.profile, bench.full_setup(), IF_MAC,
                                                              bench.noop.fd))
        sets = cost_classbench.measure(bench.profile, measured.overhead.median)
        acl1 = next((measured.net[c.label] for c in cases if c.acl_size == min(bench.acl)), None)
        if sets:
            bench.section.tables.append(cost_classbench.table(sets, acl1, bench.profile))
        bench.section.targets.append(cost_classbench.target(sets, acl1))
    finally:
        bench.close()
    return bench.section


@dataclass(frozen=True)
class Measured:
    net: dict[str, Value]     # ns/packet, harness cost subtracted
    direct: dict[str, Value]  # ns/packet through the plain entry, where that is exact
    overhead: Value           # the harness's own cost
    floor: Value              # `return XDP_PASS`


def _report(bench: Bench, cases: list[Case], m: Measured, search_table: Table) -> None:
    s = bench.section
    acl1 = next((m.net[c.label] for c in cases if c.acl_size == min(bench.acl)), None)
    s.tables.append(_table(bench, cases, m, acl1))
    gaps = [abs(m.net[c.label].median - m.direct[c.label].median) for c in cases if c.label in m.direct]
    s.notes.append(f"Harness cost subtracted from every Tidegate row: {_fmt(m.overhead)} (measured in each "
                   "run as the harness around `return XDP_PASS` minus the floor). The ACL rows' plain-entry "
                   "column measures the same rows without any harness; net and plain entry differ by at most "
                   f"{max(gaps, default=0):.0f} ns (medians).")
    s.notes.append("The ACL probe is denied by its rule, so it also pays for a policy event (rate limited by "
                   "the token bucket, as in production); the full-pipeline probe is allowed, so it pays for "
                   "the classifier lookups and the metadata instead.")
    s.plots += _plots(cases, m)
    s.targets.append(_acl_target(bench, cases, m.net, acl1, search_table))
    s.targets.append(_full_target(cases, m))


def _table(bench: Bench, cases: list[Case], m: Measured, acl1: Value | None) -> Table:
    p = bench.profile
    t = Table(f"ns/packet, median [min–max] of {p.runs} runs of {p.testrun_repeat:,} repetitions",
              ["case", "packet", "ns/packet (net)", "× floor", f"× ACL({min(bench.acl)})",
               "plain entry (check)"])
    for c in cases:
        v = m.net[c.label]
        to_floor = v.ratio_to(m.floor) if c.harness else None
        to_acl1 = v.ratio_to(acl1) if c.acl_size is not None and acl1 is not None else None
        t.add(c.label, c.packet, v, to_floor, to_acl1, m.direct.get(c.label))
    return t


def _plots(cases: list[Case], m: Measured) -> list[Plot]:
    acl = [c for c in cases if c.acl_size is not None]
    sizes = [c.acl_size for c in acl]
    return [
        Plot("cost_per_packet.png", "bar", "Per-packet cost (BPF_PROG_TEST_RUN, net of harness)", "",
             "ns/packet", [Series("ns/packet", [c.label for c in cases], [m.net[c.label] for c in cases])]),
        Plot("cost_acl_scaling.png", "line", "ACL cost against rule count", "rules in the ACL", "ns/packet",
             [Series("Tidegate ACL (net)", sizes, [m.net[c.label] for c in acl])], logx=True,
             marks=[("floor: return XDP_PASS", m.floor.median, "y")]),
    ]


def _fmt(v: Value) -> str:
    from testbed.bench.common import fmt_value

    return fmt_value(v)


def _acl_target(
    bench: Bench, cases: list[Case], net: dict[str, Value], acl1: Value | None, search_table: Table
) -> Target:
    goal = f"ACL cost at {TARGET_ACL_SIZE:,} rules ≤ {TARGET_ACL_RATIO}x the cost at 1 rule"
    big = next((c for c in cases if c.acl_size == TARGET_ACL_SIZE), None)
    if big is None or acl1 is None:
        largest = max(bench.acl)
        return Target(
            "ACL scaling",
            goal,
            f"not measured in this profile: the largest ACL here has {largest:,} rules",
            None,
        )
    ratio = net[big.label].ratio_to(acl1)
    met = ratio.median <= TARGET_ACL_RATIO
    rows = {row[0]: row for row in search_table.rows}
    small, large = rows[min(bench.acl)], rows[TARGET_ACL_SIZE]
    explanation = "" if met else (
        f"At 1 rule the probe's search probes {small[3]} subtable(s) and checks {small[4]} candidate(s); at "
        f"{TARGET_ACL_SIZE:,} rules {large[3]} and {large[4]} ({large[1]} subtables, {large[2]} buckets: "
        "table above): the rest is the cost of the hash probes themselves over a larger map.")
    share = runs_meeting(ratio, lambda x: x <= TARGET_ACL_RATIO)
    measured = f"{_fmt(ratio)} ({_fmt(net[big.label])} vs {_fmt(acl1)}){share}"
    return Target("ACL scaling", goal, measured, met, explanation)


def _full_target(cases: list[Case], m: Measured) -> Target:
    goal = f"full pipeline (VxLAN decap, the largest ACL, classifiers) < {TARGET_FULL_RATIO:g}x the floor"
    full = next(c for c in cases if c.label.startswith(FULL_LABEL))
    searched = next(c for c in cases if c.label.startswith(SEARCHED_LABEL))
    ratio = m.net[full.label].ratio_to(m.floor)
    met = ratio.median < TARGET_FULL_RATIO
    share = runs_meeting(ratio, lambda x: x < TARGET_FULL_RATIO)
    measured = (f"{_fmt(ratio)} ({_fmt(m.net[full.label])} vs {_fmt(m.floor)}){share}; a flow's first "
                f"packet (searched, no flow cache): {_fmt(m.net[searched.label].ratio_to(m.floor))}")
    parts = {c.label: m.net[c.label] for c in cases if c.label.startswith(("parse", "VxLAN", "ACL, 1 "))}
    explanation = "" if met else (
        f"The floor is BPF_PROG_TEST_RUN's own loop around `return XDP_PASS`: {TARGET_FULL_RATIO:g}x it is "
        f"{TARGET_FULL_RATIO * m.floor.median:.0f} ns. The pipeline's parts in this run: "
        + "; ".join(f"{label} {_fmt(v)}" for label, v in parts.items())
        + " (each with the parse); the profile tables below say where the ACL probe's and the full "
        "pipeline's nanoseconds go.")
    return Target("Full pipeline", goal, measured, met, explanation)
