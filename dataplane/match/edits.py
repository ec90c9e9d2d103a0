"""Edits of the live bank: a few rules added or removed without a bank switch (pure).

A policy change that adds or removes a few rules (AddAclRule, DeleteAclRule, a rule replaced)
rewrites only the buckets those rules are in, in an order that keeps every packet on the old
rule set or the new one (docs/classifier.md, "Edits"):

 0. the new rules' records, at slots no bucket names yet;
 1. the prefilter's bits for the added rules (dataplane.match.prefilter), then, if that set any,
    a wait until every search that began before is over: a search reads the bits once, first,
    and one that skipped a subtable by the old bits must not go on to see a later rule added to
    another subtable without the earlier one added to this one;
 2. the subtables element, when a rule goes into a new subtable or comes before a subtable's
    best: a lower bound that is too low only makes the search look further;
 3. the added rules, earliest (by order) first, each by replacing its bucket as a whole element:
    until the last is written a packet sees the old rules plus the earliest of the new ones,
    which answers as the old set or as the new one;
 4. the removed rules, latest first, the same way (the mirror image);
 5. the subtables element without subtables left empty;
 6. the prefilter's bits that no rule of their subtable needs any more (a set bit only costs a
    probe, so clearing them last is safe at any moment);
 7. once every search that began before is over, the removed rules' records are zeroed (a
    zeroed record never matches) and their slots free.

A write that replaces or deletes an element waits, before the next write to that map, until
every search that could still hold the old element is over (dataplane.match.table): the kernel
gives a freed element's memory to the next update at once.

Rules keep their orders (the API's (priority, id), 64 bits), so an insert never renumbers
anything. An edit that cannot be placed (every subtable a rule fits has a full bucket for it
and no subtable is left to make), or that removes rules while some rule is in no bucket (shadowed
by an earlier one: dataplane.match.shadow), is planned as a full compile instead (`plan_edit` ->
None).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from dataplane.match import prefilter as pf
from dataplane.match import tuples as tp
from dataplane.match.columns import RuleColumns
from dataplane.match.live import KEY, RULE, SUBTABLE, SUBTABLES, Mirror, maps_of, tuple_of

# Edits larger than this are compiled in full (a bank switch): cheaper past here, and atomic.
EDIT_MAX = 256
TABLE_IDS = 256  # tg_subtable.id is a __u8
ADDRESS_STEP = 8  # a subtable made for an added rule rounds its address lengths down to this


@dataclass(frozen=True)
class Edit:
    """Writes of one edit, phase by phase (module docstring), and what they change in the mirror
    (`commit`, once they are done: planning never changes the mirror)."""

    tables_before: bytes | None  # SUBTABLES element of the live bank, or None: unchanged
    records: list[tuple[int, bytes]]  # fresh slots and their records
    gains: list[tuple[bytes, list[int]]]  # bucket writes as rules are added, in order
    losses: list[tuple[bytes, list[int]]]  # bucket writes as rules are removed, in order ([] deletes)
    tables_after: bytes | None
    freed: list[int]
    added: list[tuple[int, bytes, int, int]]  # (slot, its bucket's key, order, rule id)
    tables: list[Any]  # the subtables once done, by best
    per_table: dict[int, int]
    # the prefilter (dataplane.match.prefilter): bits to set, (field, lo, hi, subtable id) a run
    # each; bits to clear, (field, blocks, subtable id); the runs an edit adds and removes
    sets: list[tuple[int, int, int, int]] = field(default_factory=list)
    clears: list[tuple[int, npt.NDArray[np.int64], int]] = field(default_factory=list)
    runs_added: list[tuple[int, int, npt.NDArray[np.int64]]] = field(default_factory=list)
    runs_removed: dict[int, int] = field(default_factory=dict)  # slot -> subtable id
    # entries the buckets written first take in the maps (the IPv4 map, the other) that no
    # bucket took before: the most the edit adds to each at any moment
    new_buckets: tuple[int, int] = (0, 0)

    def commit(self, m: Mirror) -> None:
        """Makes the mirror what the maps hold once every write of the edit is done."""
        # the gains' buckets the maps lacked, as plan_edit counted them against this mirror
        v4, v6 = _plus(*m.bucket_counts, self.new_buckets, 1)
        for key, content in self.gains:
            m.buckets[key] = content
        for key, content in self.losses:
            if content:
                m.buckets[key] = content
            elif m.buckets.pop(key, None) is not None:
                v4, v6 = _plus(v4, v6, maps_of(key), -1)
        m.bucket_counts = (v4, v6)
        for slot in self.freed:
            m.key_of.pop(slot, None)
            m.order.pop(slot, None)
            rid = int(np.frombuffer(m.records.pop(slot), dtype=RULE)["rule_id"][0])
            if m.slot_of_id.get(rid) == slot:
                del m.slot_of_id[rid]
        for (slot, record), (_, key, rule_order, rid) in zip(self.records, self.added, strict=True):
            m.records[slot], m.key_of[slot], m.order[slot], m.slot_of_id[rid] = record, key, rule_order, slot
        m.tables, m.per_table = self.tables, self.per_table
        m.runs.commit(self.runs_added, self.runs_removed)


def _plus(v4: int, v6: int, maps: tuple[int, int], sign: int) -> tuple[int, int]:
    return v4 + sign * maps[0], v6 + sign * maps[1]


def _new_buckets(m: Mirror, gains: list[tuple[bytes, list[int]]]) -> tuple[int, int]:
    """Entries the gains' buckets that the maps do not hold yet take in (IPv4 map, the other)."""
    v4 = v6 = 0
    for key in {key for key, _ in gains if key not in m.buckets}:
        v4, v6 = _plus(v4, v6, maps_of(key), 1)
    return v4, v6


def _pack_tables(tables: list[Any]) -> bytes:
    """The subtables element (SUBTABLES) holding `tables` (1-element SUBTABLE arrays), by best."""
    out = np.zeros(1, dtype=SUBTABLES)
    ordered = sorted(tables, key=_best)
    out["count"] = len(ordered)
    if ordered:
        out["tables"][0, : len(ordered)] = np.concatenate(ordered)
    return out.tobytes()


def _best(table: Any) -> int:
    return int(table["best"][0])


def _id(table: Any) -> int:
    return int(table["id"][0])


def _key_bytes(fields: tp.Fields, row: int, t: Any, bank: int, table_id: int) -> bytes:
    k = tp.masked(fields.take(np.array([row])), t)
    out = np.zeros(1, dtype=KEY)
    out["src"], out["dst"], out["sport"], out["dport"] = k.src, k.dst, k.sport, k.dport
    out["family"], out["proto"], out["bank"], out["table"] = k.family, k.proto, bank, table_id
    return out.tobytes()


def _new_table(t: tuple[int, ...], table_id: int, best: int) -> Any:
    src_m, dst_m, sport_m, dport_m, fam_m, proto_m = tp.masks_of(t)
    rec = np.zeros(1, dtype=SUBTABLE)
    rec[0] = (src_m, dst_m, best, sport_m, dport_m, fam_m, proto_m, table_id, 0)
    return rec


def plan_edit(m: Mirror, add: RuleColumns, add_records: npt.NDArray[Any], add_slots: list[int],
              remove: list[int]) -> Edit | None:
    """The edit adding rows `add` (their records, at fresh slots) and removing slots `remove`, or
    None when it is better done as a full compile. Pure, and costs what it touches: the mirror is
    read, never copied or changed."""
    if len(add) + len(remove) > EDIT_MAX:
        return None
    if remove and len(m.key_of) < len(m.records):
        # Some rule is in no bucket (shadowed, dataplane.match.shadow): what is removed may be
        # what shadowed it, and only a full compile finds the rules that then need a place.
        return None
    tables = [t.copy() for t in m.tables]
    tuples = {_id(t): tuple_of(t) for t in tables}
    per_table = dict(m.per_table)
    touched: dict[bytes, list[int]] = {}  # key -> its content so far (copied from the mirror)
    order: dict[int, int] = {}  # orders of the added slots

    def content(key: bytes) -> list[int]:
        if key not in touched:
            touched[key] = list(m.buckets.get(key, ()))
        return touched[key]

    def order_of(slot: int) -> int:
        return order[slot] if slot in order else m.order[slot]

    # Bucket writes, one per rule added (earliest first) or removed (latest first), a run of them
    # in one bucket written once: at every moment the rules added are the earliest of those to
    # add and the rules removed the latest of those to remove, so a packet is answered as the
    # old rule set or the new one (docs/classifier.md).
    gains: list[tuple[bytes, list[int]]] = []
    losses: list[tuple[bytes, list[int]]] = []
    added: list[tuple[int, bytes, int, int]] = []
    lowered = False
    rule_tuples, fields = tp.rule_tuples(add), tp.Fields.of(add)
    add_runs = pf.record_blocks(add_records)
    runs_added: list[tuple[int, int, npt.NDArray[np.int64]]] = []
    for row in np.argsort(add.order, kind="stable").tolist():  # earliest first: see `gains`
        slot, rule_order = add_slots[row], int(add.order[row])
        placed = _place(tables, tuples, content, fields, rule_tuples[row], row, m.bank)
        if placed is None:
            return None
        key, table, made = placed
        runs_added.append((slot, _id(table), add_runs[row]))
        if made or rule_order < _best(table):
            table["best"] = min(rule_order, _best(table))
            lowered = True
        members = content(key)
        if not members:
            per_table[_id(table)] = per_table.get(_id(table), 0) + 1
        members.insert(bisect.bisect([order_of(s) for s in members], rule_order), slot)
        order[slot] = rule_order
        added.append((slot, key, rule_order, int(add.rule_id[row])))
        _emit(gains, key, members)
    tables_before = _pack_tables(tables) if lowered else None
    runs_removed: dict[int, int] = {}
    for slot in sorted(remove, key=m.order.__getitem__, reverse=True):  # latest first: see `losses`
        key = m.key_of[slot]
        members = content(key)
        members.remove(slot)
        _emit(losses, key, members)
        runs_removed[slot] = int(np.frombuffer(key, dtype=KEY)["table"][0])
        if not members:
            per_table[runs_removed[slot]] -= 1
    emptied = {tid for tid, n in per_table.items() if n == 0}
    tables_after = None
    if emptied:
        tables = [t for t in tables if _id(t) not in emptied]
        per_table = {tid: n for tid, n in per_table.items() if n}
        tables_after = _pack_tables(tables)
    new_records = [(s, add_records[i].tobytes()) for i, s in enumerate(add_slots)]
    by_slot = {a[0]: a for a in added}
    sets = [(f, int(run[f, 0]), int(run[f, 1]), tid) for _, tid, run in runs_added for f in range(pf.FIELDS)]
    return Edit(tables_before, new_records, gains, losses, tables_after, list(remove),
                [by_slot[s] for s in add_slots], sorted(tables, key=_best), per_table, sets,
                _clears(m.runs, runs_added, runs_removed), runs_added, runs_removed, _new_buckets(m, gains))


def _clears(runs: pf.Runs, added: list[tuple[int, int, npt.NDArray[np.int64]]], removed: dict[int, int]
            ) -> list[tuple[int, npt.NDArray[np.int64], int]]:
    """The prefilter bits of the removed rules that no rule of their subtable meets once the edit
    is done: (field, blocks, subtable id)."""
    out = []
    gone = set(removed)
    for slot, tid in removed.items():
        run = runs.run_of(tid, slot)
        extra = [r for _, t, r in added if t == tid]
        for f in range(pf.FIELDS):
            blocks = runs.uncovered(tid, run[f], f, gone, extra)
            if blocks.size:
                out.append((f, blocks, tid))
    return out


def _emit(writes: list[tuple[bytes, list[int]]], key: bytes, members: list[int]) -> None:
    """Appends the write of bucket `key` as it is now, or updates the last write if it was to the
    same bucket (consecutive changes to one bucket are written once)."""
    if writes and writes[-1][0] == key:
        writes[-1] = (key, list(members))
    else:
        writes.append((key, list(members)))


def _place(tables: list[Any], tuples: dict[int, tuple[int, ...]], content: Callable[[bytes], list[int]],
           fields: tp.Fields, rule_tuple: npt.NDArray[np.int16], row: int, bank: int
           ) -> tuple[bytes, Any, bool] | None:
    """(bucket key, subtable, made now) for one added rule: the first subtable whose masks it fits
    with room in its bucket, else a new subtable (best: none yet); None when neither is possible."""
    for table in tables:
        t = tuples[_id(table)]
        if all(int(a) >= b for a, b in zip(rule_tuple, t, strict=True)):
            key = _key_bytes(fields, row, t, bank, _id(table))
            if len(content(key)) < tp.BUCKET_MAX:
                return key, table, False
    if len(tables) >= tp.SUBTABLES_MAX:
        return None
    used = {_id(t) for t in tables}
    table_id = next(i for i in range(TABLE_IDS) if i not in used)
    r = [int(v) for v in rule_tuple]
    t = (r[0], r[1] // ADDRESS_STEP * ADDRESS_STEP, r[2] // ADDRESS_STEP * ADDRESS_STEP, r[3], r[4], r[5])
    table = _new_table(t, table_id, int(np.iinfo(np.uint64).max))
    tables.append(table)
    tuples[table_id] = t
    return _key_bytes(fields, row, t, bank, table_id), table, True
