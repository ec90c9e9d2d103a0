"""The rule compiler as first written: straightforward and slow, kept as the reference.

dataplane.matcher compiles incrementally and with fast paths; whatever it does, its output must
be exactly what this produces from the same rules and previous policy (test_matcher_equivalence),
once `bypassed` has skipped stage 2 where it is one entry for any destination, as the data plane
now does (TG_SET_F_RULESET). Only the algorithm lives here: rules, keys and prefixes are
dataplane.matcher's.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import defaultdict
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence

from dataplane.matcher import (
    CLASS_REFS_PER_ENTRY,
    FIRST_SET_ID,
    PROTO_BITS,
    SET_BITS,
    SET_F_RULESET,
    U32_MAX,
    CompiledMatch,
    DstKey,
    MatchCapacity,
    MatchRule,
    PortKey,
    Prefix,
    SrcKey,
    port_prefixes,
    prefix_of,
)


class _Ids:
    """Content -> id, keeping the previous policy's ids and never reusing one it still holds."""

    def __init__(self, previous: Mapping, first: int, limit: int, what: str,  # type: ignore[type-arg]
                 setting: str | None = None) -> None:
        self._setting = setting
        self._first = first
        self._previous = previous
        self._taken = set(previous.values())
        self._next = first
        self._limit = limit
        self._what = what
        self.assigned: dict = {}  # type: ignore[type-arg]

    def get(self, content: Hashable) -> int:
        found = self.assigned.get(content)
        if found is not None:
            return int(found)
        found = self._previous.get(content)
        if found is None:
            while self._next in self._taken:
                self._next += 1
            if self._next > self._limit and self._setting is not None:
                raise ValueError(f"{self._what}: the map holds {self._limit - self._first + 1}, too few for "
                                 f"this policy while the previous one is still live ({len(self._taken)} "
                                 f"in use); raise capacities.{self._setting}")
            if self._next > self._limit:
                raise ValueError(f"{self._what}: more than {self._limit} needed while the previous policy "
                                 f"is still live ({len(self._taken)} in use); raise the capacity")
            found = self._next
            self._next += 1
        self.assigned[content] = found
        return int(found)


class Oversized(ValueError):
    """The sets a policy expands to exceed the work budget: it cannot fit the maps."""


def covering_sets(items: Iterable[tuple[Prefix, int]],
                  budget: int | None = None) -> dict[Prefix, frozenset[int]]:
    """For each distinct prefix: the members whose prefix contains it (itself included).

    Sorted by (bits, plen), prefixes come in pre-order of their nesting, so a stack of the open
    ancestors gives every prefix its chain in one pass. Raises Oversized once the sets hold more
    than `budget` members in all (before building the rest).
    """
    own: dict[Prefix, list[int]] = defaultdict(list)
    for prefix, member in items:
        own[prefix].append(member)
    out: dict[Prefix, frozenset[int]] = {}
    stack: list[tuple[Prefix, frozenset[int]]] = []
    for prefix in sorted(own):
        while stack and not stack[-1][0].contains(prefix):
            stack.pop()
        content = (stack[-1][1] if stack else frozenset()) | frozenset(own[prefix])
        if budget is not None:
            budget -= len(content)
            if budget < 0:
                raise Oversized(f"more than {len(out)} sets")
        out[prefix] = content
        stack.append((prefix, content))
    return out


def _first(rules: Iterable[MatchRule]) -> MatchRule | None:
    return min(rules, key=lambda r: r.order, default=None)


def _range_winners(ranged: Sequence[MatchRule],
                   fallback: MatchRule | None) -> Iterator[tuple[int, int, MatchRule]]:
    """Maximal port runs (lo, hi, rule) where the first matching rule is not `fallback`.

    Sweep over the elementary intervals between range boundaries with a heap of the ranges
    open at each point (closed ones are dropped lazily when they reach the top).
    """
    bounds = sorted({b for r in ranged for b in (r.dport[0], r.dport[1] + 1)})  # type: ignore[index]
    by_start = sorted(ranged, key=lambda r: r.dport[0])  # type: ignore[index]
    heap: list[tuple[tuple[int, int], int, MatchRule]] = []
    nxt = 0
    run: tuple[int, int, MatchRule] | None = None
    for start, end in zip(bounds, bounds[1:], strict=False):
        while nxt < len(by_start) and by_start[nxt].dport[0] <= start:  # type: ignore[index]
            r = by_start[nxt]
            heapq.heappush(heap, (r.order, r.dport[1], r))  # type: ignore[index]
            nxt += 1
        while heap and heap[0][1] < start:
            heapq.heappop(heap)
        best = heap[0][2] if heap else None
        if best is None or (fallback is not None and fallback.order < best.order):
            best = fallback
        if run is not None and (best is not run[2] or run[1] + 1 != start):
            yield run
            run = None
        if best is not fallback and best is not None:
            run = (start, end - 1, best) if run is None else (run[0], end - 1, best)
    if run is not None:
        yield run


def _port_entries(rules: list[MatchRule], slot_of: Mapping[MatchRule, int], rs: int) -> dict[PortKey, int]:
    """Stage-3 entries of one ruleset: set-wide, per protocol, per port block."""
    out: dict[PortKey, int] = {}
    any_proto = [r for r in rules if r.proto is None]
    w_set = _first(any_proto)
    if w_set is not None:
        out[PortKey(SET_BITS, rs, 0, 0)] = slot_of[w_set]
    by_proto: dict[int, list[MatchRule]] = defaultdict(list)
    for r in rules:
        if r.proto is not None:
            by_proto[r.proto].append(r)
    for proto, specific in by_proto.items():
        w_proto = _first([*any_proto, *(r for r in specific if r.dport is None)])
        if w_proto is not None and w_proto is not w_set:
            out[PortKey(SET_BITS + PROTO_BITS, rs, proto, 0)] = slot_of[w_proto]
        ranged = [r for r in specific if r.dport is not None]
        for lo, hi, winner in _range_winners(ranged, w_proto):
            for port, plen in port_prefixes(lo, hi):
                out[PortKey(SET_BITS + PROTO_BITS + plen, rs, proto, port)] = slot_of[winner]
    return out


def _assign_slots(rules: Sequence[MatchRule], previous: CompiledMatch, capacity: int,
                  table: str = "acl") -> dict[int, MatchRule]:
    seen: dict[int, MatchRule] = {}
    for r in rules:
        if r.rule_id in seen:
            raise ValueError(f"rule {r.rule_id}: rule_id is used twice")
        seen[r.rule_id] = r
    kept = {rule: slot for slot, rule in previous.slots.items()}
    ids = _Ids(kept, 0, capacity - 1, "rule slots", f"{table}_rules")
    return {ids.get(r): r for r in sorted(rules, key=lambda r: r.order)}


def _check(what: str, new: Mapping, old: Mapping, capacity: int, setting: str) -> None:  # type: ignore[type-arg]
    peak = len(new.keys() | old.keys())
    if peak > capacity:
        raise ValueError(f"{what}: the policy needs at least {len(new)} entries ({peak} while the previous "
                         f"policy is still live) but the map holds {capacity}; raise capacities.{setting}")


def reference_compile(rules: Sequence[MatchRule], previous: CompiledMatch, capacity: MatchCapacity,
                  table: str = "acl") -> CompiledMatch:
    """Compiles `rules` to replace `previous` (whose ids stay valid until the switch is done)."""
    slots = _assign_slots(rules, previous, capacity.slots, table)
    slot_of = {rule: slot for slot, rule in slots.items()}
    class_ids = _Ids(previous.classes, FIRST_SET_ID, U32_MAX, f"{table} classes")
    ruleset_ids = _Ids(previous.rulesets, FIRST_SET_ID, U32_MAX, f"{table} rulesets")

    classes = _classes(slots, capacity, table)
    src = {SrcKey(p.plen, p.family, p.addr): class_ids.get(c) for p, c in classes.items()}
    _check(f"{table}_src", src, previous.src, capacity.src, f"{table}_src")

    dst: dict[DstKey, int] = {}
    rulesets: dict[int, frozenset[int]] = {}
    for content, cid in class_ids.assigned.items():
        for p, rs_content in covering_sets((prefix_of(slots[s].dst), s) for s in content).items():
            rid = ruleset_ids.get(rs_content)
            rulesets[rid] = rs_content
            dst[DstKey(SET_BITS + p.plen, cid, p.family, p.addr)] = rid
        if len(dst) > capacity.dst:
            break  # reported by _check below with the peak size
    _check(f"{table}_dst", dst, previous.dst, capacity.dst, f"{table}_dst")

    port: dict[PortKey, int] = {}
    for rid, content in rulesets.items():
        port.update(_port_entries([slots[s] for s in content], slot_of, rid))
        if len(port) > capacity.port:
            break
    _check(f"{table}_port", port, previous.port, capacity.port, f"{table}_port")
    return CompiledMatch(slots, src, dst, port, dict(class_ids.assigned), dict(ruleset_ids.assigned))


def _classes(slots: Mapping[int, MatchRule], capacity: MatchCapacity,
             table: str) -> dict[Prefix, frozenset[int]]:
    budget = CLASS_REFS_PER_ENTRY * (capacity.dst + capacity.port)
    try:
        return covering_sets(((prefix_of(r.src), s) for s, r in slots.items()), budget)
    except Oversized:
        raise ValueError(f"{table}: source prefixes nest into classes holding more than {budget} rule "
                         f"references: rules with broad sources are repeated under every narrower source; "
                         f"narrow the broad rules or raise capacities.{table}_dst/{table}_port") from None


def bypassed(compiled: CompiledMatch) -> CompiledMatch:
    """`compiled` with the stage-2 entry of each class that has just one, for any destination
    (the prefix of length 0), dropped and its ruleset named by stage 1 instead."""
    entries: dict[int, list[tuple[DstKey, int]]] = defaultdict(list)
    for key, rid in compiled.dst.items():
        entries[key.set].append((key, rid))
    direct = {cid: found[0][1] for cid, found in entries.items()
              if len(found) == 1 and found[0][0].prefixlen == SET_BITS}
    src = {k: direct[v] | SET_F_RULESET if v in direct else v for k, v in compiled.src.items()}
    dst = {k: v for k, v in compiled.dst.items() if k.set not in direct}
    return dataclasses.replace(compiled, src=src, dst=dst)
