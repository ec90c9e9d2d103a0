"""What every benchmark shares: the run profile, repeated measurements and the result model.

A benchmark returns a `Section`: tables whose cells are `Value`s (every sample kept, shown as
median [min-max]), plot specifications, notes, target verdicts and what could not be measured.
`testbed.bench.report` turns sections into BENCHMARKS.md and PNGs; nothing here prints.

Ratios are computed per repetition against a baseline measured in the same repetition (side
by side), then summarised like any other value: a ratio's spread is the spread of the pairs.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Profile:
    """How big and how long. `full()` is `make bench`; `quick()` is the smoke run of the tests."""

    name: str
    runs: int  # repetitions of each measurement
    testrun_repeat: int  # BPF_PROG_TEST_RUN repeat count per measurement
    acl_sizes: tuple[int, ...]  # per-packet cost: rules in the ACL
    drop_sizes: tuple[int, ...]  # drop rate: rules in front of the denied flow
    traffic_runs: int  # repetitions of each traffic window
    window_s: float  # traffic measured over this long...
    warmup_s: float  # ...after the generator ran this long
    control_sizes: tuple[int, ...]  # rules applied at once
    control_runs: int
    update_bases: tuple[int, ...]  # rules in place under the single-rule updates
    update_samples: int
    update_budget_s: float  # ...or as many as fit in this long (per base and call)
    fleet_nodes: tuple[int, ...] = (1, 5, 20)  # daemons following one policy in etcd
    fleet_rules: tuple[int, ...] = (10, 10_000)  # rules of each pushed policy
    fleet_runs: int = 30  # pushes per (daemons, rules) up to 1,000 rules...
    fleet_runs_large: int = 5  # ...and above
    # ClassBench sets (testbed.classbench.SIZES) measured by cost (per packet) and control (applied)
    classbench_sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    classbench_probes: int = 32  # probes drawn from each set's own rules

    @classmethod
    def full(cls) -> Profile:
        return cls(
            name="full",
            runs=5,
            testrun_repeat=1_000_000,
            acl_sizes=(1, 1_000, 10_000, 100_000),
            drop_sizes=(1, 100, 1_000, 10_000),
            traffic_runs=3,
            window_s=2.0,
            warmup_s=0.5,
            control_sizes=(1_000, 10_000, 100_000),
            control_runs=3,
            update_bases=(10_000, 100_000),
            update_samples=200,
            update_budget_s=60.0,
            classbench_sizes=(1_000, 10_000, 100_000),
        )

    @classmethod
    def quick(cls) -> Profile:
        return cls(
            name="quick",
            runs=1,
            testrun_repeat=20_000,
            acl_sizes=(1, 100, 1_000),
            drop_sizes=(1, 100),
            traffic_runs=1,
            window_s=0.4,
            warmup_s=0.2,
            control_sizes=(100, 1_000),
            control_runs=1,
            update_bases=(1_000,),
            update_samples=10,
            update_budget_s=5.0,
            fleet_nodes=(1, 2),
            fleet_rules=(10, 1_000),
            fleet_runs=3,
            fleet_runs_large=2,
            classbench_sizes=(1_000,),
            classbench_probes=8,
        )


# --- values ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    """Repeated samples of one quantity, in `unit` ("ns", "x", "pps", "s", "ms", "MiB", ...)."""

    samples: tuple[float, ...]
    unit: str

    @classmethod
    def of(cls, samples: Sequence[float], unit: str) -> Value:
        if not samples:
            raise ValueError("a Value needs at least one sample")
        return cls(tuple(float(s) for s in samples), unit)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))

    def ratio_to(self, baseline: Value) -> Value:
        """Pairwise (repetition i over repetition i) when both have as many samples, else medians."""
        if len(self.samples) == len(baseline.samples):
            pairs = zip(self.samples, baseline.samples, strict=True)
            return Value.of([a / b if b else float("nan") for a, b in pairs], "x")
        return Value.of([self.median / baseline.median if baseline.median else float("nan")], "x")

    def minus(self, other: Value) -> Value:
        """Pairwise difference (same unit)."""
        pairs = zip(self.samples, other.samples, strict=True)
        return Value.of([a - b for a, b in pairs], self.unit)


Cell = Value | str | int | float | None


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    note: str = ""

    def add(self, *cells: Cell) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))


@dataclass
class Series:
    label: str
    xs: list[Any]
    values: list[Value]


@dataclass
class Plot:
    """A PNG: "bar" (one series, xs are labels), "line" (xs numeric) or "cdf" (samples of each
    series' single value). Error bars span min..max."""

    filename: str
    kind: str
    title: str
    xlabel: str
    ylabel: str
    series: list[Series]
    logx: bool = False
    logy: bool = False
    marks: list[tuple[str, float, str]] = field(default_factory=list)  # (label, value, "x" | "y")


@dataclass
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None  # None: could not be judged here
    explanation: str = ""


@dataclass
class Section:
    name: str
    title: str
    method: str
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # what could not be measured here, and why
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def runs_meeting(v: Value, ok: Callable[[float], bool]) -> str:
    """ " (k of n runs)" when there were several runs, else ""."""
    if len(v.samples) < 2:
        return ""
    return f" ({sum(1 for x in v.samples if ok(x))} of {len(v.samples)} runs meet it)"


def repeat(runs: int, measure: Callable[[], float], unit: str) -> Value:
    return Value.of([measure() for _ in range(runs)], unit)


# --- formatting -----------------------------------------------------------------------------------

_SCALES = {
    "pps": ((1e6, "Mpps"), (1e3, "kpps"), (1, "pps")),
    "s": ((1, "s"), (1e-3, "ms"), (1e-6, "µs")),
    "ns": ((1e3, "µs"), (1, "ns")),
}


def _scaled(x: float, unit: str, ref: float) -> str:
    for factor, name in _SCALES.get(unit, ()):
        if abs(ref) >= factor or factor == _SCALES[unit][-1][0]:
            return f"{_num(x / factor)} {name}"
    if unit == "x":
        return f"{_num(x)}x"
    return f"{_num(x)} {unit}".rstrip()


def _num(x: float) -> str:
    if x != x:  # NaN
        return "n/a"
    ax = abs(x)
    if ax >= 100:
        return f"{x:,.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_value(v: Value) -> str:
    """ "median [min–max]" in one unit chosen by the median; just the value for one sample."""
    mid = _scaled(v.median, v.unit, v.median)
    if len(v.samples) == 1:
        return mid
    lo, hi = (
        _scaled(x, v.unit, v.median).rsplit(" ", 1)[0] if v.unit != "x" else _num(x) for x in (v.min, v.max)
    )
    return f"{mid} [{lo}–{hi}]"


def fmt_cell(cell: Cell) -> str:
    if cell is None:
        return "—"
    if isinstance(cell, Value):
        return fmt_value(cell)
    if isinstance(cell, int):
        return f"{cell:,}"
    if isinstance(cell, float):
        return _num(cell)
    return cell
