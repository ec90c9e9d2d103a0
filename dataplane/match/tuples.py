"""The tuple space of a rule set (pure numpy): rule tuples, subtable masks, masked keys, and the
assignment of rules to a bounded number of subtables with bounded buckets.

A rule's tuple is how much of each field it fixes: (family exact, source prefix length,
destination prefix length, protocol exact, source port prefix, destination port prefix), a
port's prefix being the common leading bits of its range's low and high end (16 for one port,
0 for 0-65535 and for most ranges). A subtable has a tuple too; a rule may go into any subtable
whose tuple is no longer than its own in every field: the packet's fields under the subtable's
masks then equal the rule's fields under them whenever the rule matches the packet, so the
rule's bucket is the one the packet looks up (xdp/include/match.h).

Assignment (`assign`) is TupleMerge's idea (Daly, Liu, Torng) made offline and greedy: each
round picks, among a few relaxations of the most common remaining tuples, the subtable that
takes the most remaining rules, taking from each bucket only the first TG_BUCKET_MAX rules by
order (later ones stay for later rounds), until every rule has a subtable. Relaxed masks make
few subtables (few hash probes per packet); the bucket cap bounds the candidates each probe
checks, and taking rules in order keeps the early ones in early subtables, where the search's
early exit finds them first. Keys are grouped by a 64-bit hash while choosing (two keys sharing
a hash only lower what a round takes) and exactly when the buckets are built (dataplane.match.
compiler).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from dataplane import abi
from dataplane.match.columns import RuleColumns

ADDR_BITS = 128
PORT_BITS = 16
BUCKET_MAX = abi.define("TG_BUCKET_MAX")
SUBTABLES_MAX = abi.define("TG_SUBTABLES_MAX")
DIMS = ("family", "src", "dst", "proto", "sport", "dport")
FAMILY, SRC, DST, PROTO, SPORT, DPORT = range(len(DIMS))
# Address-length steps the relaxations round down to, and how many of the most common tuples
# left are relaxed each round.
STEPS = (1, 4, 8)
TOP_TUPLES = 3

U64 = npt.NDArray[np.uint64]
Rows = npt.NDArray[np.intp]


def _address_masks() -> U64:
    """MASKS[L]: the 16 address bytes with L leading one bits, as the two native-order words the
    program reads an address as (tidegate_abi.h)."""
    bits = np.arange(ADDR_BITS)[None, :] < np.arange(ADDR_BITS + 1)[:, None]
    return np.ascontiguousarray(np.packbits(bits, axis=1)).view(np.uint64)


ADDR_MASKS = _address_masks()
PORT_MASKS = np.array([(0xFFFF << (PORT_BITS - n)) & 0xFFFF for n in range(PORT_BITS + 1)], dtype=np.uint16)


def address_words(addr: npt.NDArray[np.uint8]) -> U64:
    """(n, 16) address bytes -> (n, 2) native-order words."""
    return np.ascontiguousarray(addr).view(np.uint64)


def common_prefix(lo: npt.NDArray[np.uint16], hi: npt.NDArray[np.uint16]) -> npt.NDArray[np.int16]:
    """Leading bits lo and hi share (16 when equal)."""
    diff = (lo ^ hi).astype(np.int64)
    length = np.zeros(diff.shape, dtype=np.int16)
    nonzero = diff > 0
    length[nonzero] = np.floor(np.log2(diff[nonzero])).astype(np.int16) + 1
    return (PORT_BITS - length).astype(np.int16)


def rule_tuples(cols: RuleColumns) -> npt.NDArray[np.int16]:
    """(n, 6): each rule's own tuple (DIMS)."""
    out = np.empty((len(cols), len(DIMS)), dtype=np.int16)
    out[:, FAMILY] = cols.family != 0
    out[:, SRC] = cols.src_len
    out[:, DST] = cols.dst_len
    out[:, PROTO] = ~cols.proto_any
    out[:, SPORT] = common_prefix(cols.sport_lo, cols.sport_hi)
    out[:, DPORT] = common_prefix(cols.dport_lo, cols.dport_hi)
    return out


@dataclass(frozen=True)
class Fields:
    """The matched fields of some rules, as the keys use them (src/dst as words)."""

    src: U64
    dst: U64
    sport: npt.NDArray[np.uint16]
    dport: npt.NDArray[np.uint16]
    family: npt.NDArray[np.uint8]
    proto: npt.NDArray[np.uint8]

    @staticmethod
    def of(cols: RuleColumns) -> Fields:
        return Fields(address_words(cols.src_addr), address_words(cols.dst_addr), cols.sport_lo,
                      cols.dport_lo, cols.family, cols.proto)

    def take(self, rows: Rows) -> Fields:
        return Fields(self.src[rows], self.dst[rows], self.sport[rows], self.dport[rows],
                      self.family[rows], self.proto[rows])


@dataclass(frozen=True)
class Key(Fields):
    """Fields of some rules masked under one tuple (masked()): what their buckets are keyed by."""

    def hash(self) -> U64:
        """A 64-bit hash per key (multiply-xorshift over the fields)."""
        with np.errstate(over="ignore"):
            small = (self.family.astype(np.uint64) << np.uint64(40)
                     | self.proto.astype(np.uint64) << np.uint64(32)
                     | self.sport.astype(np.uint64) << np.uint64(16) | self.dport.astype(np.uint64))
            h = small * np.uint64(0x9E3779B97F4A7C15)
            for i, word in enumerate((self.src[:, 0], self.src[:, 1], self.dst[:, 0], self.dst[:, 1])):
                h = (h ^ (h >> np.uint64(29))) * np.uint64(0xBF58476D1CE4E5B9) + word * np.uint64(_ODD[i])
            h ^= h >> np.uint64(32)
            return h * np.uint64(0x94D049BB133111EB)


_ODD = (0xD6E8FEB86659FD93, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB, 0x8EBC6AF09C88C6E3)


def masks_of(t: Any) -> tuple[U64, U64, int, int, int, int]:
    """(src mask words, dst mask words, sport mask, dport mask, family mask, proto mask) of a tuple."""
    return (ADDR_MASKS[t[SRC]], ADDR_MASKS[t[DST]], int(PORT_MASKS[t[SPORT]]), int(PORT_MASKS[t[DPORT]]),
            0xFF if t[FAMILY] else 0, 0xFF if t[PROTO] else 0)


def masked(f: Fields, t: Any) -> Key:
    src_m, dst_m, sport_m, dport_m, fam_m, proto_m = masks_of(t)
    return Key(f.src & src_m, f.dst & dst_m, f.sport & np.uint16(sport_m), f.dport & np.uint16(dport_m),
               f.family & np.uint8(fam_m), f.proto & np.uint8(proto_m))


def first_per_group(groups: npt.NDArray[Any], cap: int) -> npt.NDArray[np.bool_]:
    """True for the first `cap` elements (in their order) of each group of equal values."""
    if groups.size == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    rank = np.arange(groups.size) - np.repeat(starts, np.diff(np.r_[starts, groups.size]))
    out = np.empty(groups.size, dtype=bool)
    out[order] = rank < cap
    return out


def _candidates(distinct: npt.NDArray[np.int16], counts: npt.NDArray[np.intp]) -> Iterator[tuple[int, ...]]:
    """Relaxations of the most common tuples: `distinct` tuples (in lexicographic order) held by
    `counts` rules each."""
    seen: set[tuple[int, ...]] = set()
    for t in distinct[np.argsort(-counts, kind="stable")[:TOP_TUPLES]]:
        for step in STEPS:
            for proto in {int(t[PROTO]), 0}:
                for sport in {int(t[SPORT]), 0}:
                    for dport in {int(t[DPORT]), 0}:
                        c = (int(t[FAMILY]), int(t[SRC]) // step * step, int(t[DST]) // step * step, proto,
                             sport, dport)
                        if c not in seen:
                            seen.add(c)
                            yield c


def distinct_tuples(tuples: npt.NDArray[np.int16]) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.intp]]:
    """(the distinct tuples in lexicographic order, each row's index among them): one sort of a
    code per row (every field is 0..255, a byte of the code, most significant first)."""
    if not len(tuples):
        return tuples.reshape(0, len(DIMS)), np.zeros(0, dtype=np.intp)
    codes = np.zeros(len(tuples), dtype=np.int64)
    for dim in range(len(DIMS)):
        codes = (codes << 8) | tuples[:, dim].astype(np.int64)
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    return tuples[first], inverse.ravel().astype(np.intp)


class TooManySubtables(ValueError):
    """The rules cannot be spread over the subtables a bank has with bounded buckets."""


@dataclass(frozen=True)
class Assignment:
    tuples: npt.NDArray[np.int16]  # (k, 6): the subtables' tuples, in the order they were made
    table_of: npt.NDArray[np.int16]  # (n,): each rule's subtable


def assign(tuples: npt.NDArray[np.int16], fields: Fields, cap: int = BUCKET_MAX,
           max_tables: int = SUBTABLES_MAX) -> Assignment:
    """Every rule (rows in order) into one of at most max_tables subtables, no bucket holding more
    than `cap` rules (module docstring). Raises TooManySubtables.

    Which rules a candidate tuple could take depends on their tuples alone, so candidates are
    chosen and ranked over the distinct tuples (a few hundred, however many rules), weighted by
    the rules each still has; only the candidates tried are masked and hashed per rule."""
    n = len(tuples)
    table_of = np.full(n, -1, dtype=np.int16)
    made: list[tuple[int, ...]] = []
    distinct, index = distinct_tuples(tuples)
    left = np.bincount(index, minlength=len(distinct))  # rules of each distinct tuple not yet placed
    remaining = np.arange(n)
    while remaining.size:
        if len(made) == max_tables:
            raise TooManySubtables(_crowded(remaining, tuples, fields, cap, max_tables))
        alive = np.flatnonzero(left)
        held, counts = distinct[alive], left[alive]
        fits = {c: (held >= c).all(1) for c in _candidates(held, counts)}  # which held tuples it takes
        best: tuple[tuple[int, ...], Rows] | None = None
        for cand in sorted(fits, key=lambda c: -int(counts[fits[c]].sum())):
            if best is not None and int(counts[fits[cand]].sum()) <= best[1].size:
                break  # sorted by eligible count: no later candidate can take more
            ok = np.zeros(len(distinct), dtype=bool)
            ok[alive[fits[cand]]] = True
            eligible = remaining[ok[index[remaining]]]
            taken = eligible[first_per_group(masked(fields.take(eligible), cand).hash(), cap)]
            if best is None or taken.size > best[1].size:
                best = (cand, taken)
        assert best is not None and best[1].size  # the most common tuple itself always takes a rule
        table_of[best[1]] = len(made)
        made.append(best[0])
        left -= np.bincount(index[best[1]], minlength=len(distinct))
        keep = np.ones(n, dtype=bool)
        keep[best[1]] = False
        remaining = remaining[keep[remaining]]
    return Assignment(np.array(made, dtype=np.int16).reshape(-1, len(DIMS)), table_of)


def _crowded(remaining: Rows, tuples: npt.NDArray[np.int16], fields: Fields, cap: int, tables: int) -> str:
    """Why rules are left over: the largest group of them sharing every field under their own tuple."""
    keys = np.array([masked(fields.take(remaining[[i]]), tuples[r]).hash()[0]
                     for i, r in enumerate(remaining[:10_000])])
    values, first, counts = np.unique(keys, return_index=True, return_counts=True)
    worst = int(np.argmax(counts))
    row = int(remaining[first[worst]])
    return (f"{remaining.size} rules are left over after {tables} subtables of up to {cap} candidates per "
            f"bucket; the largest group, {int(counts[worst])} rules like rules[{row}], share their "
            "addresses, "
            "protocol and port prefixes and differ only in port ranges that are not prefixes (or not at "
            f"all): at most {tables * cap} such rules can be searched in bounded time. Merge or split those "
            "ranges")
