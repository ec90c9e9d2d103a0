"""Tables, plots and target verdicts of the control-plane benchmark (testbed.bench.control_plane,
testbed.bench.control_classbench)."""

from __future__ import annotations

import statistics
from typing import Protocol

from testbed.bench import control_profile, scrape
from testbed.bench.common import Plot, Profile, Section, Series, Table, Target, Value, fmt_value
from testbed.bench.control_classbench import Results

TARGET_APPLY_SIZE, TARGET_APPLY_S = 100_000, 1.0
TARGET_P99_MS = 5.0
TARGET_UPDATE_BASES = (10_000, 100_000)
TARGET_CLASSBENCH_SIZE, TARGET_CLASSBENCH_S, TARGET_RSS_MIB = 10_000, 1.0, 500.0
TARGET_RESTART_SIZE, TARGET_RESTART_S = 100_000, 2.0
TARGET_ATTACH_S = 0.5
BASELINE_APPLY = "iptables-restore"
FASTEST_BASELINE = "iptables-legacy-restore"
BASELINE_UPDATE = "nft add rule"
TIDEGATE_APPLY = "Tidegate ApplyPolicy (gRPC)"
TIDEGATE_APPLY_PACKED = "Tidegate ApplyPolicy, packed columns (gRPC)"
TIDEGATE_ADD = "Tidegate AddAclRule (gRPC)"
TIDEGATE_DELETE = "Tidegate DeleteAclRule (gRPC)"
KILL_RESTART = "restart after SIGKILL"


class Bench(Protocol):
    """What testbed.bench.control_plane measured (its Bench), as the report reads it."""

    section: Section
    profile: Profile
    apply: dict[tuple[str, int], list[float]]    # (how, rules) -> seconds per run
    updates: dict[int, dict[str, list[float]]]   # base rules -> how -> seconds per single update
    ready: dict[str, list[float]]                # start kind -> seconds to SERVING
    attach: dict[str, list[float]]               # first / second interface -> seconds to attach
    rss: dict[str, dict[str, float]]             # moment -> VmRSS/VmHWM in MiB
    classbench: Results | None
    steps: tuple[control_profile.Profiled, control_profile.Profiled] | None
    scrapes: list[scrape.Scrape]                 # metrics scrapes of the largest policy


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def report(bench: Bench) -> None:
    s = bench.section
    s.tables += [_apply_table(bench), *_update_tables(bench), _daemon_table(bench)]
    if bench.scrapes:
        s.tables.append(_scrape_table(bench))
    if bench.classbench is not None and bench.classbench.sets:
        s.tables += [_classbench_table(bench.classbench), _memory_table(bench.classbench)]
    if bench.steps is not None:
        s.tables += [_profile_table(p) for p in bench.steps]
    _plots(bench)
    _targets(bench)


def _ratio(samples: list[float], base: list[float] | None) -> Value | None:
    return Value.of(samples, "s").ratio_to(Value.of(base, "s")) if base else None


def _apply_table(bench: Bench) -> Table:
    p = bench.profile
    t = Table(
        f"Applying N rules at once onto an empty rule set, {p.control_runs} runs; median [min–max]",
        ["rules", "how", "time", f"× {BASELINE_APPLY}", f"× {FASTEST_BASELINE}", "rules/s"],
    )
    for n in p.control_sizes:
        for (label, size), samples in bench.apply.items():
            if size == n:
                t.add(
                    f"{n:,}",
                    label,
                    Value.of(samples, "s"),
                    _ratio(samples, bench.apply.get((BASELINE_APPLY, n))),
                    _ratio(samples, bench.apply.get((FASTEST_BASELINE, n))),
                    Value.of([n / x for x in samples], "rules/s"),
                )
    return t


def _update_tables(bench: Bench) -> list[Table]:
    p = bench.profile
    out = []
    for base_size, updates in sorted(bench.updates.items()):
        t = Table(
            f"One rule added, then deleted, on top of {base_size:,} rules ({p.update_samples} samples asked "
            f"for; at most {p.update_budget_s:g} s of calls each)",
            ["how", "samples", "p50", "p99", "max", f"p50 × {BASELINE_UPDATE}"],
        )
        base = updates.get(BASELINE_UPDATE)
        for label, samples in updates.items():
            if not samples:
                continue
            p50 = statistics.median(samples)
            t.add(
                label,
                len(samples),
                Value.of([1e3 * p50], "ms"),
                Value.of([1e3 * percentile(samples, 0.99)], "ms"),
                Value.of([1e3 * max(samples)], "ms"),
                Value.of([p50 / statistics.median(base)], "x") if base else None,
            )
        out.append(t)
    return out


def _daemon_table(bench: Bench) -> Table:
    t = Table("The daemon", ["what", "value"])
    for label, samples in bench.ready.items():
        t.add(f"start to SERVING, {label}", Value.of(samples, "s"))
    for label, samples in bench.attach.items():
        t.add(f"AttachInterface, {label}", Value.of(samples, "s"))
    for label, mem in bench.rss.items():
        t.add(f"memory, {label}", f"VmRSS {mem['VmRSS']:,.0f} MiB, VmHWM {mem['VmHWM']:,.0f} MiB")
    return t


def _scrape_table(bench: Bench) -> Table:
    n = max(bench.profile.control_sizes)
    t = Table(
        f"A Prometheus scrape of /metrics with {n:,} rules applied, by the rules marked "
        f"`metrics: true` (median of {scrape.SCRAPES}): series are bounded by what is chosen, not by "
        "the policy",
        ["per-rule series for", "series", "of them per rule", "size", "scrape time"],
    )
    for s in bench.scrapes:
        size = f"{s.size / 1024:,.0f} KiB"
        t.add(s.marked, f"{s.samples:,}", f"{s.per_rule:,}", size, Value.of(s.seconds, "s"))
    return t


def _classbench_table(results: Results) -> Table:
    t = Table(
        "ClassBench sets applied onto an empty rule set (actions alternate deny/allow); median [min–max]",
        ["set", "rules", "how", "time", f"× {FASTEST_BASELINE}", "rules/s"],
    )
    for r in results.sets:
        name = f"{r.seed}_{r.size}"
        base = r.apply.get(FASTEST_BASELINE, r.apply.get(FASTEST_BASELINE.replace("iptables", "ip6tables")))
        if r.refused is not None:
            t.add(name, r.rules, "Tidegate ApplyPolicy (gRPC)", f"not applied: {r.refused}", None, None)
        for label, samples in r.apply.items():
            t.add(
                name,
                r.rules,
                label,
                Value.of(samples, "s"),
                _ratio(samples, base),
                Value.of([r.rules / x for x in samples], "rules/s"),
            )
    return t


def _memory_table(results: Results) -> Table:
    t = Table(
        "The daemon after each ClassBench set (a fresh daemon per set)",
        ["set", "rules", "VmRSS", "VmHWM", "BPF map memory (memlock)"],
    )
    for r in results.sets:
        if r.memory:
            t.add(
                f"{r.seed}_{r.size}",
                r.rules,
                Value.of([r.memory["VmRSS"]], "MiB"),
                Value.of([r.memory["VmHWM"]], "MiB"),
                Value.of([r.memory["maps"]], "MiB"),
            )
    return t


def _profile_table(p: control_profile.Profiled) -> Table:
    title = (
        f"Where the time goes: {p.what}, in process without gRPC (cProfile self time with the "
        "collector off, scaled to the unprofiled call; the collector timed on its own)"
    )
    t = Table(title, ["where", "time", "share"])
    for name, seconds, share in p.shares():
        t.add(name, Value.of([seconds], "s"), f"{share:.0%}")
    t.add("total, without the profiler", Value.of([p.seconds], "s"), "")
    t.add("total, under cProfile (collector off)", Value.of([p.profiled_seconds], "s"), "")
    for label, count in p.counts.items():
        t.add(label, count, "")
    return t


def _plots(bench: Bench) -> None:
    p = bench.profile
    labels = sorted({label for label, _ in bench.apply})
    series = [
        Series(
            label, list(p.control_sizes), [Value.of(bench.apply[(label, n)], "s") for n in p.control_sizes]
        )
        for label in labels
        if all((label, n) in bench.apply for n in p.control_sizes)
    ]
    bench.section.plots.append(
        Plot(
            "control_apply.png",
            "line",
            "Time to apply N rules at once",
            "rules",
            "seconds",
            series,
            logx=True,
            logy=True,
            marks=[(f"target at {TARGET_APPLY_SIZE:,}", TARGET_APPLY_S, "y")],
        )
    )
    largest = max(bench.updates, default=None)
    if largest is not None:
        cdf = [
            Series(label, [], [Value.of([1e3 * x for x in v], "ms")])
            for label, v in bench.updates[largest].items()
            if v
        ]
        bench.section.plots.append(
            Plot(
                "control_update.png",
                "cdf",
                f"Latency of one rule added or deleted on top of {largest:,}",
                "milliseconds",
                "fraction of updates",
                cdf,
                logx=True,
                marks=[("target p99", TARGET_P99_MS, "x")],
            )
        )


def _targets(bench: Bench) -> None:
    _apply_target(bench)
    _update_targets(bench)
    _restart_target(bench)
    _attach_target(bench)
    if bench.classbench is not None:
        _classbench_targets(bench, bench.classbench)


def _apply_target(bench: Bench) -> None:
    s, p = bench.section, bench.profile
    goal = (
        f"{TARGET_APPLY_SIZE:,} rules through gRPC in < {TARGET_APPLY_S:g} s and faster than "
        f"{FASTEST_BASELINE} (same rules, same run)"
    )
    samples = bench.apply.get((TIDEGATE_APPLY, TARGET_APPLY_SIZE))
    if not samples:
        s.targets.append(
            Target(
                "Apply 100k rules",
                goal,
                f"not measured in this profile: the largest size here is {max(p.control_sizes):,}",
                None,
            )
        )
        return
    v = Value.of(samples, "s")
    legacy = bench.apply.get((FASTEST_BASELINE, TARGET_APPLY_SIZE))
    faster = legacy is None or v.median < statistics.median(legacy)
    measured = fmt_value(v) + (f" ({FASTEST_BASELINE}: {fmt_value(Value.of(legacy, 's'))})" if legacy else "")
    met = v.median < TARGET_APPLY_S and faster
    why = "" if met or bench.steps is None else control_profile.describe(bench.steps[0], v.median)
    s.targets.append(Target("Apply 100k rules", goal, measured, met, why))


def _update_targets(bench: Bench) -> None:
    s = bench.section
    for base in TARGET_UPDATE_BASES:
        goal = f"AddAclRule and DeleteAclRule p99 < {TARGET_P99_MS:g} ms on top of {base:,} rules"
        updates = bench.updates.get(base)
        if not updates:
            s.targets.append(
                Target(f"Single updates on {base:,}", goal, "not measured in this profile", None)
            )
            continue
        parts, met, add_p50 = [], True, 0.0
        for label in (TIDEGATE_ADD, TIDEGATE_DELETE):
            samples = updates.get(label, [])
            if not samples:
                continue
            p99 = 1e3 * percentile(samples, 0.99)
            met &= p99 < TARGET_P99_MS
            if label == TIDEGATE_ADD:
                add_p50 = statistics.median(samples)
            parts.append(
                f"{label.split()[1]} p99 {p99:,.2f} ms, p50 {1e3 * statistics.median(samples):,.2f} ms "
                f"({len(samples)} samples)"
            )
        why = "" if met or bench.steps is None else control_profile.describe(bench.steps[1], add_p50)
        s.targets.append(Target(f"Single updates on {base:,}", goal, "; ".join(parts), met, why))


def _attach_target(bench: Bench) -> None:
    goal = f"AttachInterface of a second interface (the build shared, not compiled) < {TARGET_ATTACH_S:g} s"
    samples = next((v for k, v in bench.attach.items() if k.startswith("second")), None)
    if not samples:
        bench.section.targets.append(Target("Second interface attach", goal, "not measured", None))
        return
    v = Value.of(samples, "s")
    met = v.median < TARGET_ATTACH_S
    bench.section.targets.append(Target("Second interface attach", goal, fmt_value(v), met))


def _restart_target(bench: Bench) -> None:
    goal = f"SIGKILL, then restart into {TARGET_RESTART_SIZE:,} rules: SERVING in < {TARGET_RESTART_S:g} s"
    label = next(
        (k for k in bench.ready if k.startswith(KILL_RESTART) and f"{TARGET_RESTART_SIZE:,}" in k), None
    )
    if label is None:
        bench.section.targets.append(
            Target("Restart into 100k rules", goal, "not measured in this profile", None)
        )
        return
    v = Value.of(bench.ready[label], "s")
    bench.section.targets.append(
        Target("Restart into 100k rules", goal, fmt_value(v), v.median < TARGET_RESTART_S)
    )


def _classbench_targets(bench: Bench, results: Results) -> None:
    from testbed.bench.control_classbench import TIDEGATE

    sets = [r for r in results.sets if r.size == TARGET_CLASSBENCH_SIZE]
    if not sets:
        bench.section.targets.append(
            Target(
                "ClassBench 10k",
                f"every {TARGET_CLASSBENCH_SIZE:,}-rule set applied in < {TARGET_CLASSBENCH_S:g} s",
                "not measured in this profile",
                None,
            )
        )
        return
    times, memory, met_time, met_memory = [], [], True, True
    for r in sets:
        samples = r.apply.get(TIDEGATE)
        if samples is None:
            times.append(f"{r.seed}: not applied ({r.refused})")
            met_time = met_memory = False
            continue
        median = statistics.median(samples)
        met_time &= median < TARGET_CLASSBENCH_S
        times.append(f"{r.seed} {fmt_value(Value.of(samples, 's'))}")
        met_memory &= r.memory.get("VmRSS", 1e9) < TARGET_RSS_MIB
        memory.append(f"{r.seed} {r.memory.get('VmRSS', 0):,.0f} MiB")
    bench.section.targets.append(
        Target(
            "ClassBench 10k apply",
            f"every {TARGET_CLASSBENCH_SIZE:,}-rule set applied through gRPC in < {TARGET_CLASSBENCH_S:g} s",
            "; ".join(times),
            met_time,
        )
    )
    bench.section.targets.append(
        Target(
            "Daemon RSS after ClassBench 10k",
            f"VmRSS < {TARGET_RSS_MIB:g} MiB after any 10k set",
            "; ".join(memory) or "no set applied",
            met_memory,
        )
    )
