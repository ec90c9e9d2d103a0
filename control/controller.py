"""The daemon's one writer: desired state in, kernel and disk brought to it, in that order.

Every change (API call, start-up restore) goes through `change()`, serialised by a lock:
validate -> reconcile (all-or-nothing, control.reconcile) -> persist -> publish. A change that
fails leaves the applied state, the kernel and the file as they were.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from control.errors import NotFound
from control.models import DesiredState
from control.policy_ops import Edit, check_generation
from control.reconcile import InvalidState, Reconciler, Stats
from control.state import StateStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApplyRecord:
    """How the last change (or the start-up restore) that reached the kernel went."""

    ok: bool
    duration_s: float
    finished_unix: float  # time.time() when it ended
    generation: int       # the generation it tried to apply


# Objects made by changes are frozen (gc.freeze), never walked by a collection again; the little
# cyclic garbage among them (an exception's traceback, ~30 objects a change) is collected by a
# full sweep (gc.unfreeze, gc.collect, gc.freeze) once the changes since the last one made as
# many objects as were alive after it (at least SWEEP_MIN): the collector's own pace, amortised
# as CPython amortises its full collections, but never in the middle of a change.
SWEEP_MIN = 1_000_000


@contextmanager
def collector_held() -> Iterator[None]:
    """Keeps Python's cyclic garbage collector out of a change.

    A policy is millions of small objects that live as long as it is applied (models, parsed
    addresses, match rules, compiled keys), none of them garbage. Allocating them triggers the
    collector over and over, each full collection walking everything alive: that was more than
    half of applying 100,000 rules, and of a one-rule update on top of 10,000. Even a young
    collection after a one-rule update walks the 10,000-element containers it made (~3 ms). So
    the collector is off during a change, and what the change made is frozen into the permanent
    generation afterwards (O(1)), where collections never walk it. Refcounting frees frozen
    objects as usual: an old policy replaced is freed at once."""
    if not gc.isenabled():  # nested, or the collector is off anyway
        yield
        return
    gc.disable()
    failed = True
    try:
        yield
        failed = False
    finally:
        # A failed change is not frozen: the exception's traceback holds its frames, and with
        # them everything the change built (a refused 10k-rule policy compiled: ~60 MB), in a
        # cycle that becomes garbage only after the caller handled it; frozen now, it would stay
        # until a sweep (the soak, testbed.soak, grew the daemon by that much per refused apply).
        if not failed:
            _settle()
        gc.enable()


_made_since_sweep = 0
_sweep_after = SWEEP_MIN


def _settle() -> None:
    global _made_since_sweep, _sweep_after
    _made_since_sweep += gc.get_count()[0]
    if _made_since_sweep > _sweep_after:
        gc.unfreeze()
        gc.collect()
        _made_since_sweep = 0
        gc.freeze()
        _sweep_after = max(SWEEP_MIN, gc.get_freeze_count())
    else:
        gc.freeze()


class Busy(TimeoutError):
    """The controller stayed locked (a long apply) for longer than the caller would wait."""


class Controller:
    def __init__(self, store: StateStore, reconciler: Reconciler) -> None:
        self.store = store
        self.reconciler = reconciler
        self._lock = threading.RLock()
        self.state = DesiredState()
        self.last_apply: ApplyRecord | None = None
        self.applies = {"ok": 0, "failed": 0}

    @contextmanager
    def _recorded(self, generation: int) -> Iterator[None]:
        """Records how programming went; a state refused before anything was written
        (InvalidState: the caller's error) is not an apply."""
        started = time.monotonic()
        try:
            yield
        except InvalidState:
            raise
        except BaseException:
            self._record(False, started, generation)
            raise
        self._record(True, started, generation)

    def _record(self, ok: bool, started: float, generation: int) -> None:
        self.last_apply = ApplyRecord(ok, time.monotonic() - started, time.time(), generation)
        self.applies["ok" if ok else "failed"] += 1

    def start(self) -> None:
        """Restores the persisted state (adopting pinned maps a previous daemon left)."""
        with self._lock, collector_held():
            persisted = self.store.load()
            with self._recorded(persisted.generation):
                self.reconciler.restore(persisted)
            self.state = self.reconciler.applied
            log.info("state restored", extra={"generation": self.state.generation,
                                              "interfaces": [i.name for i in self.state.interfaces]})

    def change(self, edit: Callable[[DesiredState], DesiredState], expected_generation: int = 0,
               dry_run: bool = False) -> DesiredState:
        """Applies edit(current) and returns the new state (the old one for a dry run)."""
        with self._lock, collector_held():
            check_generation(self.state, expected_generation)
            new = edit(self.state)
            if dry_run:
                self.reconciler.preflight(new)
                return new
            new = new.model_copy(update={"generation": self.state.generation + 1})
            with self._recorded(new.generation):
                self.reconciler.apply(new)
                try:
                    self.store.save(new, edit if isinstance(edit, Edit) else None, base=self.state)
                except Exception:
                    log.exception("saving the state failed: putting the previous state back in the kernel")
                    self.reconciler.apply(self.state)
                    raise
            self.state = new
            log.info("state applied", extra={"generation": new.generation})
            return new

    def stats(self, interfaces: list[str] | None = None) -> Stats:
        """Counters summed over the attached interfaces (or over the ones named)."""
        with self._lock:
            unknown = sorted(set(interfaces or ()) - set(self.reconciler.planes))
            if unknown:
                raise NotFound(f"interfaces not attached: {', '.join(unknown)}")
            return self.reconciler.stats(interfaces or None)

    def read(self) -> DesiredState:
        with self._lock:
            return self.state

    @contextmanager
    def locked(self, timeout: float) -> Iterator[Reconciler]:
        """The reconciler, with no change under way, for readers of the kernel's maps (a
        metrics scrape); Busy if a change holds the lock for longer than `timeout` seconds."""
        if not self._lock.acquire(timeout=timeout):
            raise Busy(f"a change has held the controller for over {timeout:g} s")
        try:
            yield self.reconciler
        finally:
            self._lock.release()
