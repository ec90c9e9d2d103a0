"""One daemon per state directory: an exclusive flock(2) on <state_dir>/daemon.lock.

`serve` takes it before anything else (the namespace, the kernel, the socket) and holds it for
the life of the process; the kernel releases it however the process ends, SIGKILL included, so
a crashed daemon never blocks the next one. The file holds the holder's pid, for the message a
second daemon gives, and is never removed: a daemon that removed it on exit would let the next
two lock two different files.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_FILE = "daemon.lock"
LOCK_MODE = 0o600
STATE_DIR_MODE = 0o700


class AlreadyRunning(RuntimeError):
    """Another daemon holds the state directory's lock."""


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None  # empty: the holder has not written it yet


def acquire(state_dir: Path) -> int:
    """The open, locked lock file's fd (keep it open to keep the lock); AlreadyRunning naming
    the holder's pid when another process holds it."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=STATE_DIR_MODE)
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, LOCK_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        pid = _holder(fd)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        who = f"the daemon with pid {pid}" if pid else "another daemon"
        raise AlreadyRunning(f"state_dir {state_dir}: {who} is running with it (it holds {path}); stop it "
                             "first, or give this daemon a state_dir, listen.unix socket and (if set) "
                             "metrics.listen of its own") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
