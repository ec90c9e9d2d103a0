"""Order safety: when may a rule move in front of netfilter without changing a verdict?

XDP runs first, so Tidegate's rules (X) judge before netfilter's (N). X denies only what the
original rules (C) would drop anyway, and passes everything else to N. Then:

1. A deny in X is right only if C really drops every packet it takes. A packet that C's rules
   decide *earlier* would be taken from them: so every earlier rule that stays in netfilter
   and could match the same packets must end the same way (a plain drop). Rules that accept,
   reject, rewrite (DNAT), log, or count state (limit, recent) block the move. In an earlier
   chain of the same hook (raw/mangle/nat before filter) only what does not simply accept or
   drop blocks, since an accept there only continues to the next chain.
2. An accept in X (pass) is always right: N still holds the rule and judges the packet as C.
   Exact accepts go into X so that later denies in the same chain keep first-match order.
3. A moved deny may leave N (for traffic of the attach interfaces) only if X denies all of
   what C would drop with it: no pass of an earlier chain may shadow part of it.

"Could match the same packets" is computed exactly on addresses, protocols, ports, ICMP
types and TCP flags (ir.Box); every other condition is taken as "could match".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from control.migrate import intervals as iv
from control.migrate.flatten import Excl, FlatRule
from control.migrate.intervals import Ivs
from control.migrate.ir import Box, Iface, Kind, region_and, region_overlaps, region_subtract

CONTINUE = "continue"
OUTCOMES = {Kind.ACCEPT: "accept", Kind.DROP: "drop", Kind.OTHER: "other", Kind.TRANSLATE: "translate",
            Kind.SIDE: CONTINUE, Kind.MODIFY: CONTINUE, Kind.NONE: CONTINUE}


def outcome(flat: FlatRule) -> str:
    t = flat.target
    if t.kind is Kind.REJECT:
        return f"reject:{t.detail}"
    return OUTCOMES.get(t.kind, "other")


def iface_status(ifaces: list[Iface], attached: tuple[str, ...]) -> str:
    """"all": every packet from the attach interfaces passes these -i conditions; "none": no
    packet does; "some": it depends on the interface; "unknown": no attach interfaces given."""
    if not ifaces:
        return "all"
    if not attached:
        if all(i.name == "lo" and not i.negated for i in ifaces):
            return "none"  # Tidegate is never attached to loopback
        return "unknown"
    hits = [all(i.matches(a) for i in ifaces) for a in attached]
    return "all" if all(hits) else ("none" if not any(hits) else "some")


@dataclass(slots=True)
class Blocker:
    """A rule that stays in netfilter (or a pass of an earlier chain), as far as X is concerned."""

    region: list[Box]  # a superset of what it matches
    flat: FlatRule
    stage: int
    outcome: str
    effect: bool  # logs or counts state: must see every packet it would see in C
    rewrites: str = ""  # "dst" or "src": a translation (DNAT, SNAT) rewrites that side
    # A conntrack accept moved onto allow_established (established.py): a deny it blocks moves for
    # its part outside `partial`, the packets only netfilter can tell it accepts; `ported`: that
    # part written so that it never matches a later fragment (ESTABLISHED reassembled datagrams).
    partial: list[Box] | None = None
    ported: bool = False
    partial_emitted: list[Box] | None = None  # `partial` without the chain's domain (FORWARD's)


def blocks(b: Blocker, stage: int, wanted: str, reads: frozenset[str] = frozenset()) -> bool:
    """Whether `b`, if it overlaps, stops a `wanted` ("drop" / "reject:...") rule of `stage` that
    reads the fields in `reads` ("src", "dst": its own conditions, or its chain's domain)."""
    if b.effect:
        return True
    if b.rewrites:
        return b.rewrites in reads
    if b.stage == stage:
        return b.outcome not in (wanted, CONTINUE)
    return b.outcome not in (wanted, CONTINUE, "accept")


class _Rows:
    """Bounding rows (numpy) of boxes, with the index of the region each belongs to."""

    COLUMNS = 11  # family, src lo/hi, dst lo/hi, proto lo/hi, sport lo/hi, dport lo/hi

    def __init__(self) -> None:
        self.rows = np.zeros((16, self.COLUMNS), dtype=np.uint64)
        self.owner = np.zeros(16, dtype=np.int64)
        self.n = 0

    def add(self, row: tuple[int, ...], owner: int) -> None:
        if self.n == len(self.rows):
            self.rows = np.concatenate([self.rows, np.zeros_like(self.rows)])
            self.owner = np.concatenate([self.owner, np.zeros_like(self.owner)])
        self.rows[self.n] = row
        self.owner[self.n] = owner
        self.n += 1

    def hits(self, q: np.ndarray) -> np.ndarray:
        rows = self.rows[:self.n]
        m = rows[:, 0] == q[0]
        for lo in range(1, self.COLUMNS, 2):
            m &= (rows[:, lo] <= q[lo + 1]) & (q[lo] <= rows[:, lo + 1])
        return self.owner[:self.n][m]


class RegionIndex:
    """Regions in first-match order, for "the first one overlapping this region (and passing a
    test)". Each box is filed under the narrowest of a few aligned address blocks (IPv4 /8, /16,
    /24; IPv6 /16, /32, /48) that holds its source, and again for its destination ("wide" when
    neither fits); a query looks, on the side where it is narrower, in the blocks that contain
    it or lie inside it, and a bounding test on those rows at once (numpy: family, addresses,
    protocol and port ranges, IPv6 by the top 64 bits) leaves the exact test a few candidates."""

    def __init__(self) -> None:
        self.items: list[tuple[list[Box], object]] = []
        # side -> (family, level, block) -> rows; level 0 = wide
        self._by: dict[str, dict[tuple[int, int, int], _Rows]] = {"src": {}, "dst": {}}
        self._children: dict[str, dict[tuple[int, int, int], set[tuple[int, int, int]]]] = {
            "src": {}, "dst": {}}
        self._all: dict[int, _Rows] = {4: _Rows(), 6: _Rows()}  # per family, for broad queries

    def add(self, region: list[Box], item: object) -> None:
        if not region:
            return
        owner = len(self.items)
        self.items.append((region, item))
        for box in region:
            row = _row(box)
            self._all[box.family].add(row, owner)
            for side in ("src", "dst"):
                key = _block(box, side)
                if key not in self._by[side]:
                    self._by[side][key] = _Rows()
                    for parent in _parents(key):
                        self._children[side].setdefault(parent, set()).add(key)
                self._by[side][key].add(row, owner)

    def _groups(self, box: Box) -> list[_Rows]:
        keys = {side: _block(box, side) for side in ("src", "dst")}
        side = "src" if keys["src"][1] >= keys["dst"][1] else "dst"
        key = keys[side]
        by = self._by[side]
        if key[1] == 0:  # wide on both sides
            return [self._all[box.family]]
        wanted = {*_parents(key), (box.family, 0, 0), key, *self._children[side].get(key, ())}
        groups = [by[k] for k in wanted if k in by]
        if len(groups) > MAX_GROUPS:  # many small blocks: one pass over all is quicker
            return [self._all[box.family]]
        return groups

    def candidates(self, region: list[Box]) -> list[int]:
        """Owners whose bounds meet a box of `region`, in the order they were added."""
        found: list[np.ndarray] = []
        for box in region:
            q = np.array(_row(box), dtype=np.uint64)
            found += [g.hits(q) for g in self._groups(box)]
        if not found:
            return []
        return [int(i) for i in np.unique(np.concatenate(found))]

    def first(self, region: list[Box], test: Callable[[object], bool]) -> object | None:
        for owner in self.candidates(region):
            boxes, item = self.items[owner]
            if test(item) and region_overlaps(boxes, region):
                return item
        return None


LEVELS = {4: (8, 16, 24), 6: (16, 32, 48)}
MAX_GROUPS = 16


def _block(box: Box, side: str) -> tuple[int, int, int]:
    """(family, level, block): the narrowest block of LEVELS bits holding this side's values."""
    values = box.get(side)
    bits = iv.ADDR_BITS[box.family]
    found = (box.family, 0, 0)
    if values is None:
        return found
    low, high = values[0][0], values[-1][1]
    for level in LEVELS[box.family]:
        if low >> (bits - level) != high >> (bits - level):
            break
        found = (box.family, level, low >> (bits - level))
    return found


def _parents(key: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    family, level, block = key
    return [(family, up, block >> (level - up)) for up in LEVELS[family] if up < level]


def _span(values: Ivs | None, top: int, shift: int = 0) -> tuple[int, int]:
    if values is None:
        return 0, top >> shift
    return values[0][0] >> shift, values[-1][1] >> shift


def _row(box: Box) -> tuple[int, ...]:
    shift = 64 if box.family == 6 else 0
    top = box.top("src")
    return (box.family, *_span(box.src, top, shift), *_span(box.dst, top, shift), *_span(box.proto, 255),
            *_span(box.sport, 65535), *_span(box.dport, 65535))


class BlockerIndex:
    """Blockers (rules that stay in netfilter) in first-match order."""

    def __init__(self) -> None:
        self.index = RegionIndex()

    def add(self, b: Blocker) -> None:
        self.index.add(b.region, b)

    def first(self, region: list[Box], stage: int, wanted: str, reads: frozenset[str],
              skip: tuple[Blocker, ...] = ()) -> Blocker | None:
        def test(b: Blocker) -> bool:
            return all(b is not s for s in skip) and blocks(b, stage, wanted, reads)

        found = self.index.first(region, test)  # type: ignore[arg-type]
        return found  # type: ignore[return-value]


def reads(region: list[Box], domain_restricted: bool) -> frozenset[str]:
    """Which sides a rule's verdict depends on: a rewrite of the other side cannot change it."""
    out = set()
    if any(b.src is not None or b.sport is not None for b in region):
        out.add("src")
    if domain_restricted or any(b.dst is not None or b.dport is not None for b in region):
        out.add("dst")
    return frozenset(out)


@dataclass(slots=True)
class Region:
    """What a flat rule matches, on the attach interfaces and inside its chain's domain."""

    hi: list[Box]              # a superset
    exact: list[Box] | None    # exactly, when every condition could be read
    reason: str = ""           # why not exact
    scope: str = ""            # how the domain changed it ("only local destinations")


def excl_status(e: Excl, attached: tuple[str, ...]) -> str:
    """"exact", "never" (cannot apply on the attach interfaces) or the reason it is not exact."""
    c = e.cond
    status = iface_status(c.iif, attached)
    if status == "none":
        return "never"
    if status != "all" or c.oif or c.ctstate is not None or c.unsupported:
        return f"the RETURN or goto of rule {e.source.number} has conditions Tidegate cannot express"
    return "exact"


def region_of(flat: FlatRule, domain: list[Box] | None, attached: tuple[str, ...], limit: int,
              unsupported_reason: str) -> Region:
    """`domain`: the boxes of the chain's domain (None: everything)."""
    boxes = flat.path.boxes if domain is None else region_and(flat.path.boxes, domain)
    exact_cuts, inexact = [], ""
    for e in flat.path.exclusions:
        status = excl_status(e, attached)
        if status == "exact":
            exact_cuts.extend(e.cond.boxes)
        elif status != "never":
            inexact = inexact or status
    hi = region_subtract(boxes, exact_cuts, limit)
    if hi is None:
        return Region(boxes, None, f"its RETURNs cut it into more than {limit} pieces")
    if unsupported_reason or inexact:
        return Region(hi, None, unsupported_reason or inexact)
    return Region(hi, hi)
