"""BENCHMARKS.md and its plots, from the sections the benchmarks returned.

The report says where it came from (commit, kernel, CPUs, profile, load on the machine), then
the targets with a verdict each (and, for a miss, the explanation the benchmark derived from
its own profile data), then one part per benchmark: method, tables, plots, notes and what could
not be measured here. Plots are PNGs (matplotlib, Agg) referenced by a path relative to the
report.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.bench.common import Plot, Section, Table, Value, fmt_cell

STATUS = {True: "met", False: "**missed**", None: "not judged"}


@dataclass
class RunInfo:
    profile: str
    command: str
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    commit: str = ""
    load_before: str = ""
    load_after: str = ""
    seconds: float = 0.0

    def record_start(self) -> None:
        """What the run measured: the commit, and whether the tree differed from it, at the start."""
        self.load_before = self.loadavg()
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        head = _git("rev-parse", "--short", "HEAD") or "?"
        self.commit = f"`{head}`" + (" with uncommitted changes" if dirty else "")

    @staticmethod
    def loadavg() -> str:
        try:
            return " ".join(Path("/proc/loadavg").read_text().split()[:3])
        except OSError:
            return "?"


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parents[2],
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# --- plots ----------------------------------------------------------------------------------------


def write_plots(sections: Sequence[Section], plot_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for section in sections:
        for plot in section.plots:
            if not any(s.values for s in plot.series):
                continue
            fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
            {"bar": _bar, "line": _line, "cdf": _cdf}[plot.kind](ax, plot)
            ax.set_title(plot.title)
            ax.set_xlabel(plot.xlabel)
            ax.set_ylabel(plot.ylabel)
            for label, value, axis in plot.marks:
                (ax.axvline if axis == "x" else ax.axhline)(
                    value, color="#c44e52", linestyle="--", linewidth=1, label=label
                )
            if plot.marks:
                ax.legend(fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
            fig.tight_layout()
            path = plot_dir / plot.filename
            fig.savefig(path)
            plt.close(fig)
            written[plot.filename] = path
    return written


def _errors(values: Sequence[Value]) -> list[list[float]]:
    return [[v.median - v.min for v in values], [v.max - v.median for v in values]]


def _bar(ax: Any, plot: Plot) -> None:
    s = plot.series[0]
    xs = list(range(len(s.xs)))
    ax.bar(xs, [v.median for v in s.values], yerr=_errors(s.values), capsize=3, color="#4c72b0")
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in s.xs], rotation=25, ha="right", fontsize=8)
    if plot.logy:
        ax.set_yscale("log")


def _line(ax: Any, plot: Plot) -> None:
    for s in plot.series:
        ax.errorbar(
            s.xs, [v.median for v in s.values], yerr=_errors(s.values), marker="o", capsize=3, label=s.label
        )
    if plot.logx:
        ax.set_xscale("log")
    if plot.logy:
        ax.set_yscale("log")
    ax.legend(fontsize=8)


def _cdf(ax: Any, plot: Plot) -> None:
    for s in plot.series:
        samples = sorted(s.values[0].samples)
        n = len(samples)
        ax.step(samples, [(i + 1) / n for i in range(n)], where="post", label=s.label)
    if plot.logx:
        ax.set_xscale("log")
    ax.legend(fontsize=8)


# --- markdown -------------------------------------------------------------------------------------


def table_md(t: Table) -> list[str]:
    out = [f"**{t.title}**", "", "| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
    for row in t.rows:
        out.append("| " + " | ".join(fmt_cell(c).replace("|", "\\|") for c in row) + " |")
    if t.note:
        out += ["", t.note]
    return out + [""]


def section_md(index: int, s: Section, plot_rel: str | None) -> list[str]:
    out = [f"## {index}. {s.title}", ""]
    method = s.method.strip().split("\n\n", 1)
    if len(method) > 1:
        out += ["How: " + method[1].strip(), ""]
    for t in s.tables:
        out += table_md(t)
    if plot_rel is not None:
        for p in s.plots:
            out += [f"![{p.title}]({plot_rel}/{p.filename})", ""]
    for note in s.notes:
        out += [f"- {note}"]
    if s.notes:
        out.append("")
    for target in s.targets:
        if target.met is None:
            out += [f"Target — {target.goal}: not judged here ({target.measured})."]
        else:
            out += [f"Target — {target.goal}: {STATUS[target.met]}; measured {target.measured}."]
        if target.explanation:
            out += ["", f"Why: {target.explanation}"]
        out.append("")
    for failure in s.failures:
        out += [f"- Not measured here: {failure}"]
    if s.failures:
        out.append("")
    out += [f"_({s.seconds:.0f} s)_", ""]
    return out


def markdown(sections: Sequence[Section], info: RunInfo, plot_rel: str) -> str:
    out = [
        "# Tidegate benchmarks",
        "",
        f"Generated by `{info.command}` ({info.profile} profile) on {info.started:%Y-%m-%d %H:%M} UTC, "
        f"commit {info.commit}; Linux {platform.release()}, {os.cpu_count()} CPUs ({_cpu_model()}); "
        f"the run took {info.seconds / 60:.1f} min. Load average before/after: {info.load_before} / "
        f"{info.load_after} "
        "(a shared VM: other work on it shows up as spread).",
        "",
        "Reading the tables: a cell is the median and [min–max] over the runs its table states; a ratio is "
        "computed in each run against the baseline measured in that same run, then summarised the same "
        "way. Run `make bench` to regenerate this file and the plots under "
        f"`{plot_rel}/`; `python -m testbed.bench --quick` is a one-minute smoke run.",
        "",
        "## Targets",
        "",
        "| target | goal | measured | status |",
        "|---|---|---|---|",
    ]
    for s in sections:
        for t in s.targets:
            out.append(f"| {t.name} | {t.goal} | {t.measured} | {STATUS[t.met]} |")
    out.append("")
    misses = [t for s in sections for t in s.targets if t.met is False and t.explanation]
    for t in misses:
        out += [f"- **{t.name}** missed: {t.explanation}", ""]
    for i, s in enumerate(sections, start=1):
        out += section_md(i, s, plot_rel)
    failures = [f for s in sections for f in s.failures]
    out += ["## What could not be measured here", ""]
    out += [f"- {f}" for f in failures] or ["Nothing: every benchmark ran."]
    return "\n".join(out) + "\n"


def write(sections: Sequence[Section], info: RunInfo, report: Path, plot_dir: Path, raw: Path) -> None:
    write_plots(sections, plot_dir)
    rel = os.path.relpath(plot_dir, report.parent)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(markdown(sections, info, rel))
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(
        json.dumps(
            {
                "profile": info.profile,
                "started": info.started.isoformat(),
                "sections": [s.to_dict() for s in sections],
            },
            indent=1,
            default=str,
        )
    )
