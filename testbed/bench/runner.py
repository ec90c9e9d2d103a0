"""`python -m testbed.bench [--quick] [--only NAME ...] [--out DIR]`: every benchmark, one report.

A full run (`make bench`) writes BENCHMARKS.md at the repository root, its plots under
docs/bench/ and the raw samples under bench-out/. Any other run (--quick, --only) writes the
same files under bench-out/<profile>/ unless --out says where, so the committed report only
ever comes from a complete full run. Benchmarks print what they measured and never fail a
build: a benchmark that cannot run here says why in the report.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType

from testbed import cleanup, orphans
from testbed.bench import budget, control_plane, cost, decap, drop, fleet, migrate, report
from testbed.bench.common import Profile, Section

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS: tuple[ModuleType, ...] = (budget, cost, drop, decap, control_plane, fleet, migrate)
NAMES = tuple(m.NAME for m in BENCHMARKS)
PLOTS_SUBDIR = Path("docs/bench")
REPORT_NAME = "BENCHMARKS.md"
BENCH_OUT = REPO_ROOT / "bench-out"

log = logging.getLogger("testbed.bench")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m testbed.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one repetition (a smoke run, ~1 min)")
    p.add_argument(
        "--only",
        action="append",
        choices=NAMES,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(NAMES)}",
    )
    p.add_argument("--out", type=Path, help=f"write {REPORT_NAME}, {PLOTS_SUBDIR}/ and results.json here")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p.parse_args(argv)


def _paths(args: argparse.Namespace, profile: Profile) -> tuple[Path, Path, Path]:
    """(report, plot directory, raw results)."""
    if args.out is not None:
        out = args.out.resolve()
        return out / REPORT_NAME, out / PLOTS_SUBDIR, out / "results.json"
    if not args.quick and not args.only:
        return REPO_ROOT / REPORT_NAME, REPO_ROOT / PLOTS_SUBDIR, BENCH_OUT / "results-full.json"
    tag = profile.name + ("-" + "-".join(args.only) if args.only else "")
    out = BENCH_OUT / tag
    return out / REPORT_NAME, out / PLOTS_SUBDIR, out / "results.json"


def _run_one(module: ModuleType, profile: Profile) -> Section:
    print(f"== {module.NAME}: {module.TITLE}", flush=True)
    started = time.monotonic()
    try:
        section = module.run(profile)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - the report says what failed; the others still run
        traceback.print_exc()
        section = Section(
            module.NAME,
            module.TITLE,
            method=module.__doc__ or "",
            failures=[f"the benchmark stopped with {type(exc).__name__}: {exc}"],
        )
    section.seconds = time.monotonic() - started
    for line in report.section_md(0, section, None)[2:]:
        print(line)
    return section


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if os.geteuid() != 0:
        print("testbed.bench: needs root (namespaces, BPF programs); run `sudo make bench`", file=sys.stderr)
        return 2
    profile = Profile.quick() if args.quick else Profile.full()
    cleanup.install()  # SIGTERM/SIGHUP unwind through every benchmark's cleanup
    orphans.sweep()  # what killed runs left would share the CPUs and the names
    command = "python -m testbed.bench" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    info = report.RunInfo(
        profile.name, "make bench" if not (args.quick or args.only or args.out) else command
    )
    info.record_start()
    started = time.monotonic()
    selected = [m for m in BENCHMARKS if not args.only or m.NAME in args.only]
    try:
        sections = [_run_one(m, profile) for m in selected]
    except cleanup.Terminated as exc:
        print(f"testbed.bench: {exc}: stopped, everything removed", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("testbed.bench: interrupted, everything removed", file=sys.stderr)
        return 130
    info.seconds = time.monotonic() - started
    info.load_after = info.loadavg()
    report_path, plot_dir, raw = _paths(args, profile)
    report.write(sections, info, report_path, plot_dir, raw)
    print(f"report: {report_path}\nplots: {plot_dir}\nraw samples: {raw}")
    return 0
