"""Python's cyclic garbage collector, kept out of policy changes.

A policy is millions of small objects that live as long as it is applied (models, parsed
addresses, match rules, compiled keys), none of them garbage. Allocating them triggers the
collector over and over, each full collection walking everything alive: that was more than half
of applying 100,000 rules, and of a one-rule update on top of 10,000. Even a young collection
after a one-rule update walks the 10,000-element containers it made (~3 ms). So a change (and
the request around it) runs with the collector off, and what it made is frozen into the
permanent generation afterwards (gc.freeze, O(1)), where collections never walk it. Refcounting
frees frozen objects as usual: an old policy replaced is freed at once.

What refcounting cannot free is cyclic garbage: a few dozen objects a successful change
(tracebacks, closures), and all that a failed change built (its traceback holds it), which is
not frozen but collected before the next change freezes anything. A full sweep (gc.unfreeze,
gc.collect, gc.freeze) collects the rest once the changes since
the last sweep made as many objects as were alive after it (at least SWEEP_MIN): the pace at
which CPython runs its own full collections. The sweep walks everything, up to a second for a
100,000-rule policy, so it never runs inside a change: it waits until no change has run for
SWEEP_IDLE_S (so that the last one's answer is sent first), in a timer thread, and a change
that starts meanwhile waits for it.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

SWEEP_MIN = 1_000_000
SWEEP_IDLE_S = 2.0

_lock = threading.RLock()  # held by a change, and by a sweep
_made_since_sweep = 0
_sweep_after = SWEEP_MIN
_last_change = 0.0
_timer: threading.Timer | None = None
_failed_garbage = False  # a change failed since the last collection of the unfrozen generations


@contextmanager
def collector_held() -> Iterator[None]:
    """Runs the block with the collector off; freezes what it made when it succeeds."""
    global _last_change, _failed_garbage
    with _lock:
        _last_change = time.monotonic()
        if not gc.isenabled():  # nested, or the collector is off anyway
            yield
            return
        _collect_failed()
        gc.disable()
        failed = True
        try:
            yield
            failed = False
        finally:
            # A failed change is not frozen: the exception's traceback holds its frames, and with
            # them everything the change built (a refused 10k-rule policy compiled: ~60 MB), in a
            # cycle that becomes garbage only after the caller handled it; frozen now, it would
            # stay until a sweep (the soak, testbed.soak, grew the daemon by that much per
            # refused apply).
            if not failed:
                _settle()
            else:
                _failed_garbage = True
                _schedule(SWEEP_IDLE_S)
            gc.enable()
            _last_change = time.monotonic()  # idle counts from the end: its answer is still to send


def _settle() -> None:
    global _made_since_sweep
    _made_since_sweep += gc.get_count()[0]
    gc.freeze()
    if _made_since_sweep > _sweep_after:
        _schedule(SWEEP_IDLE_S)


def _schedule(delay: float) -> None:
    global _timer
    if _timer is not None and _timer.is_alive():
        return
    _timer = threading.Timer(delay, _sweep_when_idle)
    _timer.daemon = True
    _timer.name = "gc-sweep"
    _timer.start()


def _sweep_when_idle() -> None:
    global _timer
    with _lock:
        _timer = None
        idle = time.monotonic() - _last_change
        if idle < SWEEP_IDLE_S:
            _schedule(SWEEP_IDLE_S - idle)
            return
        _collect_failed()
        if sweep_due():
            sweep()


def _collect_failed() -> None:
    """What a failed change built is garbage once its caller has handled the exception, in a
    cycle with the traceback; the next freeze would keep it for good (~60 MB for a refused
    10k-rule apply), so it is collected first: when idle, or else as the next change starts.
    The collection walks the unfrozen objects only, i.e. about what the failed change made."""
    global _failed_garbage
    if _failed_garbage:
        _failed_garbage = False
        gc.collect()


def sweep() -> int:
    """The full collection, now (with no change under way); returns what it collected."""
    global _made_since_sweep, _sweep_after
    with _lock:
        started = time.monotonic()
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        _made_since_sweep = 0
        _sweep_after = max(SWEEP_MIN, gc.get_freeze_count())
    log.info("garbage collector sweep", extra={"collected": collected, "objects": _sweep_after,
                                                "seconds": round(time.monotonic() - started, 3)})
    return collected


def sweep_due() -> bool:
    return _made_since_sweep > _sweep_after
