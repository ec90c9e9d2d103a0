"""Where the per-packet nanoseconds go: the data plane built with parts taken out, measured by the
kernel (BPF_PROG_TEST_RUN) on the ACL probe (denied by its rule, judged last) at two ACL sizes,
and on the full pipeline's packet (VxLAN, allowed by its rule in the largest ACL).

Each variant is the benchmark harness's source (testbed.bench.programs) with one statement
replaced by what a build without that part does; all of them give the packet its verdict in the
same repetitions as the whole program. Differences, per repetition, attribute the cost. The ACL
probe (plain entry): the parse (the entry dropping right after it, less the floor), the stage
hand-over (the tail call to the judge stage and its set-up), the policy event of a denied packet
(rate limited, as in a flood), and what is left: the ACL's verdict and the rest. The full
pipeline (the restoring entry, its harness cost subtracted as in the cost table, since a decap
changes the packet): parse, decap and exit (the tunnels lookup, the tunnel's counter and
next_program's empty tail call among them), the stage hand-over, the ACL, and the rest of the
judge. Both probes repeat one flow, so the ACL answers from its flow cache (docs/classifier.md),
with no search and no reader mark: the mark's row shows what it costs where it is still taken
(none here), and the searched cost is the cost table's "full, searched" row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dataplane.kernel.testrun import run_xdp
from dataplane.map_config import RuntimeConfig, TunnelEntry
from dataplane.match.adapter import MatchRule
from testbed.bench import rules
from testbed.bench.common import Profile, Table, Value
from testbed.bench.programs import Harness, harness_text

log = logging.getLogger(__name__)

XDP_DROP, XDP_PASS = 1, 2


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    swaps: tuple[tuple[str, str], ...]  # (statement of the source, what replaces it)


# The ACL's search and its mark (match.h, tg_acl_slot; a flow cache hit takes neither).
_ACL_MARK = "reader = tg_read_begin(TG_HOOK_XDP);\n\tslot = tg_match(TG_TABLE_ACL, s, &unmatchable);"

VARIANTS = (
    Variant("whole", "the whole program", ()),
    Variant("no_event", "without the policy event",
            (("tg_policy_event(ctx, cfg, &s->p, rule, reason, s->vni, s->meta_flags & TG_META_F_DECAPPED);",
              ""),)),
    Variant("no_mark", "without the search's mark (match_readers)",
            ((_ACL_MARK, _ACL_MARK.replace("tg_read_begin(TG_HOOK_XDP)", "0")),)),
    Variant("no_judge", "the judge stage returning at once",
            (("reason = tg_judge(ctx, cfg, s);", "reason = TG_REASON_DROP_DENIED;"),)),
    Variant("no_stage", "the entry dropping right after the parse",
            (("xdp_stages.call(ctx, TG_STAGE_JUDGE);\n\treason = TG_REASON_DROP_DEFAULT;",
              "reason = TG_REASON_DROP_DENIED;"),)),
)


_ALLOWED = "reason = TG_REASON_PASS_ALLOWED;"
# The full pipeline's packet is allowed: variants that cut the judge short allow it too.
FULL_VARIANTS = (
    Variant("whole", "the whole program", ()),
    Variant("no_counter", "without the tunnel's counter",
            (("tg_count(tunnel_counters.lookup(&counter), outer_bytes);", ""),)),
    Variant("no_tunnels", "without the tunnels lookup (every VNI terminated, counter 0)",
            (("struct tg_tunnel *tun = tg_tunnel_find(ti->vni);",
              "struct tg_tunnel every = {0, TG_TUNNEL_F_VXLAN | TG_TUNNEL_F_GENEVE, 0}, *tun = &every;"),)),
    Variant("no_next", "without next_program's (empty) tail call", (("next_program.call(ctx, 0);", ""),)),
    Variant("no_mark", "without the search's mark (match_readers)",
            ((_ACL_MARK, _ACL_MARK.replace("tg_read_begin(TG_HOOK_XDP)", "0")),)),
    Variant("no_acl", "the judge without the ACL's search",
            (("reason = tg_acl(s, cfg, bytes, &rule);", f"{_ALLOWED}\n\t\trule = 0;"),)),
    Variant("no_judge", "the judge stage returning at once",
            (("reason = tg_judge(ctx, cfg, s);", _ALLOWED),)),
    Variant("no_stage", "the entry passing right after the decap",
            (("xdp_stages.call(ctx, TG_STAGE_JUDGE);\n\treason = TG_REASON_DROP_DEFAULT;", _ALLOWED),)),
)


def variant_text(v: Variant) -> str:
    text = harness_text()
    for old, new in v.swaps:
        if text.count(old) != 1:
            raise RuntimeError(f"the per-packet profile's variant {v.key!r} expects `{old}` once in the data "
                               "plane source: update testbed/bench/cost_profile.py to the source")
        text = text.replace(old, new)
    return text


def measure(profile: Profile, rulesets: dict[int, list[rules.RuleSpec]], packet: bytes, if_mac: bytes,
            floor_fd: int) -> Table:
    """The profile table: rows are parts of the program, columns the two ACL sizes."""
    sizes = (min(rulesets), max(n for n in rulesets if n <= 1_000))
    harnesses = {v.key: Harness(text=variant_text(v)) for v in VARIANTS}
    try:
        raw: dict[tuple[str, int], list[float]] = {}
        floor: dict[int, list[float]] = {}
        for n in sizes:
            for h in harnesses.values():
                h.dp.configure(RuntimeConfig(), if_mac=if_mac)
                h.dp.acl.replace([r.match_rule() for r in rulesets[n]])
            for key, h in harnesses.items():
                if run_xdp(h.ingress_fd, packet).action != XDP_DROP:
                    raise RuntimeError(f"per-packet profile: variant {key} does not drop the probe")
            for _ in range(profile.runs):
                floor.setdefault(n, []).append(run_xdp(floor_fd, packet, profile.testrun_repeat).duration_ns)
                for key, h in harnesses.items():
                    ns = run_xdp(h.ingress_fd, packet, profile.testrun_repeat).duration_ns
                    raw.setdefault((key, n), []).append(ns)
            log.info("per-packet profile measured", extra={"rules": n})
    finally:
        for h in harnesses.values():
            h.close()
    return _table(sizes, raw, floor, profile)


def _table(sizes: tuple[int, int], raw: dict[tuple[str, int], list[float]], floor: dict[int, list[float]],
           profile: Profile) -> Table:
    def v(key: str, n: int) -> Value:
        return Value.of(raw[(key, n)], "ns")

    t = Table(f"Where the ns of the ACL probe go: the program with parts taken out, plain entry, median "
              f"[min–max] of {profile.runs} runs (differences per run)",
              ["part", *[f"{n:,} rule{'s' if n != 1 else ''}" for n in sizes]])
    whole, floors = [v("whole", n) for n in sizes], [Value.of(floor[n], "ns") for n in sizes]
    event = [w.minus(v("no_event", n)) for w, n in zip(whole, sizes, strict=True)]
    stage = [w.minus(v("no_judge", n)) for w, n in zip(whole, sizes, strict=True)]
    rows: list[tuple[str, list[Value]]] = [
        ("the whole program", whole),
        ("floor: `return XDP_PASS`", floors),
        ("parse, scratch and exit (the entry without the tail call, less the floor)",
         [v("no_stage", n).minus(f) for n, f in zip(sizes, floors, strict=True)]),
        ("stage hand-over: tail call, judge set-up",
         [v("no_judge", n).minus(v("no_stage", n)) for n in sizes]),
        ("the search's mark (an atomic add: none on a flow cache hit)",
         [w.minus(v("no_mark", n)) for w, n in zip(whole, sizes, strict=True)]),
        ("the policy event (rate limited)", event),
        ("the ACL's verdict (a flow cache hit) and the rest",
         [j.minus(e) for j, e in zip(stage, event, strict=True)]),
    ]
    for label, values in rows:
        t.add(label, *values)
    return t


@dataclass(frozen=True)
class FullSetup:
    """What the full pipeline's harnesses hold (testbed.bench.cost builds it)."""

    acl: list[MatchRule]
    classifiers: list[MatchRule]
    vni: int
    packet: bytes  # VxLAN around the allowed inner flow
    label: str  # its column


def measure_full(profile: Profile, setup: FullSetup, if_mac: bytes, floor_fd: int) -> Table:
    """The full pipeline's profile table: rows are parts of the program."""
    harnesses: dict[str, Harness] = {}
    try:
        for v in FULL_VARIANTS:
            h = harnesses[v.key] = Harness(text=variant_text(v))
            h.dp.configure(RuntimeConfig(), if_mac=if_mac)
            h.dp.maps.put_tunnel(TunnelEntry(vni=setup.vni))
            h.dp.acl.replace(setup.acl)
            h.dp.classifiers.replace(setup.classifiers)
            if run_xdp(h.restoring_fd, setup.packet).action != XDP_PASS:
                raise RuntimeError(f"per-packet profile: variant {v.key} does not pass the full pipeline's "
                                   "packet")
        raw: dict[str, list[float]] = {}
        floor: list[float] = []
        base = harnesses["whole"]
        reps = profile.testrun_repeat
        for _ in range(profile.runs):
            f = run_xdp(floor_fd, setup.packet, reps).duration_ns
            overhead = run_xdp(base.restoring_noop_fd, setup.packet, reps).duration_ns - f
            floor.append(f)
            for key, h in harnesses.items():
                ns = run_xdp(h.restoring_fd, setup.packet, reps).duration_ns
                raw.setdefault(key, []).append(ns - overhead)
        log.info("full pipeline profile measured")
    finally:
        for h in harnesses.values():
            h.close()
    return _full_table(setup.label, raw, floor, profile)


def _full_table(label: str, raw: dict[str, list[float]], floor: list[float], profile: Profile) -> Table:
    def v(key: str) -> Value:
        return Value.of(raw[key], "ns")

    whole = v("whole")
    t = Table(f"Where the ns of the full pipeline go: the program with parts taken out, restoring entry net "
              f"of the harness, median [min–max] of {profile.runs} runs (differences per run)",
              ["part", label])
    rows: list[tuple[str, Value]] = [
        ("the whole program", whole),
        ("floor: `return XDP_PASS`", Value.of(floor, "ns")),
        ("parse, decap and exit (the entry passing right after the decap, less the floor)",
         v("no_stage").minus(Value.of(floor, "ns"))),
        ("… of which the tunnels lookup (the VNI's buckets)", whole.minus(v("no_tunnels"))),
        ("… of which the tunnel's counter", whole.minus(v("no_counter"))),
        ("… of which next_program's empty tail call", whole.minus(v("no_next"))),
        ("stage hand-over: tail call, judge set-up", v("no_judge").minus(v("no_stage"))),
        ("the search's mark (an atomic add: none on a flow cache hit)", whole.minus(v("no_mark"))),
        ("the ACL: a flow cache hit (the generation twice, the 24-byte key's lookup, the rule record)",
         whole.minus(v("no_acl"))),
        ("the rest of the judge: fragment and conntrack checks, rule counter, policy event check"
         + ("" if _meta_off() else ", classifiers"), v("no_acl").minus(v("no_judge"))),
    ]
    for name, value in rows:
        t.add(name, value)
    return t


def _meta_off() -> bool:
    from dataplane.kernel.features import build_cflags

    return "-DTG_NO_XDP_META" in build_cflags()
