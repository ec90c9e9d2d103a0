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


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def prefix_length(mask_words: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """(n, 2) address mask words (records' src_mask, dst_mask) -> their prefix lengths."""
    return _POPCOUNT[np.ascontiguousarray(mask_words).view(np.uint8).reshape(-1, 16)].sum(axis=1)


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
    placed = np.asarray(ids) >= 0  # -1: in no subtable (shadowed), so no bits
    runs, ids = runs[placed], np.asarray(ids)[placed]
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


@dataclass
class Runs:
    """Every live rule's runs, per subtable id (what clearing a removed rule's bits needs)."""

    slots: dict[int, npt.NDArray[np.int64]] = field(default_factory=dict)  # id -> (k,) slots
    runs: dict[int, npt.NDArray[np.int64]] = field(default_factory=dict)  # id -> (k, FIELDS, 2)

    @staticmethod
    def of(records: npt.NDArray[Any], slots: npt.NDArray[Any], ids: npt.NDArray[Any]) -> Runs:
        out = Runs()
        runs = record_blocks(records)
        ids = np.asarray(ids, dtype=np.int64)
        for t in np.unique(ids[ids >= 0]).tolist():  # -1: in no subtable (shadowed)
            mine = ids == t
            out.slots[t] = np.asarray(slots, dtype=np.int64)[mine]
            out.runs[t] = runs[mine]
        return out

    def run_of(self, table_id: int, slot: int) -> npt.NDArray[np.int64]:
        """(FIELDS, 2): the runs of the rule at `slot` of subtable `table_id`."""
        rows = np.flatnonzero(self.slots[table_id] == slot)
        if not rows.size:
            raise KeyError(f"slot {slot} is not a rule of subtable {table_id}")
        return self.runs[table_id][rows[0]]

    def uncovered(self, table_id: int, run: npt.NDArray[np.int64], which: int, without: set[int],
                  extra: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
        """Blocks of `run` ([lo, hi] of field `which`) that no rule of subtable `table_id` meets
        once the slots `without` are gone and the runs `extra` (added rules') are in."""
        lo, hi = int(run[0]), int(run[1])
        held = self.runs.get(table_id, np.zeros((0, FIELDS, 2), dtype=np.int64))[:, which]
        slots = self.slots.get(table_id, np.zeros(0, dtype=np.int64))
        rows = np.flatnonzero((held[:, 0] <= hi) & (held[:, 1] >= lo))  # usually few
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
        for t in set(removed.values()):
            gone = [s for s, tid in removed.items() if tid == t]
            keep = ~np.isin(self.slots[t], gone)
            self.slots[t], self.runs[t] = self.slots[t][keep], self.runs[t][keep]
        for slot, t, run in added:
            self.slots[t] = np.append(self.slots.get(t, np.zeros(0, dtype=np.int64)), slot)
            self.runs[t] = np.concatenate([self.runs.get(t, np.zeros((0, FIELDS, 2), dtype=np.int64)),
                                           run[None]])


def live_ids(slots: npt.NDArray[Any], keys: npt.NDArray[Any], buckets: npt.NDArray[Any]
             ) -> npt.NDArray[np.int64]:
    """The subtable id of each of `slots` (a bank's live rules), from the bank's buckets; -1 for
    a rule in no bucket (shadowed: dataplane.match.shadow)."""
    counts = buckets["count"].astype(np.int64)
    held = np.arange(buckets["slots"].shape[1])[None, :] < counts[:, None]
    in_buckets = buckets["slots"][held].astype(np.int64)
    ids = np.repeat(keys["table"].astype(np.int64), counts)
    order = np.argsort(in_buckets)
    wanted = np.asarray(slots, dtype=np.int64)
    at = np.minimum(np.searchsorted(in_buckets, wanted, sorter=order), max(len(order) - 1, 0))
    if not len(order):
        return np.full(len(wanted), -1, dtype=np.int64)
    found = order[at]
    return np.where(in_buckets[found] == wanted, ids[found], -1)
