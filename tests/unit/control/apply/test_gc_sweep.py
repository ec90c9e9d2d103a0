"""The garbage collector kept out of changes and swept when idle (control.apply.gc_guard), for real."""

from __future__ import annotations

import gc
import time
import weakref

import pytest

from control.apply import gc_guard


class Node:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN202
    monkeypatch.setattr(gc_guard, "SWEEP_IDLE_S", 0.2)
    yield
    gc.enable()


def test_a_change_runs_without_the_collector_and_what_it_made_is_frozen():
    frozen = gc.get_freeze_count()
    with gc_guard.collector_held():
        assert not gc.isenabled()
        with gc_guard.collector_held():  # nested: the outer one settles
            kept = [{"rule": i} for i in range(5000)]
        assert not gc.isenabled()
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen + len(kept)


def test_a_failed_change_is_not_frozen_and_its_cycles_are_collected():
    frozen = gc.get_freeze_count()
    ref = None
    with pytest.raises(RuntimeError), gc_guard.collector_held():
        node = Node()
        ref = weakref.ref(node)
        del node
        raise RuntimeError("refused")
    assert gc.isenabled() and gc.get_freeze_count() <= frozen + 50
    gc.collect()
    assert ref is not None and ref() is None


def test_cyclic_garbage_of_changes_is_swept_once_idle(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(gc_guard, "_sweep_after", 10)
    with gc_guard.collector_held():
        node = Node()
        ref = weakref.ref(node)
        del node
        kept = [[] for _ in range(100)]  # enough objects made for a sweep to be due
    assert ref() is not None, "frozen with the change: no collection walked it"
    assert gc_guard.sweep_due()
    with gc_guard.collector_held():  # another change restarts the idle wait
        pass
    assert ref() is not None
    deadline = time.monotonic() + 5
    while (ref() is not None or gc_guard.sweep_due()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the sweep runs in a timer thread: until it is done
    assert ref() is None, "the sweep collected the cycle once no change ran"
    assert not gc_guard.sweep_due() and len(kept) == 100


def test_what_a_failed_change_built_is_collected_before_the_next_change_freezes_it(monkeypatch):
    monkeypatch.setattr(gc_guard, "SWEEP_IDLE_S", 60.0)  # no idle time: the next change must do it
    with pytest.raises(RuntimeError), gc_guard.collector_held():
        node = Node()
        ref = weakref.ref(node)
        del node
        raise RuntimeError("refused")
    with gc_guard.collector_held():  # the next change, once the failure was handled
        assert ref() is None, "collected before anything was frozen"
    assert ref() is None
