"""`make demo` (python -m testbed.demo) on this machine, as an operator runs it: it exits 0 only
when all its traffic behaved as its policy says, and it leaves no namespace, pin or process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.netns import NETNS_DIR
from testbed.orphans import BPFFS

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
DEMO_TIMEOUT = 300.0


def machine_state() -> tuple[set[str], set[str]]:
    """The namespaces and the bpffs entries that exist now."""
    names = set(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else set()
    return names, set(os.listdir(BPFFS))


@pytest.mark.parametrize("args", [[], ["--dataplane-only"]], ids=["daemon-and-cli", "dataplane-only"])
def test_the_demo_passes_and_leaves_nothing_behind(args: list[str]) -> None:
    before = machine_state()
    done = subprocess.run([sys.executable, "-m", "testbed.demo", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=DEMO_TIMEOUT, check=False)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    names, pins = machine_state()
    assert names <= before[0], f"namespaces left behind: {sorted(names - before[0])}"
    assert pins <= before[1], f"bpffs entries left behind: {sorted(pins - before[1])}"
