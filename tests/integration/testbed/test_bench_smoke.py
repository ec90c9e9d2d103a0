"""The benchmark suite's smoke run: `python -m testbed.bench --quick` end to end.

Not a performance test: it checks that one quick run produces a report with every section and
numbers in each, its plots and raw results, and leaves nothing behind (namespaces, senders,
xdp-filter pins). Numbers are whatever this machine gives.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.bench import runner

# Not a time limit on the benchmarks (they are not timed tests): a hang guard, generous enough
# for a loaded CI machine (about a minute alone on 2 CPUs).
QUICK_BUDGET_S = 420
CLEANUP_GRACE_S = 60  # for the suite's SIGTERM cleanup past the guard
pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow,
              pytest.mark.timeout(QUICK_BUDGET_S + CLEANUP_GRACE_S + 60)]

REPO_ROOT = Path(__file__).resolve().parents[3]
SECTIONS = ("Per-packet cost", "Drop rate", "Decapsulation throughput", "Control plane", "Fleet mode",
            "Import")
# a table cell holding a measured number with its unit
NUMBER = re.compile(r"\|\s*[\d.,]+\s*(?:ns|µs|ms|s|Mpps|kpps|pps|x|rules/s)(?:\s*\[[^\]]*\])?\s*\|")
XDP_FILTER_PINS = Path("/sys/fs/bpf/xdp-filter")


def _stray_processes(leases: Path) -> list[str]:
    """Processes of the run still running after it ended (senders: trafgen, xdpgen): every process
    the run started inherits its private lease directory in the environment, so other runs'
    processes on the same machine are not counted."""
    mark = f"TIDEGATE_TESTBED_LEASES={leases}".encode() + b"\0"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes() + b"\0"
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if mark in environ:
            found.append(f"{pid}: {cmdline}")
    return found


def _leases_left(leases: Path) -> list[str]:
    """What the run registered for cleanup and never removed (namespaces, pin roots, senders, ...)."""
    return [lease.read_text() for owner in leases.glob("*") for lease in owner.iterdir()]


def _run_quick(out: Path, leases: Path) -> subprocess.CompletedProcess[str]:
    """The quick run, its cleanup leases (testbed.cleanup) in a directory of its own; past the hang
    guard it gets SIGTERM, on which the suite removes its namespaces, senders and pins (a SIGKILL
    would leave them behind), and the test fails."""
    cmd = [sys.executable, "-m", "testbed.bench", "--quick", "--out", str(out)]
    env = {**os.environ, "TIDEGATE_TESTBED_LEASES": str(leases)}
    with subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as p:
        try:
            stdout, stderr = p.communicate(timeout=QUICK_BUDGET_S)
        except subprocess.TimeoutExpired:
            p.terminate()
            try:
                _, stderr = p.communicate(timeout=CLEANUP_GRACE_S)
            except subprocess.TimeoutExpired:
                p.kill()
                _, stderr = p.communicate()
            pytest.fail(f"the quick run hung for over {QUICK_BUDGET_S} s; stopped it: {stderr[-2000:]}")
    return subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr)


def _sections(report: str) -> dict[str, str]:
    parts = re.split(r"^## ", report, flags=re.M)
    return {part.split("\n", 1)[0]: part for part in parts[1:]}


def test_quick_run_reports_every_benchmark_with_numbers(bpf_available, tmp_path):
    pins_before = XDP_FILTER_PINS.exists()
    leases = tmp_path / "leases"

    proc = _run_quick(tmp_path, leases)

    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "BENCHMARKS.md").read_text()
    sections = _sections(report)
    assert "Targets" in sections
    for title in SECTIONS:
        body = next((b for head, b in sections.items() if title in head), None)
        assert body is not None, f"no section for {title!r} in the report"
        assert NUMBER.search(body), f"section {title!r} has no measured number"
        assert "the benchmark stopped" not in body, body
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report):
        assert (tmp_path / image).stat().st_size > 0, image
    raw = json.loads((tmp_path / "results.json").read_text())
    assert [s["name"] for s in raw["sections"]] == list(runner.NAMES)  # every benchmark, in order
    assert "Verifier budget" in report and "`tg_xdp_ingress`" in report

    # Scoped to this run (other runs may share the machine): what it leased and what it started.
    assert leases.exists(), "the run leased nothing: the check below would prove nothing"
    assert not _leases_left(leases), f"the benchmarks left these behind: {_leases_left(leases)}"
    assert not _stray_processes(leases), "the benchmarks left a sender running"
    assert XDP_FILTER_PINS.exists() == pins_before, "xdp-filter's pins were left behind"
