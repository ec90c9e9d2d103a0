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

from dataclasses import dataclass

from control.migrate.flatten import Excl, FlatRule
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


class BlockerIndex:
    """Blockers in first-match order, with a quick bounding test before the exact one."""

    def __init__(self) -> None:
        self.items: list[Blocker] = []
        self._bounds: list[tuple[int, int, int, int, int]] = []  # family, src lo/hi, dst lo/hi

    def add(self, b: Blocker) -> None:
        if not b.region:
            return
        self.items.append(b)
        self._bounds.append(_bounds(b.region))

    def first(self, region: list[Box], stage: int, wanted: str, reads: frozenset[str]) -> Blocker | None:
        want = _bounds(region)
        for b, bound in zip(self.items, self._bounds, strict=True):
            if not _may_overlap(bound, want):
                continue
            if blocks(b, stage, wanted, reads) and region_overlaps(b.region, region):
                return b
        return None


def reads(region: list[Box], domain_restricted: bool) -> frozenset[str]:
    """Which sides a rule's verdict depends on: a rewrite of the other side cannot change it."""
    out = set()
    if any(b.src is not None or b.sport is not None for b in region):
        out.add("src")
    if domain_restricted or any(b.dst is not None or b.dport is not None for b in region):
        out.add("dst")
    return frozenset(out)


def _bounds(region: list[Box]) -> tuple[int, int, int, int, int]:
    families = {b.family for b in region}
    family = families.pop() if len(families) == 1 else 0
    lo_s = min((b.src[0][0] if b.src else 0) for b in region)
    hi_s = max((b.src[-1][1] if b.src else 1 << 128) for b in region)
    lo_d = min((b.dst[0][0] if b.dst else 0) for b in region)
    hi_d = max((b.dst[-1][1] if b.dst else 1 << 128) for b in region)
    return family, lo_s, hi_s, lo_d, hi_d


def _may_overlap(a: tuple[int, int, int, int, int], b: tuple[int, int, int, int, int]) -> bool:
    if a[0] and b[0] and a[0] != b[0]:
        return False
    return a[1] <= b[2] and b[1] <= a[2] and a[3] <= b[4] and b[3] <= a[4]


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
