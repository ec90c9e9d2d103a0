"""The tuple assignment (dataplane.match.tuples.assign) against a naive reference: the same greedy
rounds computed row by row (every candidate ranked by scanning every remaining rule's tuple), as
the compiler did before it ranked candidates over the distinct tuples. Both must make the same
subtables and put every rule in the same one."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.match import tuples as tp
from dataplane.match.adapter import to_columns
from dataplane.match.columns import RuleColumns
from testbed import classbench

from ..rulegen import rules

SLOW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _naive_candidates(tuples: np.ndarray) -> Iterator[tuple[int, ...]]:
    distinct, counts = np.unique(tuples, axis=0, return_counts=True)
    seen: set[tuple[int, ...]] = set()
    for t in distinct[np.argsort(-counts, kind="stable")[: tp.TOP_TUPLES]]:
        for step in tp.STEPS:
            for proto in {int(t[tp.PROTO]), 0}:
                for sport in {int(t[tp.SPORT]), 0}:
                    for dport in {int(t[tp.DPORT]), 0}:
                        c = (int(t[tp.FAMILY]), int(t[tp.SRC]) // step * step, int(t[tp.DST]) // step * step,
                             proto, sport, dport)
                        if c not in seen:
                            seen.add(c)
                            yield c


def naive_assign(tuples: np.ndarray, fields: tp.Fields, cap: int, max_tables: int) -> tp.Assignment:
    n = len(tuples)
    table_of = np.full(n, -1, dtype=np.int16)
    made: list[tuple[int, ...]] = []
    remaining = np.arange(n)
    while remaining.size:
        if len(made) == max_tables:
            raise tp.TooManySubtables("left over")
        rem = tuples[remaining]
        best = None
        for cand in sorted(_naive_candidates(rem), key=lambda c: -int((rem >= c).all(1).sum())):
            eligible = remaining[(rem >= cand).all(1)]
            if best is not None and eligible.size <= best[1].size:
                break
            taken = eligible[tp.first_per_group(tp.masked(fields.take(eligible), cand).hash(), cap)]
            if best is None or taken.size > best[1].size:
                best = (cand, taken)
        assert best is not None
        table_of[best[1]] = len(made)
        made.append(best[0])
        remaining = np.setdiff1d(remaining, best[1])
    return tp.Assignment(np.array(made, dtype=np.int16).reshape(-1, len(tp.DIMS)), table_of)


def outcome(cols: RuleColumns, cap: int, max_tables: int, fn=tp.assign) -> tuple[list, list] | str:
    try:
        a = fn(tp.rule_tuples(cols), tp.Fields.of(cols), cap, max_tables)
    except tp.TooManySubtables:
        return "refused"
    return a.tuples.tolist(), a.table_of.tolist()


@SLOW
@given(rule_set=rules(max_rules=80), cap=st.integers(1, 4), max_tables=st.integers(1, 12))
def test_the_assignment_is_the_naive_greedy_one(rule_set, cap, max_tables):
    cols = to_columns(rule_set)
    assert outcome(cols, cap, max_tables) == outcome(cols, cap, max_tables, naive_assign)


@pytest.mark.skipif(not classbench.available(), reason="the ClassBench sets are not on this machine")
@pytest.mark.parametrize("seed", classbench.seeds(1_000))
def test_classbench_sets_are_assigned_as_the_naive_greedy_does(seed):
    cols = classbench.load(seed, 1_000)
    assert outcome(cols, tp.BUCKET_MAX, tp.SUBTABLES_MAX) == outcome(cols, tp.BUCKET_MAX, tp.SUBTABLES_MAX,
                                                                      naive_assign)


@given(st.lists(st.tuples(*[st.integers(0, 3)] * 2, st.integers(0, 128), st.integers(0, 128),
                          st.integers(0, 16), st.integers(0, 16)), max_size=40))
def test_distinct_tuples_are_numpys_unique_rows(rows):
    tuples = np.array(rows, dtype=np.int16).reshape(-1, len(tp.DIMS))
    distinct, index = tp.distinct_tuples(tuples)
    expected, inverse = np.unique(tuples, axis=0, return_inverse=True)
    assert distinct.tolist() == expected.tolist()
    assert index.tolist() == inverse.ravel().tolist()
