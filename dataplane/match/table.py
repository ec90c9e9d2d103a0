"""Writes compiled policies into one table's maps (ACL or classifiers) and reads them back.

A full compile goes to the bank the program does not search, then one write of match_bank
switches every packet from then on (a packet reads the bank once: it is judged by one bank
entirely):

 1. rule records at slots no bucket of the live bank names (their counters zeroed first);
 2. the new bank's buckets (each into the map of every family whose packets can probe it:
    *_buckets4 for IPv4, *_buckets for the others, both for a bucket of no family;
    dataplane.match.live.families), then its prefilter entries (written through a memory
    mapping of match_prefilter: a bank's 131,072 entries in one copy), then its subtables
    element, to a place of the subtables array no search reads (tidegate_abi.h,
    TG_SUBTABLE_PLACES);
 3. match_bank[table] = that place (of the new bank);
 4. wait until every search that began before is over (`quiesce`);
 5. the old bank's buckets and subtables element go, the freed records are zeroed (a zeroed
    record never matches).

An edit of the live bank (dataplane.match.edits) writes in its own safe order.

Every change (a full compile or an edit, from its first write to its last, failed or not) lies
between two writes of match_gen[table], the table's generation: made odd before the first, even
(one more) after the last. The ACL's flow cache (xdp/include/match.h, tg_acl_slot) uses an
entry only while the generation is even and the one the entry was found in, so no packet is
judged by a result found before a change, or during one. Adopting the maps of a process that
died inside a change finds the generation odd: it is made even at once, since nothing writes
the maps any more and a search's answer is again what they hold (the next change moves it on).

Why `quiesce`, and not a sleep or RCU alone: the kernel gives the memory of a replaced or
deleted hash element to the next update of that map at once (a preallocated hash from its free
list, one made with BPF_F_NO_PREALLOC through its BPF allocator, which recycles without waiting
for readers; xdp/include/maps.h), so a search holding the old element could read another one's
contents. Every search marks itself in match_readers (per CPU and hook: since which
match_epoch it runs, xdp/include/match.h); `quiesce` advances match_epoch and waits until
every CPU's mark is idle or newer, typically at once (searches take nanoseconds; a preempted
test run, longer). A write that may free an element is followed by one before the next write
to that map (and before freed records are zeroed): each bucket map is tracked on its own, since
each recycles its own elements, and a bucket of no family written to both is a write to each,
in the same order in both, so that each family's packets see the writes in their order.
Capacity is checked by the compile, before any of this. Each run of writes to one map is one
batched syscall (dataplane.kernel.bulk); values are packed from the ABI layouts (dataplane.abi).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dataplane import abi
from dataplane.kernel.bulk import MapWriter
from dataplane.kernel.fence import full_fence
from dataplane.kernel.maps import Counter
from dataplane.match import compiler as cp
from dataplane.match import live as lv
from dataplane.match import planner
from dataplane.match import prefilter as pf
from dataplane.match.columns import RuleColumns

log = logging.getLogger(__name__)

BANK_MAP = "match_bank"
GEN_MAP = "match_gen"  # enum tg_table -> its generation (odd: a change under way)
EPOCH_MAP, READERS_MAP = "match_epoch", "match_readers"
PLACES = abi.define("TG_SUBTABLE_PLACES")  # of the subtables array: place & 1 is its bank
READER = abi.struct_dtype("tg_reader")
HOOKS = abi.enums()["tg_hook"]["TG_HOOK_MAX"]
QUIESCE_POLL = 20e-6  # seconds between looks at the readers' marks
MIRROR_AHEAD = 10_000  # rules from which a full compile's edit index is built in the background
QUIESCE_WARN = 1.0  # a search this long is worth a log line (a stopped test run, a debugger)
_TABLE = abi.enums()["tg_table"]
_U32 = np.dtype("=u4")
_U64 = np.dtype("=u8")


@dataclass(frozen=True)
class TableNames:
    kind: str  # "acl" or "cls": the prefix of its capacity settings
    rules: str  # slot -> struct tg_rule
    stats: str  # slot -> per-CPU counters
    subtables: str  # place (TG_SUBTABLE_PLACES) -> struct tg_subtables
    buckets: str  # struct tg_bucket_key -> struct tg_bucket: what IPv6 packets probe
    buckets4: str  # struct tg_bucket_key4 -> struct tg_bucket: what IPv4 packets probe
    table: int  # enum tg_table: this table's key in match_bank (whose value is the place searched)


ACL_TABLES = TableNames("acl", "acl_rules", "acl_rule_stats", "acl_subtables", "acl_buckets",
                        "acl_buckets4", _TABLE["TG_TABLE_ACL"])
CLS_TABLES = TableNames("cls", "cls_rules", "cls_rule_stats", "cls_subtables", "cls_buckets",
                        "cls_buckets4", _TABLE["TG_TABLE_CLS"])


def _u32(values: Sequence[int] | np.ndarray) -> bytes:
    return np.asarray(values, dtype=_U32).tobytes()


def _bucket_values(contents: Sequence[Sequence[int]]) -> bytes:
    out = np.zeros(len(contents), dtype=cp.BUCKET)
    for i, members in enumerate(contents):
        out["count"][i] = len(members)
        out["slots"][i, : len(members)] = members
    return out.tobytes()


class MatchTable:
    """One match structure (ACL or classifiers) and what is written to it (`current`)."""

    def __init__(self, table: Callable[[str], Any], names: TableNames, capacity: cp.Capacity) -> None:
        self._table = table
        self.names = names
        self.capacity = capacity
        self.current = cp.Live()
        self._writers: dict[str, MapWriter] = {}
        self._dirty: set[str] = set()  # maps written since the last quiesce (an element may be held)
        self._mapped: tuple[mmap.mmap, np.ndarray] | None = None  # match_prefilter, mapped
        self._place = 0  # match_bank[table]: the subtables place searched (its bank: place & 1)
        self._held: set[int] = set()  # places searched since the last quiesce: not rewritten before one
        self._index_due = False  # a full compile of MIRROR_AHEAD rules or more was written: see index_ahead
        self._generation: int | None = None  # match_gen[table] as last written (None: not read yet)

    # --- compiling (pure: nothing is written) -------------------------------------------------
    def compile(self, cols: RuleColumns | Sequence[Any]) -> cp.Compiled:
        """The whole rule set `cols` against what the table holds; ValueError before any write.
        (A sequence of MatchRules is converted by dataplane.match.adapter, while it exists.)"""
        if not isinstance(cols, RuleColumns):
            from dataplane.match.adapter import to_columns  # the adapter builds on this package

            cols = to_columns(cols)
        return planner.compile_rules(cols, self.current, self.capacity, self.names.kind)

    def replace(self, cols: RuleColumns | Sequence[Any]) -> cp.Compiled:
        compiled = self.compile(cols)
        self.apply(compiled)
        return compiled

    def add(self, cols: RuleColumns) -> cp.Compiled:
        """Adds (or replaces, by rule id) the rules `cols`, touching only what they change."""
        compiled = planner.add_rules(cols, self.current, self.capacity, self.names.kind)
        self.apply(compiled)
        return compiled

    def delete(self, rule_ids: Sequence[int]) -> cp.Compiled:
        compiled = planner.delete_rules(rule_ids, self.current, self.capacity, self.names.kind)
        self.apply(compiled)
        return compiled

    # --- writing ------------------------------------------------------------------------------
    def apply(self, compiled: cp.Compiled) -> None:
        """Writes `compiled` (made against `current`) in place of the current policy."""
        if compiled.base is not self.current:
            raise RuntimeError(f"{self.names.kind}: compiled against a policy this table no longer holds")
        started = time.perf_counter()
        if compiled.unchanged:
            return
        self._set_gen(self._gen() | 1)  # odd: a change under way, before its first write
        try:
            if compiled.edit is not None:
                self._apply_edit(compiled)
            else:
                self._apply_full(compiled)
        finally:
            # Even, after the last write (also of a change that failed: what the maps hold now
            # is what a search answers until the next change).
            self._set_gen(self._gen() + 1)
        log.debug("match table written", extra={"table": self.names.kind, "rules": len(self.current),
                                                 "edit": compiled.edit is not None,
                                                 "seconds": time.perf_counter() - started})

    def generation(self) -> int:
        """match_gen[table] as the kernel holds it."""
        value = self._writer(GEN_MAP).lookup(_u32([self.names.table]))
        return int(np.frombuffer(value, dtype=_U64)[0])

    def _gen(self) -> int:
        """The generation this process last wrote (read from the kernel the first time only:
        nothing else writes it while this process owns the maps)."""
        if self._generation is None:
            self._generation = self.generation()
        return self._generation

    def _set_gen(self, gen: int) -> None:
        self._writer(GEN_MAP).update(_u32([self.names.table]), np.array([gen], dtype=_U64).tobytes())
        self._generation = gen

    def quiesce(self) -> None:
        """Returns once every search that had begun when it was called is over (module docstring)."""
        epochs = self._writer(EPOCH_MAP)
        _, value = epochs.read_all()
        epoch = int(np.frombuffer(value, dtype="=u8")[0]) + 1
        epochs.update(_u32([0]), np.array([epoch], dtype="=u8").tobytes())
        readers, started = self._writer(READERS_MAP), time.perf_counter()
        warned = False
        while True:
            _, marks = readers.read_all()
            per_cpu = np.frombuffer(marks, dtype=READER)
            if not ((per_cpu["active"] != 0) & (per_cpu["epoch"] < epoch)).any():
                break
            if not warned and time.perf_counter() - started > QUIESCE_WARN:
                log.warning("waiting for a search that began long ago", extra={"table": self.names.kind})
                warned = True
            time.sleep(QUIESCE_POLL)
        self._dirty.clear()
        self._held.clear()

    def _update(self, name: str, keys: bytes, values: bytes) -> None:
        """An update of a hash map: may free the element it replaces (a quiesce first if an
        earlier write to the map may have freed one a search still holds)."""
        if name in self._dirty:
            self.quiesce()
        self._writer(name).update(keys, values)
        self._dirty.add(name)

    def _delete(self, name: str, keys: bytes) -> None:
        if name in self._dirty:
            self.quiesce()
        self._writer(name).delete(keys)
        self._dirty.add(name)

    def _per_map(self, keys: np.ndarray) -> Iterator[tuple[str, np.ndarray, bytes]]:
        """(map, rows of `keys`, those keys as that map holds them) for each bucket map these
        buckets (tg_bucket_key) go into: the map of every family that can probe them
        (live.families: a bucket of no family goes to both)."""
        v4, v6 = lv.families(keys)
        if v4.any():
            yield self.names.buckets4, v4, lv.keys4(keys[v4]).tobytes()
        if v6.any():
            yield self.names.buckets, v6, keys[v6].tobytes()

    def _put_buckets(self, keys: np.ndarray, values: np.ndarray) -> None:
        for name, rows, packed in self._per_map(keys):
            self._update(name, packed, values[rows].tobytes())

    def _drop_buckets(self, keys: np.ndarray, held: bool = True) -> None:
        """Deletes buckets from the maps _put_buckets wrote them to. `held`: a search may hold
        them (else: none can, such as a bank no search reads since a quiesce)."""
        for name, _, packed in self._per_map(keys):
            if held:
                self._delete(name, packed)
            else:
                self._writer(name).delete(packed)

    def _put_records(self, slots: np.ndarray, records: bytes) -> None:
        """Records at slots nothing names yet (arrays: written in place, never freed)."""
        stats = self._writer(self.names.stats)
        keys = _u32(slots)
        stats.update(keys, bytes(stats.value_size * len(slots)))  # a slot's counters start from zero
        self._writer(self.names.rules).update(keys, records)

    def _zero_records(self, slots: Sequence[int] | np.ndarray) -> None:
        """After a quiesce: no search can still read these slots."""
        if len(slots):
            rules = self._writer(self.names.rules)
            rules.update(_u32(slots), bytes(rules.value_size * len(slots)))  # TG_RULE_F_LIVE clear

    def _apply_full(self, c: cp.Compiled) -> None:
        base, bank = c.base, c.bank
        assert bank is not None
        if len(base.stale):  # what a failed change left in the bank about to be written
            self._drop_buckets(base.stale)
            base.stale = cp.empty_keys()
        rows = np.flatnonzero(c.fresh)
        try:
            self._put_records(c.slots[rows], c.records[rows].tobytes())
            self._put_buckets(bank.keys, bank.buckets)
            # Stores, in program order before the switch's: x86 makes them visible in that order.
            self._prefilter(bank.number)[:] = bank.prefilter
            self._put_subtables(bank.number, bank.subtables.tobytes())  # and the switch
        except OSError:
            # The live bank is untouched: what went into the other one is removed with the next change.
            base.stale = np.concatenate([base.stale, bank.keys])
            raise
        live = c.live()
        self.current = cp.Live(live.bank, live.records, live.slots, live.keys, live.buckets, live.tables,
                               stale=base.keys, token=live.token)
        self.quiesce()  # no search is in the old bank any more: nothing there is held
        self._drop_buckets(base.keys, held=False)
        self.current.stale = cp.empty_keys()
        self._zero_records(c.freed)
        self._index_due = len(self.current) >= MIRROR_AHEAD

    def index_ahead(self) -> None:
        """After a full compile of MIRROR_AHEAD rules or more, builds the edit index (Live.mirror)
        in the background, so that the first edit does not wait for it. Called by the owner once
        the change that wrote it is over (control.apply.reconcile): built while the change goes
        on, it would compete with the change for the interpreter."""
        if self._index_due:
            self._index_due = False
            name = f"{self.names.kind}-mirror"
            threading.Thread(target=self.current.mirror, name=name, daemon=True).start()

    def _apply_edit(self, c: cp.Compiled) -> None:
        e = c.edit
        if e.records:
            self._put_records(np.array([s for s, _ in e.records]), b"".join(r for _, r in e.records))
        if self._set_bits(c.base.bank, e.sets):
            full_fence()  # the bits before the readers' marks are read (dataplane.kernel.fence)
            self.quiesce()  # no search that read the old bits goes on to read a bucket written next
        if e.tables_before is not None:
            self._put_subtables(c.base.bank, e.tables_before)
        for key, content in [*e.gains, *e.losses]:  # one element at a time, in order (edits.py)
            k = np.frombuffer(key, dtype=cp.KEY)
            if content:
                self._put_buckets(k, np.frombuffer(_bucket_values([content]), dtype=cp.BUCKET))
            else:
                self._drop_buckets(k)
        if e.tables_after is not None:
            self._put_subtables(c.base.bank, e.tables_after)
        entries = self._prefilter(c.base.bank)
        for which, blocks, tid in e.clears:  # no rule of the subtable meets them any more
            entries[blocks] &= ~np.uint64(pf.bit(tid, which))
        if e.freed:
            self.quiesce()
            self._zero_records(e.freed)
        self.current = c.live()

    def _put_subtables(self, bank: int, element: bytes) -> None:
        """`bank`'s subtables element into a place of the bank no search reads (not the one
        searched, nor one searched since the last quiesce), then match_bank switched to it: an
        array element is written in place, so a search must never read one being written."""
        free = [p for p in range(bank, PLACES, 2) if p != self._place and p not in self._held]
        if not free:
            self.quiesce()
            free = [p for p in range(bank, PLACES, 2) if p != self._place]
        self._writer(self.names.subtables).update(_u32([free[0]]), element)
        self._writer(BANK_MAP).update(_u32([self.names.table]), _u32([free[0]]))
        self._held.add(self._place)
        self._place = free[0]

    def close(self) -> None:
        """Unmaps match_prefilter (the mapping holds the map, and a duplicate of its fd, open)."""
        if self._mapped is not None:
            mapped, self._mapped = self._mapped[0], None
            try:
                mapped.close()
            except BufferError:
                pass  # a caller still holds a view: the mapping goes when that does

    def _prefilter(self, bank: int) -> np.ndarray:
        """This table's prefilter entries of `bank`: a view of the mapped match_prefilter."""
        if self._mapped is None:
            fd = self._table(pf.MAP).map_fd
            mapped = mmap.mmap(fd, pf.ENTRIES * pf.ENTRY.itemsize, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE)
            self._mapped = (mapped, np.frombuffer(mapped, dtype=pf.ENTRY))
        start = pf.offset(self.names.table, bank)
        return self._mapped[1][start : start + pf.BLOCKS]

    def _set_bits(self, bank: int, sets: Sequence[tuple[int, int, int, int]]) -> bool:
        """Sets the prefilter bits of an edit's added rules; whether any was not set already."""
        entries, changed = self._prefilter(bank), False
        for which, lo, hi, tid in sets:
            bit = np.uint64(pf.bit(tid, which))
            run = entries[lo : hi + 1]
            if not (run & bit).all():
                run |= bit
                changed = True
        return changed

    # --- reading back ---------------------------------------------------------------------------
    def adopt(self, intended: Sequence[Any] = ()) -> cp.Live:
        """Takes what the maps hold (written by an earlier process) as the current state, without
        writing anything (but an odd generation made even: the module docstring): a compile of the
        same rules then finds nothing to change, and rules keep their slots and counters.
        (`intended` is not needed: records say what each slot holds.)"""
        self._generation = None
        gen = self._gen()
        if gen & 1:  # a change died half-way: the maps hold what searches answer now (module docstring)
            self._set_gen(gen + 1)
            log.warning("match table adopted from a change that did not finish",
                        extra={"table": self.names.kind, "generation": gen + 1})
        keys, values = self._writer(BANK_MAP).read_all()
        banks = dict(zip(np.frombuffer(keys, _U32).tolist(), np.frombuffer(values, _U32).tolist(),
                         strict=True))
        self._place = banks.get(self.names.table, 0) & (PLACES - 1)
        bank = self._place & 1
        _, recs = self._writer(self.names.rules).read_all()
        records = np.frombuffer(recs, dtype=cp.RULE)
        bucket_keys, bucket_values = self._read_buckets()
        mine = bucket_keys["bank"] == bank
        # The live rules are those the live bank's buckets name (a record left live by a change
        # that died half-way is not one: its slot is simply free).
        named = bucket_values[mine]
        in_use = np.zeros(len(records), dtype=bool)
        in_use[named["slots"][np.arange(named["slots"].shape[1])[None, :] < named["count"][:, None]]] = True
        live = np.flatnonzero(in_use & (records["flags"] & cp.F_LIVE != 0))
        tables = np.zeros(0, dtype=cp.SUBTABLE)
        k, v = self._writer(self.names.subtables).read_all()
        elements = np.frombuffer(v, dtype=cp.SUBTABLES)
        for place, element in zip(np.frombuffer(k, _U32).tolist(), elements, strict=True):
            if place == self._place:
                tables = element["tables"][: int(element["count"])].copy()
        self.current = cp.Live(bank, records[live].copy(), live.astype(np.uint32), bucket_keys[mine].copy(),
                               bucket_values[mine].copy(), tables, stale=bucket_keys[~mine].copy())
        log.info("match table adopted", extra={"table": self.names.kind, "rules": len(live),
                                               "buckets": int(mine.sum()), "bank": bank})
        return self.current

    def _read_buckets(self) -> tuple[np.ndarray, np.ndarray]:
        """Every bucket of both maps, once each (tg_bucket_key, tg_bucket): a bucket of no
        family is in both, and read from the IPv6 one."""
        k, v = self._writer(self.names.buckets).read_all()
        k4, v4 = self._writer(self.names.buckets4).read_all()
        keys4 = lv.keys_of4(np.frombuffer(k4, dtype=lv.KEY4))
        own = keys4["family"] == lv.FAMILY_V4
        return (np.concatenate([np.frombuffer(k, dtype=cp.KEY), keys4[own]]),
                np.concatenate([np.frombuffer(v, dtype=cp.BUCKET), np.frombuffer(v4, dtype=cp.BUCKET)[own]]))

    def counts_by_rule(self, rule_ids: Collection[int] | None = None) -> dict[int, Counter]:
        """Packets and bytes per rule id, summed over the CPUs; only the rules in `rule_ids` when
        given (their slots alone are read from the kernel)."""
        stats = self._writer(self.names.stats)
        live = self.current
        slots, ids = live.slots.astype(np.intp), live.records["rule_id"]
        if rule_ids is not None:
            chosen = np.isin(ids, np.fromiter(rule_ids, dtype=np.uint32))
            slots, ids = slots[chosen], ids[chosen]
            raw = b"".join(stats.lookup(_u32([s])) for s in slots.tolist())
            per_slot = np.frombuffer(raw, dtype=np.uint64)
        else:
            _, values = stats.read_all()
            per_slot = np.frombuffer(values, dtype=np.uint64).reshape(-1, stats.value_size // 8)[slots]
        # (slot, [packets, bytes]) summed over the CPUs: a per-CPU value is a tg_counter per CPU
        totals = per_slot.reshape(len(slots), stats.value_size // 16, 2).sum(axis=1)
        return {rid: Counter(packets, nbytes)
                for rid, (packets, nbytes) in zip(ids.tolist(), totals.tolist(), strict=True)}

    def occupancy(self) -> dict[str, tuple[int, int]]:
        """Map name -> (entries used, capacity) of this table."""
        live = self.current
        v4, v6 = live.bucket_counts()
        return {self.names.rules: (len(live), self.capacity.rules),
                self.names.buckets4: (v4, self.capacity.buckets4),
                self.names.buckets: (v6, self.capacity.buckets)}

    def _writer(self, name: str) -> MapWriter:
        writer = self._writers.get(name)
        if writer is None:
            t = self._table(name)
            writer = MapWriter(t.map_fd, name, ctypes.sizeof(t.Key), ctypes.sizeof(t.Leaf))
            self._writers[name] = writer
        return writer
