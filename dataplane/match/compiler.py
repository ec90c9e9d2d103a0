"""Compiles a rule set (RuleColumns) into the elements of one bank of the classifier (pure numpy).

Layouts come from the ABI header (dataplane.abi.struct_dtype): a record per rule (struct tg_rule,
at its slot), the bank's subtables (struct tg_subtables, one element) and its buckets (struct
tg_bucket_key -> struct tg_bucket). Nothing is written here; dataplane.match.table writes what
`compile_rules` returns, in the order that keeps every packet on the old policy or the new one
(docs/classifier.md).

A rule keeps its slot, and with it its counters, from one policy to the next when its record is
unchanged (every field, order and action included); new records get slots neither policy uses, so
both policies are whole in the maps while the bank switches. Capacity is checked before anything
is written: rule slots of both policies together against capacities.<table>_rules, buckets of
both banks together against the bucket maps' (capacities.<table>_buckets4 for the buckets IPv4
packets probe, <table>_buckets for the others; a bucket of no family is in both: live.families),
subtables against TG_SUBTABLES_MAX.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from dataplane import abi, protocols
from dataplane.match import prefilter as pf
from dataplane.match import tuples as tp
from dataplane.match.columns import RuleColumns
from dataplane.match.live import BUCKET, KEY, RULE, SUBTABLE, SUBTABLES, Live, count_buckets, empty_keys
from dataplane.match.shadow import shadowed

F_LOG = abi.define("TG_RULE_F_LOG")
F_LIVE = abi.define("TG_RULE_F_LIVE")
F_PROTO = abi.define("TG_RULE_F_PROTO")
F_PORTS = abi.define("TG_RULE_F_PORTS")
TCP_NEW_MASK, TCP_NEW = abi.define("TG_TCP_NEW_MASK"), abi.define("TG_TCP_NEW")
# tg_rule.l4_mask of an ICMP type, an ICMP code (both: the two ORed), TCP SYN
MASK_ICMP_TYPE, MASK_ICMP_CODE = 0xFF00, 0x00FF
ICMP_PROTOCOLS = sorted(protocols.ICMP_NUMBERS)  # the protocols whose type and code a rule may name
TCP = protocols.TCP
SLOT_NONE = abi.define("TG_SLOT_NONE")
ORDER_NONE = abi.define("TG_ORDER_NONE")
BANKS = abi.define("TG_BANKS")
FAMILIES = (0, abi.define("TG_FAMILY_V4"), abi.define("TG_FAMILY_V6"))
ADDR_LIMIT = {0: 0, abi.define("TG_FAMILY_V4"): 32, abi.define("TG_FAMILY_V6"): 128}
PORT_ANY = (0, 0xFFFF)

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class Capacity:
    """Entries the maps of one table hold (dataplane.kernel.build_settings.Capacities)."""

    rules: int
    buckets: int  # <table>_buckets: the buckets IPv6 packets probe (tg_bucket_key)
    buckets4: int  # <table>_buckets4: the buckets IPv4 packets probe (tg_bucket_key4)


def check_buckets(table: str, capacity: Capacity, held: tuple[int, int], added: tuple[int, int],
                  what: str) -> None:
    """ValueError naming the setting to raise when `held` entries plus `added` ones (each: in the
    IPv4 map, in the other) do not fit a bucket map of `table`. `what`: when they are held together."""
    for setting, cap, now, more, family in (
        (f"{table}_buckets4", capacity.buckets4, held[0], added[0], "IPv4"),
        (f"{table}_buckets", capacity.buckets, held[1], added[1], "IPv6 and any-family"),
    ):
        if now + more > cap:
            raise ValueError(f"{table}: the policy needs {more} more {family} buckets, {now + more} {what}, "
                             f"but the map {setting} holds {cap}: raise capacities.{setting}")


@dataclass(frozen=True, eq=False)
class Bank:
    """The elements of one bank: its subtables element, its buckets and its prefilter entries."""

    number: int
    subtables: Array  # shape (1,), SUBTABLES
    keys: Array  # (m,), KEY
    buckets: Array  # (m,), BUCKET
    count: int  # subtables used
    prefilter: Array  # (prefilter.BLOCKS,) uint64: the bank's prefilter entries


@dataclass(frozen=True, eq=False)
class Compiled:
    """A rule set compiled against `base` (valid while the table still holds base)."""

    table: str
    base: Live
    columns: RuleColumns
    records: Array  # (n,) RULE, row order
    slots: npt.NDArray[np.uint32]  # (n,)
    fresh: npt.NDArray[np.bool_]  # (n,): rows whose slot must be written (a new record)
    freed: npt.NDArray[np.uint32]  # slots of base no longer used (zeroed after the switch)
    bank: Bank | None  # a full compile: the other bank's elements
    unchanged: bool  # the very rules base holds: nothing to write
    edit: Any = None  # instead of a bank: dataplane.match.edits.Edit of the live bank
    token: object = field(default_factory=object)  # Live.token of what this makes of its base

    def live(self) -> Live:
        """What the table holds once this is written (call once, after writing it: an edit is
        committed to the mirror it shares with base)."""
        if self.unchanged:
            return self.base
        if self.edit is not None:
            m = self.base.mirror()
            self.edit.commit(m)
            return Live(self.base.bank, mirror=m, token=self.token)
        assert self.bank is not None
        tables = self.bank.subtables["tables"][0, : self.bank.count].copy()
        return Live(self.bank.number, self.records, self.slots, self.bank.keys, self.bank.buckets, tables,
                    token=self.token)

    def rebased(self, base: Live) -> Compiled:
        """This compile for another table whose current content is base's (the same token and
        as many stale keys: the capacity check counts them): the same writes, the same result."""
        if base.token != self.base.token or len(base.stale) != len(self.base.stale):
            raise ValueError("rebased: the tables hold different contents")
        return dataclasses.replace(self, base=base)


def records(cols: RuleColumns) -> Array:
    """The record (struct tg_rule) of every rule, in row order."""
    out = np.zeros(len(cols), dtype=RULE)
    src_len, dst_len = cols.src_len.astype(np.intp), cols.dst_len.astype(np.intp)
    out["src_mask"] = tp.ADDR_MASKS[src_len]
    out["src"] = tp.address_words(cols.src_addr) & out["src_mask"]
    out["dst_mask"] = tp.ADDR_MASKS[dst_len]
    out["dst"] = tp.address_words(cols.dst_addr) & out["dst_mask"]
    out["order"] = cols.order
    out["rule_id"] = cols.rule_id
    out["mark"] = cols.mark
    for name in ("sport_lo", "sport_hi", "dport_lo", "dport_hi"):
        out[name] = getattr(cols, name)
    out["family"] = cols.family
    out["proto"] = np.where(cols.proto_any, 0, cols.proto)
    out["action"] = cols.action
    ported = ((cols.sport_lo != PORT_ANY[0]) | (cols.sport_hi != PORT_ANY[1]) | (cols.dport_lo != PORT_ANY[0])
              | (cols.dport_hi != PORT_ANY[1]))
    want, mask = l4_want_mask(cols)
    out["l4_want"], out["l4_mask"] = want, mask
    out["flags"] = ((cols.flags & F_LOG) | F_LIVE | np.where(cols.proto_any, 0, F_PROTO)
                    | np.where(ported, F_PORTS, 0)).astype(np.uint8)
    return out


def l4_want_mask(cols: RuleColumns) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.uint16]]:
    """tg_rule.l4_want and l4_mask: the packet's l4 word (ICMP type << 8 | code, or the TCP
    flags) under the mask must be the want."""
    icmp_type, icmp_code = cols.icmp_type.astype(np.uint16), cols.icmp_code.astype(np.uint16)
    want = (np.where(cols.has_icmp_type, icmp_type << 8, 0) | np.where(cols.has_icmp_code, icmp_code, 0)
            | np.where(cols.syn, TCP_NEW, 0))
    mask = (np.where(cols.has_icmp_type, MASK_ICMP_TYPE, 0) | np.where(cols.has_icmp_code, MASK_ICMP_CODE, 0)
            | np.where(cols.syn, TCP_NEW_MASK, 0))
    return want.astype(np.uint16), mask.astype(np.uint16)


def columns_of(recs: Array) -> RuleColumns:
    """The rules records hold (records() inverted: the full compile an edit falls back to)."""
    n = len(recs)
    cols = RuleColumns.empty(n)
    cols.rule_id[:] = recs["rule_id"]
    cols.order[:] = recs["order"]
    cols.action[:] = recs["action"]
    cols.flags[:] = recs["flags"] & F_LOG
    cols.family[:] = recs["family"]
    cols.src_addr[:] = np.ascontiguousarray(recs["src"]).view(np.uint8).reshape(n, 16)
    cols.dst_addr[:] = np.ascontiguousarray(recs["dst"]).view(np.uint8).reshape(n, 16)
    cols.src_len[:] = np.unpackbits(np.ascontiguousarray(recs["src_mask"]).view(np.uint8).reshape(n, 16),
                                    axis=1).sum(axis=1)
    cols.dst_len[:] = np.unpackbits(np.ascontiguousarray(recs["dst_mask"]).view(np.uint8).reshape(n, 16),
                                    axis=1).sum(axis=1)
    cols.proto_any[:] = (recs["flags"] & F_PROTO) == 0
    cols.proto[:] = recs["proto"]
    for name in ("sport_lo", "sport_hi", "dport_lo", "dport_hi", "mark"):
        getattr(cols, name)[:] = recs[name]
    tcp = ((recs["flags"] & F_PROTO) != 0) & (recs["proto"] == TCP)
    mask, want = recs["l4_mask"], recs["l4_want"]
    cols.syn[:] = tcp & (mask != 0)
    cols.has_icmp_type[:] = ~tcp & ((mask & MASK_ICMP_TYPE) != 0)
    cols.has_icmp_code[:] = ~tcp & ((mask & MASK_ICMP_CODE) != 0)
    cols.icmp_type[:] = np.where(cols.has_icmp_type, want >> 8, 0)
    cols.icmp_code[:] = np.where(cols.has_icmp_code, want & 0xFF, 0)
    return cols


def check(cols: RuleColumns, table: str) -> None:
    """What the compiler relies on, with the first offending rule named (index in the set)."""
    icmp = ~cols.proto_any & _among(cols.proto, ICMP_PROTOCOLS)
    limit = _limit(cols.family)
    problems: list[tuple[str, npt.NDArray[np.bool_]]] = [
        ("family: must be 0 (any), 4 or 6", ~_among(cols.family, FAMILIES)),
        ("src_len: longer than the family's addresses", cols.src_len > limit),
        ("dst_len: longer than the family's addresses", cols.dst_len > limit),
        ("sport: low above high", cols.sport_lo > cols.sport_hi),
        ("dport: low above high", cols.dport_lo > cols.dport_hi),
        ("icmp_type: needs protocol icmp (1) or icmpv6 (58)", cols.has_icmp_type & ~icmp),
        ("icmp_code: needs protocol icmp (1) or icmpv6 (58)", cols.has_icmp_code & ~icmp),
        ("syn: needs protocol tcp (6)", cols.syn & (cols.proto_any | (cols.proto != TCP))),
        ("order: not increasing (rows must be in judging order)",
         np.r_[False, cols.order[1:] <= cols.order[:-1]]),
    ]
    for what, bad in problems:
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{table}[{i}] (rule {int(cols.rule_id[i])}).{what}")
    if len(cols) < 2:
        return
    ids, counts = np.unique(cols.rule_id, return_counts=True)
    if (counts > 1).any():
        rid = int(ids[np.argmax(counts > 1)])
        raise ValueError(f"{table}: rule id {rid} is used {int(counts.max())} times")


def _among(values: npt.NDArray[Any], choices: Any) -> npt.NDArray[np.bool_]:
    """np.isin for a few choices (a comparison each: no sort, which costs more on few rows)."""
    out = np.zeros(values.shape, dtype=bool)
    for choice in choices:
        out |= values == choice
    return out


def _limit(family: npt.NDArray[np.uint8]) -> npt.NDArray[np.intp]:
    out = np.zeros(family.shape, dtype=np.intp)
    for fam, bits in ADDR_LIMIT.items():
        out[family == fam] = bits
    return out


def assign_slots(recs: Array, base: Live, capacity: int, table: str
                 ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.bool_], npt.NDArray[np.uint32]]:
    """(slot per row, rows with a new record, base slots freed). Unchanged records keep their
    slots; fresh ones take slots no rule holds."""
    if len(base):
        old = dict(zip(base.records.view(f"V{RULE.itemsize}").tolist(), base.slots.tolist(), strict=True))
        found = np.array([old.get(r, -1) for r in recs.view(f"V{RULE.itemsize}").tolist()], dtype=np.int64)
    else:
        found = np.full(len(recs), -1, dtype=np.int64)  # nothing held: every record is new
    fresh = found < 0
    kept = found[~fresh].astype(np.uint32)
    peak = len(base) + int(fresh.sum())
    if peak > capacity:
        raise ValueError(f"{table}: the policy needs {len(recs)} rule slots, {peak} while the previous "
                         f"policy is still live ({len(base)} in use, {len(kept)} shared), but the map holds "
                         f"{capacity}: raise capacities.{table}_rules")
    used = np.zeros(capacity, dtype=bool)
    used[base.slots] = True
    slots = np.zeros(len(recs), dtype=np.uint32)
    slots[~fresh] = kept
    slots[fresh] = np.flatnonzero(~used)[: int(fresh.sum())]
    used[kept] = False
    freed = base.slots[used[base.slots]]
    return slots, fresh, freed.astype(np.uint32)


def build_bank(cols: RuleColumns, slots: npt.NDArray[np.uint32], assignment: tp.Assignment,
               number: int) -> Bank:
    """The subtables, buckets and prefilter entries holding every row (row order = first-match
    order)."""
    fields = tp.Fields.of(cols)
    key_parts, bucket_parts = [], []
    subtables = np.zeros(1, dtype=SUBTABLES)
    tables = np.zeros(len(assignment.tuples), dtype=SUBTABLE)
    for table_id, t in enumerate(assignment.tuples):
        rows = np.flatnonzero(assignment.table_of == table_id)
        keys = _keys(tp.masked(fields.take(rows), t), number, table_id)
        distinct, inverse, order = _group(keys)  # order: rows stay in first-match order within a bucket
        grouped = inverse[order]
        starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
        rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
        buckets = np.zeros(len(distinct), dtype=BUCKET)
        buckets["count"] = np.bincount(inverse, minlength=len(distinct))
        if buckets["count"].max(initial=0) > tp.BUCKET_MAX:
            raise AssertionError("assign() let a bucket overflow")  # the hash grouping is exact or stricter
        buckets["slots"][grouped, rank] = slots[rows[order]]
        key_parts.append(distinct)
        bucket_parts.append(buckets)
        src_m, dst_m, sport_m, dport_m, fam_m, proto_m = tp.masks_of(t)
        tables[table_id] = ((src_m, dst_m, int(cols.order[rows].min()), sport_m, dport_m, fam_m, proto_m,
                             table_id, 0))
    by_best = np.argsort(tables["best"], kind="stable")
    subtables["count"] = len(tables)
    subtables["tables"][0, : len(tables)] = tables[by_best]
    keys_all = np.concatenate(key_parts) if key_parts else empty_keys()
    buckets_all = np.concatenate(bucket_parts) if bucket_parts else np.zeros(0, dtype=BUCKET)
    runs = pf.rule_blocks(cols.src_addr, cols.src_len, cols.dst_addr, cols.dst_len, cols.family)
    # a shadowed rule (table_of -1) has no bucket, and entries() gives it no bits
    return Bank(number, subtables, keys_all, buckets_all, len(tables), pf.entries(runs, assignment.table_of))


def _group(keys: Array) -> tuple[Array, npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """(the distinct keys, each row's index among them, the rows by that index and then by row):
    grouped by a 64-bit hash of the key's words, checked exactly (a hash shared by different keys
    is sorted out by comparing the keys themselves)."""
    words = np.ascontiguousarray(keys).view(np.uint64).reshape(len(keys), KEY.itemsize // 8)
    with np.errstate(over="ignore"):
        h = np.zeros(len(keys), dtype=np.uint64)
        for i in range(words.shape[1]):
            h = (h ^ words[:, i]) * np.uint64(0x9E3779B97F4A7C15)
            h ^= h >> np.uint64(31)
    order = np.argsort(h, kind="stable")
    sorted_h = h[order]
    first = np.r_[True, sorted_h[1:] != sorted_h[:-1]] if len(keys) else np.zeros(0, dtype=bool)
    group = np.cumsum(first) - 1
    starts = order[first]
    if not (words[order] == words[starts[group]]).all():  # two keys share a hash: the exact way
        distinct, inverse = np.unique(keys.view(f"V{KEY.itemsize}"), return_inverse=True)
        inverse = inverse.ravel()
        return distinct.view(KEY), inverse, np.argsort(inverse, kind="stable")
    inverse = np.empty(len(keys), dtype=np.intp)
    inverse[order] = group
    return keys[starts], inverse, order


def _keys(k: tp.Key, bank: int, table_id: int) -> Array:
    out = np.zeros(len(k.sport), dtype=KEY)
    out["src"], out["dst"] = k.src, k.dst
    out["sport"], out["dport"] = k.sport, k.dport
    out["family"], out["proto"] = k.family, k.proto
    out["bank"], out["table"] = bank, table_id
    return out


def _assign(cols: RuleColumns) -> tp.Assignment:
    """Every rule's subtable; when they do not all fit, the rules an earlier one shadows get none
    (table_of -1: a record, no bucket; dataplane.match.shadow) and the others are tried again."""
    try:
        return tp.assign(tp.rule_tuples(cols), tp.Fields.of(cols))
    except tp.TooManySubtables:
        dead = shadowed(cols)
        if not dead.any():
            raise
    placed = np.flatnonzero(~dead)
    inner = tp.assign(tp.rule_tuples(cols.take(placed)), tp.Fields.of(cols.take(placed)))
    table_of = np.full(len(cols), -1, dtype=np.int16)
    table_of[placed] = inner.table_of
    return tp.Assignment(inner.tuples, table_of)


def compile_full(cols: RuleColumns, base: Live, capacity: Capacity, table: str = "acl",
                 slotted: tuple[Array, npt.NDArray[np.uint32], npt.NDArray[np.bool_], npt.NDArray[np.uint32]]
                 | None = None) -> Compiled:
    """`cols` (in judging order) as the next policy of a table holding `base`, written to the
    other bank. Pure: raises ValueError, naming the rule or the capacity setting, before anything
    is written. `slotted`: assign_slots' answer with the records, when the caller has them."""
    if slotted is None:
        check(cols, table)
        recs = records(cols)
        slots, fresh, freed = assign_slots(recs, base, capacity.rules, table)
    else:
        recs, slots, fresh, freed = slotted
    try:
        assignment = _assign(cols)
    except tp.TooManySubtables as exc:
        raise ValueError(f"{table}: {exc}") from None
    bank = build_bank(cols, slots, assignment, 1 - base.bank)
    check_buckets(table, capacity, base.bucket_counts(), count_buckets(bank.keys),
                  "while the previous policy's are still live")
    return Compiled(table, base, cols, recs, slots, fresh, freed, bank, unchanged=False)
