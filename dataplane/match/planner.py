"""A table's next policy: nothing to write, a few rules edited in the live bank, or a full compile
into the other bank, whichever the difference from what the table holds calls for (pure).

    compiled = compile_rules(cols, table.current, capacity, "acl")   # ValueError: refused
    table.apply(compiled)                                             # dataplane.match.table

`compile_rules` compares records (a rule is its record: fields, order, action): unchanged rules
keep their slots; up to edits.EDIT_MAX added and removed rules become an edit of the live bank
(dataplane.match.edits), more become a bank switch (dataplane.match.compiler). `add_rules` and
`delete_rules` are the same for callers that know the difference already (AddAclRule,
DeleteAclRule): they touch the rules they name, never the whole set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dataplane.match import compiler as cp
from dataplane.match.columns import RuleColumns
from dataplane.match.edits import EDIT_MAX, Edit, Mirror, plan_edit

Capacity = cp.Capacity
Compiled = cp.Compiled
Live = cp.Live


def compile_rules(cols: RuleColumns, base: Live, capacity: Capacity, table: str = "acl") -> Compiled:
    """`cols` (the whole rule set, in judging order) as the next policy of a table holding `base`."""
    cp.check(cols, table)
    recs = cp.records(cols)
    slots, fresh, freed = cp.assign_slots(recs, base, capacity.rules, table)
    if not fresh.any() and not len(freed):
        return Compiled(table, base, cols, recs, slots, fresh, freed, None, unchanged=True)
    if int(fresh.sum()) + len(freed) <= EDIT_MAX and len(base):
        rows = np.flatnonzero(fresh)
        edit = plan_edit(base.mirror(), cols.take(rows), recs[rows], slots[rows].tolist(), freed.tolist())
        if edit is not None:
            _check_edit(edit, base, capacity, table)
            return Compiled(table, base, cols, recs, slots, fresh, freed, None, unchanged=False, edit=edit)
    return cp.compile_full(cols, base, capacity, table, (recs, slots, fresh, freed))


def add_rules(cols: RuleColumns, base: Live, capacity: Capacity, table: str = "acl") -> Compiled:
    """`cols` added to what `base` holds; a rule whose id is already there is replaced. Cost: the
    rules added, not the rules held (unless the edit has to become a full compile)."""
    cp.check(cols, table)
    m = base.mirror()
    recs = cp.records(cols)
    replaced = [m.slot_of_id[rid] for rid in cols.rule_id.tolist() if rid in m.slot_of_id]
    slots = _free_slots(m, len(cols), capacity.rules, table)
    edit = plan_edit(m, cols, recs, slots, replaced)
    if edit is None:
        return compile_rules(_merged(base, cols, replaced), base, capacity, table)
    _check_edit(edit, base, capacity, table)
    fresh = np.ones(len(cols), dtype=bool)
    return Compiled(table, base, cols, recs, np.array(slots, dtype=np.uint32), fresh,
                    np.array(replaced, dtype=np.uint32), None, unchanged=False, edit=edit)


def delete_rules(rule_ids: Sequence[int], base: Live, capacity: Capacity, table: str = "acl") -> Compiled:
    """The rules with these ids removed (ids not held are refused, naming them)."""
    m = base.mirror()
    missing = [rid for rid in rule_ids if rid not in m.slot_of_id]
    if missing:
        raise ValueError(f"{table}: no rule with id {missing[0]}")
    slots = [m.slot_of_id[rid] for rid in rule_ids]
    edit = plan_edit(m, RuleColumns.empty(), np.zeros(0, dtype=cp.RULE), [], slots)
    if edit is None:
        return compile_rules(_merged(base, RuleColumns.empty(), slots), base, capacity, table)
    none = np.zeros(0, dtype=np.uint32)
    return Compiled(table, base, RuleColumns.empty(), np.zeros(0, dtype=cp.RULE), none,
                    np.zeros(0, dtype=bool), np.array(slots, dtype=np.uint32), None, unchanged=False,
                    edit=edit)


def _check_edit(edit: Edit, base: Live, capacity: Capacity, table: str) -> None:
    """An edit's new buckets against the bucket maps' capacities (before anything is written)."""
    cp.check_buckets(table, capacity, base.bucket_counts(), edit.new_buckets, "with those the table holds")


def _free_slots(m: Mirror, count: int, capacity: int, table: str) -> list[int]:
    """`count` slots no rule holds, found from a cursor kept in the mirror (amortized O(count))."""
    records = m.records
    if len(records) + count > capacity:
        raise ValueError(f"{table}: {len(records)} rule slots in use, {count} more needed, but the map holds "
                         f"{capacity}: raise capacities.{table}_rules")
    out: list[int] = []
    cursor = m.free_cursor
    while len(out) < count:
        if cursor >= capacity:
            cursor = 0
        if cursor not in records:
            out.append(cursor)
        cursor += 1
    m.free_cursor = cursor
    return out


def _merged(base: Live, cols: RuleColumns, removed: Sequence[int]) -> RuleColumns:
    """The whole rule set after an edit (for the full compile an edit falls back to)."""
    keep = ~np.isin(base.slots, np.array(removed, dtype=np.uint32))
    held = cp.columns_of(base.records[keep])
    merged = RuleColumns.concat([held, cols])
    return merged.take(np.argsort(merged.order, kind="stable"))
