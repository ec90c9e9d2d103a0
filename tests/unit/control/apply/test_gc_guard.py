"""The controller's hold on the garbage collector (control.apply.controller.collector_held): a change
that fails must not freeze what it built, or the cycle its exception's traceback forms keeps
the whole refused policy alive (the soak, testbed.soak, saw ~60 MB per refused 10k-rule apply)."""

from __future__ import annotations

import gc

import pytest

from control.apply.controller import collector_held

MANY = 100_000  # objects made by the change: more than any threshold that decides to freeze


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_a_failed_change_is_not_frozen_and_its_garbage_is_collected() -> None:
    frozen = gc.get_freeze_count()
    with pytest.raises(RuntimeError):
        with collector_held():
            junk = [_Node() for _ in range(MANY)]
            raise RuntimeError("the kernel refused part-way")
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen
    del junk
    assert gc.collect() >= MANY  # the cycles were left where a collection finds them
