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
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


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

    def add(self, key: str, undo: Callable[[], None]) -> None:
        with self._lock:
            self._undo[key] = undo
            self._history.append(key)

    def discard(self, key: str) -> None:
        with self._lock:
            self._undo.pop(key, None)

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
        for key, undo in pending:
            try:
                undo()
            except Exception as exc:  # noqa: BLE001 - a safety net must try everything
                log.warning("testbed cleanup of %s failed: %s", key, exc)


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
