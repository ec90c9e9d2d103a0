"""Safety net that removes what the testbed created when the normal `finally` path never runs.

Context managers are the first line of cleanup; this registry is the second. Every resource
(namespace, host-side link, ...) registers an undo callback when it is created and unregisters it
when it is removed normally. Whatever is still registered is undone at interpreter exit (atexit)
and when SIGTERM or SIGHUP arrives: a background job of a non-interactive shell ignores SIGINT,
so SIGTERM is how such runs get stopped, and by default it kills Python without running
`finally` blocks or atexit.

On the first SIGTERM/SIGHUP the handler raises `Terminated` in the main thread, so every
`finally`/`__exit__` runs; it subclasses KeyboardInterrupt because pytest (and most tools) treat
that as "stop the whole run, tear down fixtures", whereas SystemExit inside a test is reported as
one failed test and the run goes on. A second signal undoes everything at once and dies.

SIGKILL runs nothing, so what outlives its process is also written down: each registered key is
a lease file under LEASE_DIR/<pid>.<start time>/ (a tmpfs, gone at reboot with the namespaces),
removed when the key is discarded. `testbed.orphans.sweep()` undoes the leases of owners that no
longer run, at the start of the next test run, demo or benchmark.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
LEASE_DIR = Path(os.environ.get("TIDEGATE_TESTBED_LEASES", "/run/tidegate-testbed"))
_STAT_STARTTIME = 21  # field 22 of /proc/<pid>/stat, counted from 0 (proc(5))


def process_start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot), None if it does not run: with the pid, this
    names one process, not whichever process reuses the number later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: count after the last ")"
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[_STAT_STARTTIME - 2])


def owner_dir(pid: int, start_time: int) -> Path:
    return LEASE_DIR / f"{pid}.{start_time}"


def lease_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class Leases:
    """The on-disk copy of one process's live keys (see the module's docstring). Best effort:
    a lease that cannot be written costs only the SIGKILL safety net, never the run."""

    def __init__(self, pid: int) -> None:
        start = process_start_time(pid)
        self.dir = owner_dir(pid, start) if start is not None else None

    def write(self, key: str) -> None:
        if self.dir is None:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / lease_name(key)).write_text(key)
        except OSError as exc:
            log.debug("no lease for %s: %s", key, exc)

    def remove(self, key: str) -> None:
        if self.dir is None:
            return
        with contextlib.suppress(OSError):
            (self.dir / lease_name(key)).unlink()

    def close(self) -> None:
        """Drop the owner's directory once nothing is leased in it."""
        if self.dir is not None:
            with contextlib.suppress(OSError):
                self.dir.rmdir()


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM/SIGHUP so that cleanup code runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signal.Signals(signum).name}")
        self.signum = signum


class Registry:
    """Undo callbacks for live resources, run in reverse creation order by `undo_all`.

    Only the process that registered a callback runs it: a forked child (multiprocessing, a
    pyroute2 helper) inherits the registry but must not delete its parent's namespaces.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()  # re-entrant: the signal handler may interrupt a holder
        self._undo: dict[str, Callable[[], None]] = {}
        self._history: list[str] = []
        self._pid = os.getpid()
        self._leases: Leases | None = None

    def _lease_book(self) -> Leases | None:
        if os.getpid() != self._pid:
            return None  # a forked child's keys are its parent's
        if self._leases is None:
            self._leases = Leases(self._pid)
        return self._leases

    def add(self, key: str, undo: Callable[[], None]) -> None:
        with self._lock:
            self._undo[key] = undo
            self._history.append(key)
            book = self._lease_book()
            if book:
                book.write(key)

    def discard(self, key: str) -> None:
        with self._lock:
            if self._undo.pop(key, None) is not None:
                book = self._lease_book()
                if book:
                    book.remove(key)

    def live(self) -> list[str]:
        with self._lock:
            return list(self._undo)

    def history(self) -> list[str]:
        """Every key ever registered by this process, live or not (for leak checks)."""
        with self._lock:
            return list(self._history)

    def undo_all(self) -> None:
        """Run every remaining undo callback, newest first; one failure does not stop the rest."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            pending = list(self._undo.items())[::-1]
            self._undo.clear()
        book = self._lease_book()
        for key, undo in pending:
            try:
                undo()
            except Exception as exc:  # noqa: BLE001 - a safety net must try everything
                log.warning("testbed cleanup of %s failed: %s", key, exc)
            else:
                if book:
                    book.remove(key)
        if book:
            book.close()


REGISTRY = Registry()
_atexit_registered = False
_signals_installed = False
_terminating = False


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _terminating
    if _terminating:  # asked twice: no more unwinding, undo now and die by the signal
        REGISTRY.undo_all()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _terminating = True
    raise Terminated(signum)


def install() -> None:
    """Register the atexit hook and, where nobody else handles them, the signal handlers.

    Idempotent. A signal whose handler is not SIG_DFL (the application set its own, or it is
    deliberately ignored) is left alone. Handlers can only be set from the main thread; a call
    from another thread installs the atexit hook now and the handlers on a later main-thread call.
    """
    global _atexit_registered, _signals_installed
    if not _atexit_registered:
        atexit.register(REGISTRY.undo_all)
        _atexit_registered = True
    if _signals_installed or threading.current_thread() is not threading.main_thread():
        return
    for signum in HANDLED_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _on_signal)
    _signals_installed = True


def run_torn_down(run: Callable[[], bool], logger: logging.Logger,
                  failures: tuple[type[Exception], ...] = ()) -> int:
    """Runs a demo-like `run` whose context managers tear everything down, as an exit status:
    0 when it returns True, 1 when False, 2 for one of `failures`, 128 + signal when stopped."""
    install()  # SIGTERM/SIGHUP unwind through the context managers like Ctrl-C
    try:
        ok = run()
    except failures as exc:
        logger.error("%s: torn down", exc)
        return 2
    except Terminated as exc:
        logger.warning("%s: torn down", exc)
        return 128 + exc.signum
    except KeyboardInterrupt:
        logger.warning("interrupted: torn down")
        return 128 + signal.SIGINT
    logger.info("demo %s", "passed: traffic behaved as the policy says" if ok else "FAILED")
    return 0 if ok else 1
