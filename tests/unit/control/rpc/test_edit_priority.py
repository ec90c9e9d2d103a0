"""The thread serving a single edit runs real-time, and only while it serves it
(control.rpc.edit_priority): real scheduling calls on this process's threads."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from control.rpc.edit_priority import EditPriority


def _realtime_allowed() -> bool:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:
        return False
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    return True


needs_realtime = pytest.mark.skipif(not _realtime_allowed(),
                                    reason="this process may not use SCHED_FIFO (CAP_SYS_NICE)")


def _in_thread(fn: Callable[[], Any]) -> Any:
    """fn's result, run in a thread of its own (whose scheduling the test may change)."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]


def _scheduling(tid: int = 0) -> tuple[int, int]:
    """(policy without SCHED_RESET_ON_FORK, real-time priority) of a thread (0: this one)."""
    return os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK, os.sched_getparam(tid).sched_priority


@needs_realtime
def test_the_serving_thread_alone_is_real_time_and_only_meanwhile():
    other = threading.Event()
    done = threading.Event()
    tid: list[int] = []

    def bystander() -> None:  # another thread of the daemon: stays an ordinary task
        tid.append(threading.get_native_id())
        other.set()
        done.wait(10)

    t = threading.Thread(target=bystander)
    t.start()
    other.wait(10)
    priority = EditPriority(3)

    def serve() -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
        before = _scheduling()
        with priority.serving():
            inside, beside = _scheduling(), _scheduling(tid[0])
        return before, inside, beside, _scheduling()

    try:
        before, inside, beside, after = _in_thread(serve)
    finally:
        done.set()
        t.join()
    assert before == (os.SCHED_OTHER, 0)
    assert inside == (os.SCHED_FIFO, 3)
    assert beside == (os.SCHED_OTHER, 0), "only the serving thread is raised"
    assert after == before
    assert priority.refused is None


@needs_realtime
def test_an_edit_that_fails_still_returns_the_thread_to_its_scheduling():
    def serve() -> tuple[int, int]:
        with pytest.raises(ValueError), EditPriority(1).serving():
            raise ValueError("refused edit")
        return _scheduling()

    assert _in_thread(serve) == (os.SCHED_OTHER, 0)


@needs_realtime
def test_a_thread_that_is_real_time_already_is_left_as_it_is():
    def serve() -> tuple[tuple[int, int], tuple[int, int]]:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(7))
        with EditPriority(1).serving():
            inside = _scheduling()
        return inside, _scheduling()

    assert _in_thread(serve) == ((os.SCHED_RR, 7), (os.SCHED_RR, 7))


def test_no_priority_changes_nothing():
    def serve() -> tuple[int, int]:
        with EditPriority(None).serving():
            return _scheduling()

    assert _in_thread(serve) == _in_thread(_scheduling)


REFUSED = """
import logging, os, resource, sys
from control.rpc.edit_priority import EditPriority
resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
p = EditPriority(1)
for _ in range(3):
    with p.serving():
        print("inside", os.sched_getscheduler(0))
print("refused", p.refused)
"""


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_where_the_kernel_refuses_edits_run_as_ordinary_tasks_and_it_is_said_once():
    """Without CAP_SYS_NICE (and no RLIMIT_RTPRIO): no error, ordinary scheduling, one warning."""
    root = str(Path(__file__).resolve().parents[4])
    cmd = ["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice", sys.executable, "-c", REFUSED]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ, "PYTHONPATH": root}).stdout.splitlines()
    assert out.count(f"inside {os.SCHED_OTHER}") == 3
    warnings = [line for line in out if line.startswith("WARNING")]
    assert len(warnings) == 1 and "CAP_SYS_NICE" in warnings[0]
    assert out[-1].startswith("refused ") and out[-1] != "refused None"


def test_the_warning_names_the_setting(caplog):
    """(In process: a priority the kernel refuses to anyone, 0 is not a SCHED_FIFO priority.)"""
    priority = EditPriority(0)
    with caplog.at_level(logging.WARNING, logger="control.rpc.edit_priority"):
        for _ in range(2):
            with priority.serving():
                assert _scheduling()[0] == os.SCHED_OTHER
    assert len(caplog.records) == 1
    assert caplog.records[0].edit_priority == 0  # type: ignore[attr-defined]
    assert priority.refused


@needs_realtime
def test_a_process_started_during_an_edit_is_an_ordinary_task():
    def serve() -> str:
        with EditPriority(2).serving():
            return subprocess.run([sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
                                  capture_output=True, text=True, check=True, timeout=60).stdout.strip()

    assert _in_thread(serve) == str(os.SCHED_OTHER)
