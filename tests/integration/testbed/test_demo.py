"""`make demo` (python -m testbed.demo) on this machine, as an operator runs it: it exits 0 only
when all its traffic behaved as its policy says, and it leaves nothing of its own behind.

Only the demo's own things are looked at (its namespaces, named in its log, and its leases in
testbed.cleanup), so another run sharing the machine cannot fail this test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import cleanup
from testbed.netns import NETNS_DIR

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
DEMO_TIMEOUT = 300.0
# testbed.topology / chain_topology log the namespaces they build, in one line
BUILT = re.compile(r"building (?:chain )?topology in namespaces ((?:\S+ ?)+)$", re.MULTILINE)


@pytest.mark.parametrize("args", [[], ["--dataplane-only"]], ids=["daemon-and-cli", "dataplane-only"])
def test_the_demo_passes_and_leaves_nothing_behind(args: list[str]) -> None:
    demo = subprocess.Popen([sys.executable, "-m", "testbed.demo", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    started = cleanup.process_start_time(demo.pid)  # the fork's: the same after exec
    try:
        out, _ = demo.communicate(timeout=DEMO_TIMEOUT)
    finally:
        if demo.poll() is None:
            demo.terminate()  # the demo tears down on SIGTERM
            demo.communicate(timeout=DEMO_TIMEOUT)
    assert demo.returncode == 0, f"exit {demo.returncode}\n{out[-6000:]}"

    built = BUILT.search(out)
    assert built, f"the demo did not log its namespaces:\n{out[-2000:]}"
    names = built.group(1).split()
    left = [n for n in names if os.path.exists(os.path.join(NETNS_DIR, n))]
    assert not left, f"namespaces left behind: {left}"
    assert started is not None
    leases = cleanup.owner_dir(demo.pid, started)
    assert not leases.exists(), f"not undone: {sorted(p.read_text() for p in leases.iterdir())}"
