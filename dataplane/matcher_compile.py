"""Compiles rules into the three stages from scratch (dataplane.matcher has the model).

    slots      rules sorted by (priority, rule id); a rule the previous policy holds keeps its slot
    stage 1    every source prefix -> its class: the slots whose source covers it
    stage 2    per class, every destination prefix of its rules -> ruleset (covering_sets again)
    stage 3    per ruleset, set-wide / per protocol / per port block -> slot of the first rule

New contents get the lowest ids the previous policy does not hold, in that order of discovery;
dataplane.matcher_incremental must assign them in the same order, so keep the two in step.
The result carries a CompileState, which lets the next compile redo only what changed.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Container, Hashable, Iterable, Iterator, Mapping, Sequence, Sized
from operator import attrgetter

from dataplane.matcher import (
    ADDR_BITS,
    ADDR_LEN,
    ANY,
    CLASS_REFS_PER_ENTRY,
    FIRST_SET_ID,
    PORT_BITS,
    PROTO_BITS,
    SET_BITS,
    SET_F_RULESET,
    SET_ID_MAX,
    CompiledMatch,
    CompileState,
    DstKey,
    MatchCapacity,
    MatchRule,
    PortKey,
    Prefix,
    RulesetNode,
    SrcKey,
    SrcNode,
    covering_sets,
    port_blocks,
    sweep,
)

ORDER = attrgetter("priority", "rule_id")  # first match wins by (priority, rule id)
# NamedTuple(*fields) runs a Python-level __new__; the loops below build ~500,000 of them.
_new = tuple.__new__
ADDR_MASK = (1 << ADDR_BITS) - 1
RULE_ID = attrgetter("rule_id")
_CID = attrgetter("cid")


class Ids:
    """Content -> id, keeping the previous policy's ids and never reusing one it still holds.

    A new content gets the lowest id `taken` (the previous policy's ids) does not hold; `start`
    says that every id from `first` up to it is taken (CompileState.hints), so the search for
    a free one need not walk them."""

    def __init__(self, previous: Mapping, taken: Container[int], first: int, limit: int,  # type: ignore[type-arg]
                 what: str, start: int | None = None, setting: str | None = None) -> None:
        self._setting = setting  # the Capacities field that sizes these ids, if one does
        self._previous = previous
        self._taken = taken
        self._first = first
        self._next = first if start is None else start
        self._limit = limit
        self._what = what
        self._dense_unchecked = True
        self.assigned: dict = {}  # type: ignore[type-arg]

    def _skip_dense(self) -> None:
        """Ids in use are often first..n without gaps: then the first free one is n + 1."""
        self._dense_unchecked = False
        taken = self._taken
        if isinstance(taken, Sized) and isinstance(taken, Iterable) and len(taken):
            top = max(taken)
            if top - self._first + 1 == len(taken):
                self._next = max(self._next, top + 1)

    def get(self, content: Hashable) -> int:
        found = self.assigned.get(content)
        if found is None:
            found = self._previous.get(content)
            if found is None:
                found = self.fresh()
            self.assigned[content] = found
        return int(found)

    def fresh(self) -> int:
        if self._dense_unchecked and self._next in self._taken:
            self._skip_dense()
        while self._next in self._taken:
            self._next += 1
        if self._next > self._limit:
            if self._setting is not None:
                raise ValueError(f"{self._what}: the map holds {self._limit - self._first + 1}, too few for "
                                 f"this policy while the previous one is still live ({len(self._taken)} "  # type: ignore[arg-type]
                                 f"in use); raise capacities.{self._setting}")
            raise ValueError(f"{self._what}: more than {self._limit} needed while the previous policy "
                             f"is still live ({len(self._taken)} in use); raise the capacity")  # type: ignore[arg-type]
        self._next += 1
        return self._next - 1

    def hint(self, freed: Iterable[int]) -> int:
        """The `start` for the next compile, whose `taken` are this policy's ids: every id below
        the next candidate is held by the previous policy or was just assigned, unless `freed`."""
        return min(self._next, min(freed, default=self._next))


def check(what: str, new: Mapping, old: Mapping, capacity: int, setting: str) -> None:  # type: ignore[type-arg]
    peak = len(new.keys() | old.keys())
    if peak > capacity:
        raise ValueError(f"{what}: the policy needs at least {len(new)} entries ({peak} while the previous "
                         f"policy is still live) but the map holds {capacity}; raise capacities.{setting}")


def class_budget(capacity: MatchCapacity) -> int:
    return CLASS_REFS_PER_ENTRY * (capacity.dst + capacity.port)


def oversized(table: str, budget: int) -> ValueError:
    return ValueError(f"{table}: source prefixes nest into classes holding more than {budget} rule "
                      f"references: rules with broad sources are repeated under every narrower source; "
                      f"narrow the broad rules or raise capacities.{table}_dst/{table}_port")


# --- per class and per ruleset -----------------------------------------------------------------


def class_dsts(content: frozenset[int],
               slots: Mapping[int, MatchRule]) -> list[tuple[Prefix, frozenset[int]]]:
    """Stage 2 of one class: each destination prefix of its rules and the ruleset under it."""
    if len(content) == 1:
        (slot,) = content
        return [(slots[slot].dst_prefix, content)]
    prefixes = {slots[s].dst_prefix for s in content}
    if len(prefixes) == 1:
        return [(prefixes.pop(), content)]
    return list(covering_sets((slots[s].dst_prefix, s) for s in content).items())


def ruleset_ports(content: frozenset[int], slots: Mapping[int, MatchRule], rs: int) -> dict[PortKey, int]:
    """Stage 3 of one ruleset (a one-rule ruleset directly: what _port_entries gives for it)."""
    if len(content) != 1:
        return _port_entries([slots[s] for s in content], {slots[s]: s for s in content}, rs)
    (slot,) = content
    rule = slots[slot]
    if rule.proto is None:
        return {PortKey(SET_BITS, rs, 0, 0): slot}
    if rule.dport is None:
        return {PortKey(SET_BITS + PROTO_BITS, rs, rule.proto, 0): slot}
    return {PortKey(SET_BITS + PROTO_BITS + plen, rs, rule.proto, port): slot
            for port, plen in port_blocks(*rule.dport)}


def _first(rules: Iterable[MatchRule]) -> MatchRule | None:
    return min(rules, key=ORDER, default=None)


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
            for port, plen in port_blocks(lo, hi):
                out[PortKey(SET_BITS + PROTO_BITS + plen, rs, proto, port)] = slot_of[winner]
    return out


# --- the whole policy --------------------------------------------------------------------------


def assign_slots(rules: Sequence[MatchRule], previous: CompiledMatch, capacity: int,
                 table: str = "acl") -> dict[int, MatchRule]:
    """slot -> rule, in first-match order; a rule the previous policy holds keeps its slot."""
    if len(set(map(RULE_ID, rules))) != len(rules):
        seen: set[int] = set()
        for r in rules:
            if r.rule_id in seen:
                raise ValueError(f"rule {r.rule_id}: rule_id is used twice")
            seen.add(r.rule_id)
    state = previous.state
    kept = (dict(state.rules.values()) if state is not None
            else {rule: slot for slot, rule in previous.slots.items()})
    ids = Ids(kept, set(kept.values()), 0, capacity - 1, "rule slots", setting=f"{table}_rules")
    slots: dict[int, MatchRule] = {}
    if not kept:
        fresh = ids.fresh
        return {fresh(): r for r in sorted(rules, key=ORDER)}
    for r in sorted(rules, key=ORDER):
        slot = kept.get(r)
        slots[ids.fresh() if slot is None else slot] = r
    return slots


def src_key(p: Prefix) -> SrcKey:
    return SrcKey(p.plen, p.family, p.addr)


def dst_key(p: Prefix, cid: int, parts: dict[Prefix, tuple[int, bytes]]) -> DstKey:  # (the incremental path)
    """The stage-2 key of `p` in class `cid`; `parts` caches each prefix's (family, address)."""
    found = parts.get(p)
    if found is None:
        found = parts[p] = (p.family, p.addr)
    return DstKey(SET_BITS + p.plen, cid, *found)


def compile_full(rules: Sequence[MatchRule], previous: CompiledMatch, capacity: MatchCapacity,
                 table: str) -> CompiledMatch:
    """Compiles `rules` to replace `previous`, deriving everything afresh."""
    return _Full(previous, capacity, table).run(rules)


class _Full:
    """One compile from scratch. The loops run once per prefix, class or ruleset of policies
    of 100,000 rules, so they are written out with their common one-rule cases inline."""

    def __init__(self, previous: CompiledMatch, capacity: MatchCapacity, table: str) -> None:
        self.previous, self.capacity, self.table = previous, capacity, table

    def run(self, rules: Sequence[MatchRule]) -> CompiledMatch:
        slots = self.slots = assign_slots(rules, self.previous, self.capacity.slots, self.table)
        grouped: dict[Prefix, list[int]] = defaultdict(list)
        for slot, rule in slots.items():
            grouped[rule.src_prefix].append(slot)
        self.own = {p: frozenset(s) for p, s in grouped.items()}
        self.order = sorted(self.own)
        refs = self._classes()
        src, classes = self._src()
        dst, nodes = self._stage2(src, classes)
        port = self._stage3()
        held, numbers = list(slots.values()), list(slots)  # (zip and map: loops in C)
        state = CompileState(dict(zip(map(id, held), zip(held, numbers, strict=True), strict=True)),
                             dict(zip(map(RULE_ID, held), numbers, strict=True)), nodes, self.order,
                             dict(zip(map(_CID, nodes.values()), nodes, strict=True)), refs, self.rulesets,
                             (0, FIRST_SET_ID, FIRST_SET_ID))
        return CompiledMatch(slots, src, dst, port, classes, self.ruleset_ids, state)

    def _classes(self) -> int:
        """Every source prefix's class content; the references they hold in all."""
        budget = refs = class_budget(self.capacity)
        self.content_of: dict[Prefix, frozenset[int]] = {}
        content_of = self.content_of
        for p, content in sweep(self.order, self.own):
            refs -= len(content)
            if refs < 0:
                raise oversized(self.table, budget)
            content_of[p] = content
        return budget - refs

    def _src(self) -> tuple[dict[SrcKey, int], dict[frozenset[int], int]]:
        """Stage 1, with class ids as values (stage 2 puts a ruleset id where it skips itself)."""
        prev = self.previous
        ids = Ids(prev.classes, set(prev.classes.values()), FIRST_SET_ID, SET_ID_MAX, f"{self.table} classes")
        known, fresh, content_of = prev.classes.get, ids.fresh, self.content_of
        classes: dict[frozenset[int], int] = {}  # contents are distinct: each holds its prefix's rules
        src: dict[SrcKey, int] = {}
        self.src_keys: list[SrcKey] = []
        keys = self.src_keys
        for p in self.order:
            content = content_of[p]
            cid = known(content)
            classes[content] = cid = fresh() if cid is None else cid
            bits, plen = p
            key = _new(SrcKey, (plen, bits >> ADDR_BITS, (bits & ADDR_MASK).to_bytes(ADDR_LEN, "big")))
            src[key] = cid
            keys.append(key)
        table = self.table
        check(f"{table}_src", src, prev.src, self.capacity.src, f"{table}_src")
        return src, classes

    def _stage2(self, src: dict[SrcKey, int],
                classes: dict[frozenset[int], int]) -> tuple[dict[DstKey, int], dict[Prefix, SrcNode]]:
        prev, slots, own, limit = self.previous, self.slots, self.own, self.capacity.dst
        ids = Ids(prev.rulesets, set(prev.rulesets.values()), FIRST_SET_ID, SET_ID_MAX,
                  f"{self.table} rulesets")
        self.ruleset_ids = assigned = ids.assigned
        known, fresh = prev.rulesets.get, ids.fresh
        self.rs_refs: dict[int, int] = {}
        self.rs_content: dict[int, frozenset[int]] = {}
        rs_refs, rs_content = self.rs_refs, self.rs_content
        parts: dict[Prefix, tuple[int, int, bytes]] = {}  # prefix -> (key prefixlen, family, address)
        dst: dict[DstKey, int] = {}
        nodes: dict[Prefix, SrcNode] = {}
        for (p, content), src_key_ in zip(self.content_of.items(), self.src_keys, strict=True):
            cid = classes[content]
            pairs: Sequence[tuple[Prefix, frozenset[int]]]
            if len(content) == 1:
                (slot,) = content
                rule = slots[slot]
                pairs = ((ANY if rule.dst is None else rule.dst_prefix, content),)
            else:
                pairs = class_dsts(content, slots)
            keys = []
            rid = 0
            for q, rs in pairs:
                found = assigned.get(rs)
                if found is None:
                    found = known(rs)
                    rid = fresh() if found is None else found
                    assigned[rs] = rid
                    rs_content[rid] = rs
                    rs_refs[rid] = 1
                else:
                    rid = found
                    rs_refs[rid] += 1
                if len(pairs) == 1 and q == ANY:
                    break  # every destination: stage 1 names the ruleset (keys stays empty)
                part = parts.get(q)
                if part is None:
                    part = parts[q] = (SET_BITS + q.plen, q.family, q.addr)
                key = _new(DstKey, (part[0], cid, part[1], part[2]))
                dst[key] = rid
                keys.append(key)
            if keys:
                nodes[p] = _new(SrcNode, (own[p], content, cid, tuple(keys), cid))
            else:
                src[src_key_] = value = rid | SET_F_RULESET
                nodes[p] = _new(SrcNode, (own[p], content, cid, (), value))
            if len(dst) > limit:
                break  # reported by check below with the peak size
        check(f"{self.table}_dst", dst, prev.dst, limit, f"{self.table}_dst")
        return dst, nodes

    def _stage3(self) -> dict[PortKey, int]:
        slots, limit = self.slots, self.capacity.port
        port: dict[PortKey, int] = {}
        self.rulesets: dict[int, RulesetNode] = {}
        rulesets = self.rulesets
        rs_refs = self.rs_refs
        one_port = SET_BITS + PROTO_BITS + PORT_BITS
        for rid, rs in self.rs_content.items():
            if len(rs) == 1:
                (slot,) = rs
                rule = slots[slot]
                dport = rule.dport
                if dport is not None and dport[0] == dport[1]:  # one port: one entry, as ruleset_ports
                    key = _new(PortKey, (one_port, rid, rule.proto, dport[0]))
                    port[key] = slot
                    rulesets[rid] = _new(RulesetNode, (rs_refs[rid], rs, (key,)))
                    continue
            entries = ruleset_ports(rs, slots, rid)
            port.update(entries)
            rulesets[rid] = RulesetNode(rs_refs[rid], rs, tuple(entries))
            if len(port) > limit:
                break
        check(f"{self.table}_port", port, self.previous.port, limit, f"{self.table}_port")
        return port
