"""A run killed by SIGKILL runs no cleanup: the next run's sweep removes what it left behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import orphans
from testbed.netns import NETNS_DIR, remove_netns

REPO = Path(__file__).resolve().parents[3]
START_WAIT = 10.0

# A stand-in for a test run: a namespace with a process inside (a daemon, a sender), a pin root.
OWNER = textwrap.dedent("""
    import time
    from testbed import cleanup
    from testbed.netns import Namespace
    from testbed.topology import remove_pin_root, unique_pin_root

    ns = Namespace().create()
    ns.popen(["sleep", "600"])
    root = unique_pin_root()
    root.mkdir()
    cleanup.REGISTRY.add(f"bpffs:{root}", lambda: remove_pin_root(root))
    print(ns.name, root, flush=True)
    time.sleep(600)
""")


def _alive(pid: str) -> bool:
    """Running, not merely a zombie its (dead) parent's adopter has yet to reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _ns_pids(name: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False)
    return out.stdout.split()


class Owner:
    def __init__(self, leases: Path) -> None:
        env = {**os.environ, "TIDEGATE_TESTBED_LEASES": str(leases), "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-c", OWNER], env=env, cwd=REPO,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        assert len(line) == 2, f"the owner did not start: {line}"
        self.ns, self.pin_root = line[0], Path(line[1])

    @property
    def leftovers(self) -> list[str]:
        return [p for p in (os.path.join(NETNS_DIR, self.ns), str(self.pin_root)) if os.path.exists(p)]

    def remove(self) -> None:
        """The test's own cleanup, whatever the sweep did."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if os.path.exists(os.path.join(NETNS_DIR, self.ns)):
            for pid in _ns_pids(self.ns):
                os.kill(int(pid), signal.SIGKILL)
            remove_netns(self.ns)
        shutil.rmtree(self.pin_root, ignore_errors=True)


@pytest.fixture
def owners(bpf_available: None, tmp_path: Path) -> Iterator[list[Owner]]:
    made: list[Owner] = []
    yield made
    for owner in made:
        owner.remove()


def test_a_killed_owner_s_namespace_process_and_pins_are_swept(owners: list[Owner], tmp_path: Path) -> None:
    owners.append(killed := Owner(tmp_path))
    deadline = time.monotonic() + START_WAIT
    while not (inside := _ns_pids(killed.ns)) and time.monotonic() < deadline:
        time.sleep(0.05)  # the child enters the namespace between fork and exec
    assert inside, "the owner's process inside its namespace did not start"
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait(10)
    assert len(killed.leftovers) == 2, "SIGKILL should have left the namespace and the pin root"

    swept = orphans.sweep(tmp_path)

    assert killed.leftovers == []
    assert swept.namespaces == [killed.ns]
    assert swept.pin_roots == [str(killed.pin_root)]
    assert not any(_alive(pid) for pid in inside), "the process inside survived"
    assert list(tmp_path.iterdir()) == [], "the dead owner's leases remain"


def test_a_running_owner_is_left_alone_and_clears_its_leases_when_it_ends(owners: list[Owner],
                                                                         tmp_path: Path) -> None:
    owners.append(live := Owner(tmp_path))
    leases = list(tmp_path.iterdir())
    assert len(leases) == 1 and len(list(leases[0].iterdir())) == 2

    swept = orphans.sweep(tmp_path)

    assert swept.owners == [] and len(live.leftovers) == 2
    live.proc.send_signal(signal.SIGTERM)  # unwinds: the registry undoes both and drops the leases
    live.proc.wait(30)
    assert live.leftovers == []
    assert list(tmp_path.iterdir()) == []

