"""The live state's dict form (dataplane.match.live.Mirror): its Overlays behave as dicts, and a
mirror made from arrays gives those arrays back, edits or not."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.match import planner
from dataplane.match.adapter import to_columns
from dataplane.match.live import KEY, RULE, Live, Mirror, Overlay, tuple_of

from ..rulegen import rules
from .test_compiler import CAP, load

BASE = {k: k * 10 for k in range(0, 40, 3)}

ops = st.lists(st.tuples(st.sampled_from(["set", "pop", "del", "get"]), st.integers(0, 45),
                         st.integers(1, 1000)), max_size=60)


@given(ops)
def test_an_overlay_is_a_dict_over_its_base(steps):
    overlay: Overlay[int, int] = Overlay(BASE.get, len(BASE))
    model = dict(BASE)
    for op, key, value in steps:
        if op == "set":
            overlay[key] = value
            model[key] = value
        elif op == "pop":
            assert overlay.pop(key, "none") == model.pop(key, "none")
        elif op == "del":
            if key in model:
                del overlay[key]
                del model[key]
        assert overlay.get(key) == model.get(key)
        assert (key in overlay) == (key in model)
        assert len(overlay) == len(model)
    assert {k: v for k, v in overlay.written()} == {k: v for k, v in model.items() if BASE.get(k) != v}
    assert all(overlay[k] == v for k, v in model.items())


def _rows(records, slots, keys, buckets) -> tuple[list, list]:
    rules = sorted(zip(slots.tolist(), records.view(f"V{RULE.itemsize}").ravel().tolist(), strict=True))
    members = [(k, b["slots"][: int(b["count"])].tolist())
               for k, b in zip(keys.view(f"V{KEY.itemsize}").ravel().tolist(), buckets, strict=True)]
    return rules, sorted(members)


def _live_rows(live: Live) -> tuple[list, list]:
    return _rows(live.records, live.slots, live.keys, live.buckets)


SLOW = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SLOW
@given(base=rules(max_rules=40), added=rules(max_rules=4))
def test_a_mirror_gives_back_the_arrays_it_was_made_from_and_what_edits_changed(base, added):
    live, _ = load(base)
    mirror = Mirror.of(live)
    assert _rows(*mirror.arrays()[:4]) == _live_rows(live)
    assert len(mirror.records) == len(live) and len(mirror.buckets) == len(live.keys)
    ids = {r.rule_id for r in base}
    added = [r for r in added if r.rule_id not in ids]
    if not added:
        return
    compiled = planner.add_rules(to_columns(added), live, CAP)
    after = compiled.live().mirror()  # an edit: the Live's dict form
    recs, slots, keys, buckets, _ = after.arrays()
    held = dict(zip(slots.tolist(), recs.view(f"V{RULE.itemsize}").ravel().tolist(), strict=True))
    before = _rows(live.records, live.slots, live.keys, live.buckets)[0]
    assert [(s, held[s]) for s, _ in before] == before  # every rule held before, at its slot
    assert sorted(recs["rule_id"].tolist()) == sorted([*ids, *(r.rule_id for r in added)])
    assert len(keys) == len(buckets) == len(after.buckets)


@given(st.tuples(st.integers(0, 1), st.integers(0, 128), st.integers(0, 128), st.integers(0, 1),
                 st.integers(0, 16), st.integers(0, 16)), st.integers(0, 255), st.integers(0, 2**64 - 1))
def test_a_subtable_says_its_tuple(t, table_id, best):
    from dataplane.match.edits import _new_table

    assert tuple_of(_new_table(t, table_id, best)) == t
