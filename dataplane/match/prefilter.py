"""The prefilter of a classifier table (pure numpy): for each block of addresses, the subtables that
hold a rule whose source (or destination) prefix meets it (layout and blocks: tidegate_abi.h; the
search: xdp/include/match.h; docs/classifier.md). A bank's entries are one (BLOCKS,) uint64 array:
source bits in the low half, destination bits in the high half (`entries`).

Each rule's prefix for an address meets one contiguous run of blocks, [lo, hi] (`blocks`): an
IPv4 prefix of 16 bits or more one block, a shorter one 2^(16 - length) of them; an IPv6 prefix of
TG_PREFILTER_V6_BITS or more the block its first 32 bits hash to, a shorter one every IPv6 block;
a rule for any family (whose prefixes are empty) every block of both families. A table's bits are
the OR over its rules of (1 << subtable id) over those runs (`field_bits`); `Runs` keeps the runs
per subtable, so that an edit removing a rule clears exactly the blocks no other rule of its
subtable still meets (`uncovered`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from dataplane import abi

BLOCK_BITS = abi.define("TG_PREFILTER_BLOCK_BITS")
V6 = abi.define("TG_PREFILTER_V6")
BLOCKS = abi.define("TG_PREFILTER_FIELD")  # entries per (table, bank)
V6_BITS = abi.define("TG_PREFILTER_V6_BITS")
HASH = abi.define("TG_PREFILTER_HASH")
ENTRIES = abi.define("TG_PREFILTER_ENTRIES")
DST_SHIFT = abi.define("TG_PREFILTER_DST_SHIFT")
FIELDS = 2
SRC, DST = 0, 1  # the address fields, in that order everywhere here
SHIFTS = (0, DST_SHIFT)  # where each field's bits sit in an entry
BANKS = abi.define("TG_BANKS")
IDS = abi.define("TG_SUBTABLES_MAX")  # subtable ids with a bit (every id is below it)
ENTRY = np.dtype("=u8")
V4, V6_FAMILY = abi.define("TG_FAMILY_V4"), abi.define("TG_FAMILY_V6")
MAP = "match_prefilter"

Blocks = npt.NDArray[np.int64]


def offset(table: int, bank: int) -> int:
    """Index of block 0 of (table, bank) in the map."""
    return (table * BANKS + bank) * BLOCKS


def _top32(addr: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint64]:
    """(n, 16) address bytes -> their first 32 bits, as the program reads them (big-endian)."""
    a = addr[:, :4].astype(np.uint64)
    return (a[:, 0] << np.uint64(24)) | (a[:, 1] << np.uint64(16)) | (a[:, 2] << np.uint64(8)) | a[:, 3]


def _v6_block(top: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    """The block of IPv6 addresses by their first 32 bits: Fibonacci hashing to 16 bits."""
    return (V6 + (((top * np.uint64(HASH)) & np.uint64(0xFFFFFFFF)) >> np.uint64(32 - BLOCK_BITS))).astype(
        np.int64)


def blocks(addr: npt.NDArray[np.uint8], length: npt.NDArray[Any], family: npt.NDArray[Any]
           ) -> tuple[Blocks, Blocks]:
    """(lo, hi): the run of blocks each prefix (address bytes, length, the rule's family) meets."""
    top = _top32(np.ascontiguousarray(addr, dtype=np.uint8).reshape(-1, 16))
    length = np.asarray(length, dtype=np.int64)
    family = np.asarray(family)
    span = np.left_shift(1, np.clip(BLOCK_BITS - length, 0, BLOCK_BITS)).astype(np.int64)
    lo = (top >> np.uint64(32 - BLOCK_BITS)).astype(np.int64) & ~(span - 1)
    hi = lo + span - 1
    v6 = family == V6_FAMILY
    v6_long = v6 & (length >= V6_BITS)
    lo = np.where(v6, V6, lo)
    hi = np.where(v6, BLOCKS - 1, hi)
    point = _v6_block(top)
    lo, hi = np.where(v6_long, point, lo), np.where(v6_long, point, hi)
    anyfam = (family != V4) & ~v6
    return np.where(anyfam, 0, lo), np.where(anyfam, BLOCKS - 1, hi)


def prefix_length(mask_words: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """(n, 2) address mask words (records' src_mask, dst_mask) -> their prefix lengths (the
    masks' one bits, counted by word)."""
    words = np.ascontiguousarray(mask_words).view(np.uint64).reshape(-1, 2)
    return np.bitwise_count(words).sum(axis=1, dtype=np.int64)  # type: ignore[no-any-return]


def rule_blocks(src: npt.NDArray[np.uint8], src_len: npt.NDArray[Any], dst: npt.NDArray[np.uint8],
                dst_len: npt.NDArray[Any], family: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """(n, FIELDS, 2): each rule's runs, [field][lo, hi], from its address bytes (n, 16) and
    prefix lengths."""
    out = np.zeros((len(family), FIELDS, 2), dtype=np.int64)
    out[:, SRC, 0], out[:, SRC, 1] = blocks(src, src_len, family)
    out[:, DST, 0], out[:, DST, 1] = blocks(dst, dst_len, family)
    return out


def record_blocks(records: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """(n, FIELDS, 2): each record's (struct tg_rule) runs, [field][lo, hi]."""
    def addr(name: str) -> npt.NDArray[np.uint8]:
        return np.ascontiguousarray(records[name]).view(np.uint8).reshape(-1, 16)

    return rule_blocks(addr("src"), prefix_length(records["src_mask"]), addr("dst"),
                       prefix_length(records["dst_mask"]), records["family"])


def field_bits(lo: Blocks, hi: Blocks, ids: npt.NDArray[Any]) -> npt.NDArray[np.uint32]:
    """(BLOCKS,): per block, a bit per subtable id holding a run that meets it."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and int(ids.max()) >= IDS:
        raise ValueError(f"subtable id {int(ids.max())}: the prefilter has bits for ids below {IDS}")
    out = np.zeros(BLOCKS, dtype=np.uint32)
    bits = np.left_shift(np.uint32(1), ids.astype(np.uint32))
    point = lo == hi
    np.bitwise_or.at(out, lo[point], bits[point])
    # Runs of many blocks (short prefixes, wildcards) are few once equal ones are merged.
    ranged = np.unique(np.stack([ids[~point], lo[~point], hi[~point]], axis=1), axis=0)
    for t, start, end in ranged.tolist():
        out[start : end + 1] |= np.uint32(1 << t)
    return out


def _covered(lo: Blocks, hi: Blocks, start: int, end: int) -> npt.NDArray[np.bool_]:
    """(end - start + 1,): which blocks of [start, end] some run [lo, hi] meets."""
    diff = np.zeros(end - start + 2, dtype=np.int64)
    np.add.at(diff, np.clip(lo, start, end + 1) - start, 1)
    np.add.at(diff, np.clip(hi + 1, start, end + 1) - start, -1)
    return np.cumsum(diff)[:-1] > 0


def entries(runs: npt.NDArray[np.int64], ids: npt.NDArray[Any]) -> npt.NDArray[np.uint64]:
    """(BLOCKS,) entries of a bank, from its rules' runs (rule_blocks, record_blocks) and each
    one's subtable id (-1: none)."""
    out = np.zeros(BLOCKS, dtype=ENTRY)
    ids = np.asarray(ids)
    if (ids < 0).any():  # -1: in no subtable (shadowed), so no bits
        runs, ids = runs[ids >= 0], ids[ids >= 0]
    for f in range(FIELDS):
        out |= field_bits(runs[:, f, 0], runs[:, f, 1], ids).astype(ENTRY) << np.uint64(SHIFTS[f])
    return out


def bit(table_id: int, which: int) -> int:
    """Subtable `table_id`'s bit in the half of field `which`."""
    return 1 << (table_id + SHIFTS[which])


def probe_index(addr: bytes, family: int) -> int:
    """The block of a packet's address (16 bytes, IPv4 in the first four)."""
    top = int.from_bytes(addr[:4], "big")
    if family == V6_FAMILY:
        return V6 | ((top * HASH) & 0xFFFFFFFF) >> (32 - BLOCK_BITS)
    return top >> (32 - BLOCK_BITS)


_DEAD = (BLOCKS, -1)  # the run of a removed rule's row: it meets no block
_SPARE = 64  # rows a subtable's arrays hold beyond its rules (and an eighth more), for additions


@dataclass
class Runs:
    """Every live rule's runs, per subtable id (what clearing a removed rule's bits needs).

    A subtable's rows are arrays with room to spare: an edit adds rules in place and marks those
    it removes dead (slot -1, a run meeting no block), so that it costs the rules it touches,
    not a copy of every rule of the subtable; dead rows are dropped once they are half of them."""

    slots: dict[int, npt.NDArray[np.int64]] = field(default_factory=dict)  # id -> (room,) slots
    runs: dict[int, npt.NDArray[np.int64]] = field(default_factory=dict)  # id -> (room, FIELDS, 2)
    size: dict[int, int] = field(default_factory=dict)  # id -> rows in use (live or dead)
    dead: dict[int, int] = field(default_factory=dict)  # id -> dead rows among them

    @staticmethod
    def of(records: npt.NDArray[Any], slots: npt.NDArray[Any], ids: npt.NDArray[Any]) -> Runs:
        out = Runs()
        runs = record_blocks(records)
        ids = np.asarray(ids, dtype=np.int64)
        for t in np.unique(ids[ids >= 0]).tolist():  # -1: in no subtable (shadowed)
            mine = ids == t
            out._set(t, np.asarray(slots, dtype=np.int64)[mine], runs[mine])
        return out

    def _set(self, t: int, slots: npt.NDArray[np.int64], runs: npt.NDArray[np.int64]) -> None:
        n = len(slots)
        room = n + n // 8 + _SPARE  # the first copy comes after many additions, not the 65th
        self.slots[t] = np.full(room, -1, dtype=np.int64)
        self.runs[t] = np.empty((room, FIELDS, 2), dtype=np.int64)
        self.runs[t][:] = _DEAD
        self.slots[t][:n], self.runs[t][:n] = slots, runs
        self.size[t], self.dead[t] = n, 0

    def _rows(self, t: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        n = self.size.get(t, 0)
        if not n:
            return np.zeros(0, dtype=np.int64), np.zeros((0, FIELDS, 2), dtype=np.int64)
        return self.slots[t][:n], self.runs[t][:n]

    def run_of(self, table_id: int, slot: int) -> npt.NDArray[np.int64]:
        """(FIELDS, 2): the runs of the rule at `slot` of subtable `table_id`."""
        slots, runs = self._rows(table_id)
        rows = np.flatnonzero(slots == slot)
        if not rows.size:
            raise KeyError(f"slot {slot} is not a rule of subtable {table_id}")
        return runs[rows[0]]

    def uncovered(self, table_id: int, run: npt.NDArray[np.int64], which: int, without: set[int],
                  extra: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
        """Blocks of `run` ([lo, hi] of field `which`) that no rule of subtable `table_id` meets
        once the slots `without` are gone and the runs `extra` (added rules') are in."""
        lo, hi = int(run[0]), int(run[1])
        slots, runs = self._rows(table_id)
        held = runs[:, which]
        rows = np.flatnonzero((held[:, 0] <= hi) & (held[:, 1] >= lo))  # usually few (dead: never)
        rows = rows[~np.isin(slots[rows], np.fromiter(without, np.int64, len(without)))]
        near = np.concatenate([held[rows], *[e[which][None, :] for e in extra]])
        near = near[(near[:, 0] <= hi) & (near[:, 1] >= lo)]
        if not len(near):
            return np.arange(lo, hi + 1)
        if lo == hi:
            return np.zeros(0, dtype=np.int64)  # every run in `near` meets it
        return lo + np.flatnonzero(~_covered(near[:, 0], near[:, 1], lo, hi))

    def commit(self, added: list[tuple[int, int, npt.NDArray[np.int64]]], removed: dict[int, int]) -> None:
        """Applies an edit: `added` (slot, subtable id, runs), `removed` {slot: subtable id}."""
        for slot, t in removed.items():
            n = self.size[t]
            for row in np.flatnonzero(self.slots[t][:n] == slot).tolist():
                self.slots[t][row], self.runs[t][row] = -1, _DEAD
                self.dead[t] += 1
        for slot, t, run in added:
            n = self.size.get(t, 0)
            if t not in self.slots or n == len(self.slots[t]):
                self._grow(t)
                n = self.size[t]
            self.slots[t][n], self.runs[t][n] = slot, run
            self.size[t] = n + 1
        for t in {t for t in removed.values() if 2 * self.dead[t] > self.size[t]}:
            self._grow(t)  # (drops the dead rows)

    def _grow(self, t: int) -> None:
        """The subtable's live rows again, with room to spare for as many more."""
        slots, runs = self._rows(t)
        live = slots >= 0
        kept_slots, kept_runs = slots[live], runs[live]
        n = len(kept_slots)
        room = max(2 * n, n + _SPARE)
        self.slots[t] = np.full(room, -1, dtype=np.int64)
        self.runs[t] = np.empty((room, FIELDS, 2), dtype=np.int64)
        self.runs[t][:] = _DEAD
        self.slots[t][:n], self.runs[t][:n] = kept_slots, kept_runs
        self.size[t], self.dead[t] = n, 0


def live_ids(slots: npt.NDArray[Any], keys: npt.NDArray[Any], buckets: npt.NDArray[Any]
             ) -> npt.NDArray[np.int64]:
    """The subtable id of each of `slots` (a bank's live rules), from the bank's buckets; -1 for
    a rule in no bucket (shadowed: dataplane.match.shadow)."""
    counts = buckets["count"].astype(np.int64)
    held = np.arange(buckets["slots"].shape[1])[None, :] < counts[:, None]
    in_buckets = buckets["slots"][held].astype(np.int64)
    wanted = np.asarray(slots, dtype=np.int64)
    if not len(in_buckets):
        return np.full(len(wanted), -1, dtype=np.int64)
    ids = np.repeat(keys["table"].astype(np.int64), counts)
    order = np.argsort(in_buckets)
    found = order[np.minimum(np.searchsorted(in_buckets, wanted, sorter=order), len(order) - 1)]
    return np.where(in_buckets[found] == wanted, ids[found], -1)
