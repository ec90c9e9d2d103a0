"""What runs killed by SIGKILL left behind, removed at the start of the next run.

`testbed.cleanup` writes a lease for every live key of a process (LEASE_DIR/<pid>.<start>/).
An owner that no longer runs (no process with that pid and start time) was killed without
unwinding: its namespaces (with whatever runs inside them: daemons, senders) and its pin roots
are removed here. Owners that still run are never touched, so two runs can share the machine.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from testbed import cleanup
from testbed.netns import NETNS_DIR, remove_netns

log = logging.getLogger(__name__)

BPFFS = Path("/sys/fs/bpf")
KILL_TIMEOUT = 10.0


@dataclass
class Swept:
    """What one sweep removed (for the log and the tests)."""

    owners: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    pin_roots: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # keys with nothing to undo from outside


def _owner_gone(entry: Path) -> bool:
    pid, _, start = entry.name.partition(".")
    if not (pid.isdigit() and start.isdigit()):
        return False  # not ours: leave it
    return cleanup.process_start_time(int(pid)) != int(start)


def _kill_inside(name: str) -> None:
    """A process left inside keeps the namespace (and its links and XDP programs) alive after
    its name is gone, so everything in it is killed first."""
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                         timeout=KILL_TIMEOUT, check=False)
    for pid in out.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _undo(key: str, swept: Swept) -> None:
    kind, _, target = key.partition(":")
    if kind == "netns":
        if os.path.exists(os.path.join(NETNS_DIR, target)):
            _kill_inside(target)
            remove_netns(target)
            swept.namespaces.append(target)
    elif kind == "bpffs":
        path = Path(target)
        if path.is_relative_to(BPFFS) and path != BPFFS and path.exists():
            shutil.rmtree(path, ignore_errors=True)
            swept.pin_roots.append(target)
    else:
        swept.unknown.append(key)


def sweep(lease_dir: Path | None = None) -> Swept:
    """Undo the leases of every owner that no longer runs; returns what was removed."""
    root = lease_dir or cleanup.LEASE_DIR
    swept = Swept()
    try:
        owners = sorted(root.iterdir())
    except FileNotFoundError:
        return swept
    for owner in owners:
        if not owner.is_dir() or not _owner_gone(owner):
            continue
        swept.owners.append(owner.name)
        for lease in sorted(owner.iterdir()):
            try:
                _undo(lease.read_text(), swept)
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("sweeping %s of %s failed: %s", lease.name, owner.name, exc)
                continue
            lease.unlink(missing_ok=True)
        try:
            owner.rmdir()
        except OSError as exc:
            log.warning("leases of %s remain: %s", owner.name, exc)
    if swept.namespaces or swept.pin_roots:
        log.warning("removed what killed runs left behind: namespaces %s, pin roots %s",
                    swept.namespaces, swept.pin_roots)
    return swept
