"""Benchmark 1: per-packet cost of the XDP program, measured by the kernel (BPF_PROG_TEST_RUN).

Rows, each the kernel's ns/packet over `testrun_repeat` repetitions, all measured in every
repetition of the suite (so the ratios pair side by side):

- floor: a BCC-compiled `return XDP_PASS;`;
- parse only: Tidegate with decap off and no rules, a plain UDP packet;
- VxLAN decap, Geneve decap with two (non-critical) options: no rules;
- ACL with N rules (N-1 random realistic rules, testbed.bench.rules, then the probe flow's
  own deny rule, judged last), the probe packet: one lookup per stage (source, destination,
  port), then XDP_DROP. A stage is looked up in its fixed-depth form (a source bucket, a class's
  destination list, an exact port: one hash probe each) once its trie holds enough entries for
  that to be cheaper, else by walking its LPM trie (docs/dataplane.md, "ACL");
- full pipeline: VxLAN decap, the largest ACL (the inner flow allowed by a rule of its own
  among them), 64 classifiers with one matching: XDP_PASS with a mark.

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
from ipaddress import IPv4Address
from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from dataplane import abi
from dataplane.acl import classifier
from dataplane.kernel.testrun import run_xdp
from dataplane.map_config import RuntimeConfig, TunnelEntry
from testbed.bench import lpm, rules
from testbed.bench.common import (
    Plot,
    Profile,
    Section,
    Series,
    Table,
    Target,
    Value,
    fmt_cell,
    runs_meeting,
)
from testbed.bench.programs import Harness, Noop
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
        self.acl: dict[int, Harness] = {}
        self.rulesets: dict[int, list[rules.RuleSpec]] = {}
        self.write_seconds: dict[int, float] = {}

    def close(self) -> None:
        self.noop.close()
        for h in [self.base, *self.acl.values()]:
            h.close()

    @staticmethod
    def _harness(acl: list[rules.RuleSpec]) -> Harness:
        h = Harness()
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
            h = self._harness([])
            started = time.perf_counter()
            h.dp.acl.replace([r.match_rule() for r in spec])
            self.write_seconds[n] = time.perf_counter() - started
            self.acl[n] = h
            self.rulesets[n] = spec
            log.info("ACL loaded", extra={"rules": len(spec), "seconds": self.write_seconds[n]})
        h = self.acl[largest]
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
        h.dp.classifiers.replace(cls)

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
        h = self.acl[largest]
        full = vxlan(OUTER, VNI, frame(FULL_FLOW))
        out.append(
            Case(
                f"full: VxLAN + ACL {largest:,} + classifier",
                f"VxLAN/TCP {len(full)} B, allowed, marked",
                h.restoring_fd,
                full,
                h,
                on,
                XDP_PASS,
            )
        )
        return out

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

    def lpm_profile(self) -> Table:
        t = Table("The probe's lookups behind the ACL: trie entries and the nodes a walk of each trie "
                  "visits; what the program looks up (a stage served by its fixed-depth form walks no "
                  "trie node)",
                  ["rules", "acl_src entries", "nodes", "acl_dst entries", "nodes", "acl_port entries",
                   "nodes", "trie nodes walked", "the probe's lookups", "compiled and written in "
                   "(MatchTable.replace)"])
        for n, h in self.acl.items():
            s, d, p = probe_walks(h.dp.program.table)
            served = fixed_depth_served(h.dp.program.table, d is not None)
            dst_nodes = d.nodes if d is not None else 0
            dst_entries = d.entries if d is not None else "skipped"
            stages = [(w, form) for w, form in zip((s, d, p), served, strict=True) if w is not None]
            walked = sum(w.nodes for w, form in stages if not form)
            names = " + ".join(form or "trie" for _, form in stages)
            t.add(n, s.entries, s.nodes, dst_entries, dst_nodes, p.entries, p.nodes, walked, names,
                  Value.of([self.write_seconds[n]], "s"))
        return t


def probe_walks(table: Any) -> tuple[lpm.Walk, lpm.Walk | None, lpm.Walk]:
    """The probe's three lookups as the program makes them (stage 2 is skipped when stage 1 names
    a ruleset directly: TG_SET_F_RULESET, where the ABI has it)."""
    fam = abi.define("TG_FAMILY_V4")
    src_t, dst_t, port_t = table("acl_src"), table("acl_dst"), table("acl_port")
    s = lpm.read_trie(src_t).walk(lpm.key_bytes(src_t, family=fam, addr=IPv4Address(rules.PROBE_SRC).packed
                                                + bytes(12)))
    ruleset, d = s.value or 0, None
    flag = abi.defines().get("TG_SET_F_RULESET", 0)
    if flag and ruleset & flag:
        ruleset &= ~flag
    else:
        daddr = IPv4Address(rules.PROBE_DST).packed + bytes(12)
        d = lpm.read_trie(dst_t).walk(lpm.key_bytes(dst_t, set=ruleset, family=fam, addr=daddr))
        ruleset = d.value or 0
    port = rules.PROBE_DPORT.to_bytes(2, "big")
    p = lpm.read_trie(port_t).walk(lpm.key_bytes(port_t, set=ruleset, proto=rules.UDP, port=port))
    return s, d, p

def fixed_depth_served(table: Any, with_dst: bool) -> tuple[str, str, str]:
    """For each stage, the fixed-depth form that serves the probe ("" where its trie does): the
    form is turned on (match_flags) and holds an element for the probe (dataplane.matcher_layout)."""
    from dataplane.matcher import KEY_BITS, SET_F_RULESET, Prefix, address_bits
    from dataplane.matcher_layout import F_DST_LISTS, F_PORT_EXACT, F_SRC_BUCKETS, bucket_key, bucket_of
    from dataplane.tables import ACL_TABLES

    flags = table("match_flags")
    use = int(flags[flags.Key(ACL_TABLES.table)].value)
    s, d, _ = probe_walks(table)
    bucket = bucket_of(Prefix(address_bits(IPv4Address(rules.PROBE_SRC)), KEY_BITS))
    buckets = table("acl_src_bucket")
    bk = buckets.Key()
    if bucket is not None:
        bk.family, addr = bucket_key(bucket)
        bk.addr = type(bk.addr)(*addr)
    served_src = bool(use & F_SRC_BUCKETS) and bucket is not None and buckets.get(bk) is not None
    lists = table("acl_dst_list")
    cls = lists.Key((s.value or 0) & ~SET_F_RULESET)
    served_dst = with_dst and bool(use & F_DST_LISTS) and lists.get(cls) is not None
    exact = table("acl_port_exact")
    ek = exact.Key()
    ek.set = ((d.value if d is not None else s.value) or 0) & ~SET_F_RULESET
    ek.proto = rules.UDP
    ek.port = type(ek.port)(*rules.PROBE_DPORT.to_bytes(2, "big"))
    served_port = bool(use & F_PORT_EXACT) and exact.get(ek) is not None
    return ("bucket" if served_src else "", "list" if served_dst else "", "exact" if served_port else "")


def run(profile: Profile) -> Section:
    bench = Bench(profile)
    try:
        bench.load_acls()
        cases = bench.cases()
        bench.verify(cases)
        measured = Measured(*bench.measure(cases))
        lpm_table = bench.lpm_profile()
        _report(bench, cases, measured, lpm_table)
        bench.section.tables.append(lpm_table)
    finally:
        bench.close()
    return bench.section


@dataclass(frozen=True)
class Measured:
    net: dict[str, Value]     # ns/packet, harness cost subtracted
    direct: dict[str, Value]  # ns/packet through the plain entry, where that is exact
    overhead: Value           # the harness's own cost
    floor: Value              # `return XDP_PASS`


def _report(bench: Bench, cases: list[Case], m: Measured, lpm_table: Table) -> None:
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
    s.targets.append(_acl_target(bench, cases, m.net, acl1, lpm_table))


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
    bench: Bench, cases: list[Case], net: dict[str, Value], acl1: Value | None, lpm_table: Table
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
    explanation = "" if met else _acl_explanation(lpm_table, net, acl1, big, cases)
    share = runs_meeting(ratio, lambda x: x <= TARGET_ACL_RATIO)
    measured = f"{_fmt(ratio)} ({_fmt(net[big.label])} vs {_fmt(acl1)}){share}"
    return Target("ACL scaling", goal, measured, met, explanation)


def _per_node(lpm_table: Table, net: dict[str, Value], cases: list[Case]) -> tuple[float, float]:
    """Least-squares fit of net ns/packet against LPM nodes visited over the ACL sizes: (ns per node,
    intercept)."""
    nodes = {int(row[0]): int(row[7]) for row in lpm_table.rows}  # type: ignore[arg-type]
    points = [(nodes[c.acl_size], net[c.label].median) for c in cases if c.acl_size in nodes]
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else float("nan")
    return slope, my - slope * mx


def _segment(lpm_table: Table, net: dict[str, Value], cases: list[Case]) -> str:
    """ns per extra node between the smallest and the next size, and between that and the largest."""
    nodes = {int(row[0]): int(row[7]) for row in lpm_table.rows}  # type: ignore[arg-type]
    cost = {c.acl_size: net[c.label].median for c in cases if c.acl_size in nodes}
    sizes = sorted(cost)
    if len(sizes) < 3:
        return "too few sizes to compare"
    a, b, c = sizes[0], sizes[1], sizes[-1]

    def per(x: int, y: int) -> float:
        return (cost[y] - cost[x]) / (nodes[y] - nodes[x]) if nodes[y] != nodes[x] else float("nan")

    return f"{per(a, b):.1f} ns per node from {a:,} to {b:,} rules, {per(b, c):.1f} from {b:,} to {c:,}"


def _int(cell: object) -> int:
    return int(cell) if isinstance(cell, int | float | str) else 0


def _acl_explanation(lpm_table: Table, net: dict[str, Value], acl1: Value, big: Case,
                     cases: list[Case]) -> str:
    small, large = lpm_table.rows[0], lpm_table.rows[-1]
    budget = 0.5 * acl1.median
    entries = " / ".join(fmt_cell(large[k]) for k in (1, 3, 5))
    tries_alone = sum(_int(large[k]) for k in (2, 4, 6))
    lookups = (f"At 1 rule the probe's lookups are {small[8]} ({small[7]} trie nodes walked); at "
               f"{TARGET_ACL_SIZE:,} rules they are {large[8]} ({large[7]} trie nodes walked, where "
               f"the tries alone, over {entries} entries, would walk {tries_alone}; table above). ")
    if _int(large[7]) == 0:
        cost = {c.acl_size: net[c.label].median for c in cases if c.acl_size is not None}
        larger = {n: v for n, v in cost.items() if n > min(cost)}
        return lookups + (
            f"From {min(larger):,} to {max(larger):,} rules the net cost stays between "
            f"{min(larger.values()):.0f} and {max(larger.values()):.0f} ns: it no longer grows with "
            f"the rule count. What exceeds the 1.5x budget ({budget:.0f} ns over the 1-rule cost) is "
            "the price of one hash probe per stage over a walk of a one-node trie, which a policy "
            "this small still uses because there it is cheaper "
            f"({net[big.label].median - acl1.median:.0f} ns in all): a lower 1-rule cost, not a "
            f"higher {TARGET_ACL_SIZE:,}-rule cost."
        )
    slope, intercept = _per_node(lpm_table, net, cases)
    return lookups + (
        f"Over all sizes the net cost fits {intercept:.0f} ns + {slope:.1f} ns per trie node walked "
        f"({_segment(lpm_table, net, cases)}): the cost is the walk itself, a dependent load and a "
        f"prefix comparison per node. The 1.5x budget leaves {budget:.0f} ns, about "
        f"{budget / slope:.0f} node visits for all three stages: the probe must be served by the "
        "fixed-depth forms (a bucket holds at most 4 source prefixes, a class list at most 4 "
        "destinations, an exact entry one port)."
    )
