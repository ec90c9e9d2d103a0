"""Where the per-packet nanoseconds go: the data plane built with parts taken out, measured by the
kernel (BPF_PROG_TEST_RUN) on the ACL probe (denied by its rule, judged last) at two ACL sizes.

Each variant is the benchmark harness's source (testbed.bench.programs) with one statement
replaced by what a build without that part does; all of them drop the probe, through the plain
entry, in the same repetitions as the whole program. Differences, per repetition, attribute the
cost: the parse (the entry dropping right after it, less the floor), the stage hand-over (the
tail call to the judge stage and its set-up, the search's mark among them), the policy event of a
denied packet (rate limited, as in a flood), and what is left: the search and the verdict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dataplane.kernel.testrun import run_xdp
from dataplane.map_config import RuntimeConfig
from testbed.bench import rules
from testbed.bench.common import Profile, Table, Value
from testbed.bench.programs import Harness, harness_text

log = logging.getLogger(__name__)

XDP_DROP = 1


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    swaps: tuple[tuple[str, str], ...]  # (statement of the source, what replaces it)


VARIANTS = (
    Variant("whole", "the whole program", ()),
    Variant("no_event", "without the policy event",
            (("tg_policy_event(ctx, cfg, &s->p, rule, reason, s->vni, s->meta_flags & TG_META_F_DECAPPED);",
              ""),)),
    Variant("no_mark", "without the search's mark (match_readers)",
            (("reader = tg_read_begin(TG_HOOK_XDP);", "reader = 0;"),)),
    Variant("no_judge", "the judge stage returning at once",
            (("reason = tg_judge(ctx, cfg, s);", "reason = TG_REASON_DROP_DENIED;"),)),
    Variant("no_stage", "the entry dropping right after the parse",
            (("xdp_stages.call(ctx, TG_STAGE_JUDGE);\n\treason = TG_REASON_DROP_DEFAULT;",
              "reason = TG_REASON_DROP_DENIED;"),)),
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
        ("stage hand-over: tail call, judge set-up, the search's mark",
         [v("no_judge", n).minus(v("no_stage", n)) for n in sizes]),
        ("… of which the search's mark (an atomic add)",
         [w.minus(v("no_mark", n)) for w, n in zip(whole, sizes, strict=True)]),
        ("the policy event (rate limited)", event),
        ("the search and the verdict (the rest)", [j.minus(e) for j, e in zip(stage, event, strict=True)]),
    ]
    for label, values in rows:
        t.add(label, *values)
    return t
