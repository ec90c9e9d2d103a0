"""Real-time scheduling for the thread serving a single edit.

A single edit (AddAclRule, DeleteAclRule, AddTunnel, ...) is a few milliseconds of work
separated by waits: for the kernel's map writes and checks, and for its journal record to reach
the disk before the caller is answered (control.apply.state). When the machine's CPUs are busy
with other work, each wait ends with the thread runnable but not running: the scheduler lets the
ordinary task holding the CPU go on until its slice ends (up to a scheduler tick), and an edit
pays that several times. On a loaded machine with few cores this, not the disk, is what the
slow edits are made of: the same fdatasync returns many times later to an ordinary task than to
a real-time one (BENCHMARKS.md's control section measures edits).

So while it serves an edit the thread runs under SCHED_FIFO at a low real-time priority (the
config's `edit_priority`, 1 by default): woken, it runs at once, ahead of every ordinary task
and behind every other real-time one (interrupt threads, watchdogs), then returns to the
scheduling it had. The work in between is bounded (one rule, tunnel or chain; the kernel's
real-time throttling bounds it again); whole-policy applies, attaches and compiles, and the
daemon's other threads, stay ordinary tasks. A thread that already runs under a real-time
policy (the whole daemon started by `chrt`, or a unit's CPUSchedulingPolicy=) is left as it is.
Where the kernel refuses (no CAP_SYS_NICE, a cgroup without a real-time budget) edits run as
ordinary tasks, and the daemon says so once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

DEFAULT_PRIORITY = 1  # the lowest real-time priority: above every ordinary task, below the rest
REALTIME = (os.SCHED_FIFO, os.SCHED_RR)


class EditPriority:
    """`with priority.serving():` runs the block at `priority` (SCHED_FIFO), or as it is when
    `priority` is None, the thread is real-time already, or the kernel refuses."""

    def __init__(self, priority: int | None = DEFAULT_PRIORITY) -> None:
        self.priority = priority
        self.refused: str | None = None  # why the kernel refused, once it has
        self._lock = threading.Lock()

    @contextmanager
    def serving(self) -> Iterator[None]:
        previous = self._raise()
        try:
            yield
        finally:
            if previous is not None:
                self._restore(*previous)

    def _raise(self) -> tuple[int, os.sched_param] | None:
        """The thread's scheduling before it was raised, or None when it was not."""
        if self.priority is None or self.refused is not None:
            return None
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)  # 0: this thread
        if (policy & ~os.SCHED_RESET_ON_FORK) in REALTIME:
            return None
        try:  # a process started meanwhile (none is, today) would start as an ordinary task
            os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(self.priority))
        except OSError as exc:
            with self._lock:
                first, self.refused = self.refused is None, exc.strerror or str(exc)
            if first:
                log.warning("single edits run as ordinary tasks: the kernel refused real-time "
                            "scheduling (grant CAP_SYS_NICE, or set edit_priority: null)",
                            extra={"edit_priority": self.priority, "error": self.refused})
            return None
        return policy, param

    @staticmethod
    def _restore(policy: int, param: os.sched_param) -> None:
        try:
            os.sched_setscheduler(0, policy, param)
        except OSError:  # lowering one's own priority is always allowed: not expected
            log.exception("could not return the thread to its scheduling after an edit")
