"""prefilter.Runs through a sequence of edits (rules added in place, removed rows marked dead,
dead rows dropped once they are half) answers as a plain list of the live rules' runs would:
which blocks of a run no other rule of its subtable meets, and each rule's runs."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.match import prefilter as pf

SPAN = 40  # blocks used: small, so that runs overlap often
SLOW = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def runs(draw: st.DrawFn) -> np.ndarray:
    out = np.zeros((pf.FIELDS, 2), dtype=np.int64)
    for f in range(pf.FIELDS):
        lo = draw(st.integers(0, SPAN - 1))
        out[f] = (lo, draw(st.integers(lo, min(SPAN - 1, lo + draw(st.sampled_from([0, 0, 0, 3, 20]))))))
    return out


def reference_uncovered(live: dict[int, tuple[int, np.ndarray]], t: int, run: np.ndarray, which: int,
                        without: set[int], extra: list[np.ndarray]) -> list[int]:
    held = [r for s, (tid, r) in live.items() if tid == t and s not in without] + list(extra)
    lo, hi = int(run[0]), int(run[1])
    return [b for b in range(lo, hi + 1) if not any(r[which][0] <= b <= r[which][1] for r in held)]


@SLOW
@given(st.lists(st.tuples(st.integers(0, 2), runs()), min_size=1, max_size=40),
       st.lists(st.tuples(st.booleans(), st.integers(0, 2), runs(), st.integers(0, 10_000)), max_size=60))
def test_runs_through_edits_answer_as_the_live_rules(initial, steps):
    live = {slot: (t, r) for slot, (t, r) in enumerate(initial)}
    records_runs = np.stack([r for _, r in initial])
    ids = np.array([t for t, _ in initial])
    runs_ = pf.Runs()
    for t in np.unique(ids).tolist():
        mine = ids == t
        runs_._set(t, np.flatnonzero(mine).astype(np.int64), records_runs[mine])
    next_slot = len(initial)
    for add, t, run, pick in steps:
        if add or not live:
            runs_.commit([(next_slot, t, run)], {})
            live[next_slot] = (t, run)
            next_slot += 1
        else:
            slot = sorted(live)[pick % len(live)]
            tid, gone_run = live[slot]
            for f in range(pf.FIELDS):  # asked before the edit is committed, as plan_edit does
                got = runs_.uncovered(tid, gone_run[f], f, {slot}, [])
                assert got.tolist() == reference_uncovered(live, tid, gone_run[f], f, {slot}, [])
            runs_.commit([], {slot: tid})
            del live[slot]
        for slot, (tid, r) in live.items():
            assert np.array_equal(runs_.run_of(tid, slot), r)
        for tid in range(3):  # a run of each subtable, with an addition pending
            probe = np.array([[0, SPAN - 1], [5, 5]])
            for f in range(pf.FIELDS):
                got = runs_.uncovered(tid, probe[f], f, set(), [run])
                assert got.tolist() == reference_uncovered(live, tid, probe[f], f, set(), [run])
