"""Recompiles only what a change of a few rules touches, from the previous compile's state.

The result is exactly what dataplane.matcher_compile.compile_full would give (a test compares
them), and it records the writes from the previous policy (CompiledMatch.delta), so planning an
update is as small as the update:

 - a rule kept keeps its slot, so a class or ruleset content (a set of slots) means the same
   rules in both policies, and whatever was derived from it stays valid;
 - the classes that change are those of the added and removed rules' source prefixes and of
   the prefixes nested in them, a contiguous run of the sorted prefixes per changed prefix;
 - a class content lives at exactly one prefix (it holds a rule whose source is that prefix),
   so a changed class drops its old content, its stage-2 entries and, when no other class
   names them, its rulesets and their stage-3 entries;
 - new contents get ids in the order compile_full discovers them: sorted by source prefix,
   then by destination prefix.

Rules are first matched by object identity (C-speed set operations on id()s: the previous
state holds its rule objects, so their ids are not reused), then by equality among those left
over (a caller that builds its rules afresh each time gets there too, only slower); hashing
every rule in Python cost more than all the rest of a small update. A rule kept as an equal
object stays held as the old one: equal rules are interchangeable.
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Mapping, Sequence
from itertools import compress
from operator import attrgetter
from typing import TypeVar

from dataplane.matcher import (
    ANY,
    FIRST_SET_ID,
    KEY_BITS,
    SET_F_RULESET,
    SET_ID_MAX,
    CompiledMatch,
    CompileState,
    Delta,
    DstKey,
    MatchCapacity,
    MatchRule,
    PortKey,
    Prefix,
    RulesetNode,
    SrcKey,
    SrcNode,
    sweep,
)
from dataplane.matcher_compile import (
    ORDER,
    RULE_ID,
    Ids,
    class_budget,
    class_dsts,
    dst_key,
    ruleset_ports,
    src_key,
)

# Beyond this share of the rules changing, compiling from scratch is as quick.
MAX_CHANGED_SHARE = 4
MIN_CHANGED = 64
FEW = 16
_IDENTITY = attrgetter("identity")

_K = TypeVar("_K")
_V = TypeVar("_V")
# (prefix, class content before, after); None: the prefix is not in that policy.
Change = tuple[Prefix, frozenset[int] | None, frozenset[int] | None]


def compile_incremental(rules: Sequence[MatchRule], previous: CompiledMatch, state: CompileState,
                        capacity: MatchCapacity) -> CompiledMatch | None:
    """The compile of `rules` against `previous`, or None when a full compile should do it
    (a large change, or anything wrong: compile_full reports errors in its own words)."""
    objs = list(map(id, rules))
    now = set(objs)
    if len(now) != len(rules):
        return None  # a rule given twice
    fresh_ids = now.difference(state.rules)
    gone_ids = state.rules.keys() - now if len(now) - len(fresh_ids) < len(state.rules) else set()
    if len(fresh_ids) <= FEW:  # a scan in C for each beats a call per rule
        fresh = [rules[objs.index(i)] for i in fresh_ids]
    else:
        fresh = list(compress(rules, map(fresh_ids.__contains__, objs)))
    # Rules equal to ones held, as other objects (a caller that rebuilds its rules): kept as held.
    held = [state.rules[i] for i in gone_ids]  # (rule, slot)
    by_identity = dict(zip(map(_IDENTITY, (rule for rule, _ in held)), held, strict=True))
    added = [r for r in fresh if by_identity.pop(r.identity, None) is None]
    if len(added) + len(by_identity) > max(MIN_CHANGED, len(rules) // MAX_CHANGED_SHARE):
        return None
    gone = dict(by_identity.values())  # rule -> slot
    if _reused_ids(added, state.rule_ids, set(gone.values())):
        return None
    return _Update(previous, state, capacity).run(added, gone)


def _reused_ids(added: list[MatchRule], held: Mapping[int, int], freed: set[int]) -> bool:
    """Whether an added rule's id is another added rule's or a kept rule's (kept rules' ids
    are distinct: the previous policy had them)."""
    ids = set(map(RULE_ID, added))
    return len(ids) != len(added) or any(i in held and held[i] not in freed for i in ids)


class _Update:
    """One incremental compile: copies of the previous maps, changed in place."""

    def __init__(self, previous: CompiledMatch, state: CompileState, capacity: MatchCapacity) -> None:
        self.previous, self.state, self.capacity = previous, state, capacity

    def run(self, added: list[MatchRule], removed: Mapping[MatchRule, int]) -> CompiledMatch | None:
        prev, cap = self.previous, self.capacity
        if not added and not removed:
            return CompiledMatch(prev.slots, prev.src, prev.dst, prev.port, prev.classes, prev.rulesets,
                                 self.state, _delta(prev))
        new_slots, old_slots = self._slots(added, removed)
        changed = self._classes(added, removed)
        if self.refs > class_budget(cap):
            return None
        src, src_put, src_del = self._src(changed)
        dst_put, dst_del, born, dead = self._stage2(changed)
        port_put, port_del = self._stage3(born, dead)
        if (len(prev.src) + sum(1 for _, old, _ in changed if old is None) > cap.src
                or len(prev.dst) + len(dst_put) > cap.dst or len(prev.port) + len(port_put) > cap.port):
            return None
        state = CompileState(self.rules, self.rule_ids, self.nodes, self.order, self.cids, self.refs,
                             self.rulesets, (self.slot_hint, self.class_hint, self.ruleset_hint))
        return CompiledMatch(self.slots, src, self.dst, self.port, self.classes, self.ruleset_ids, state,
                             _delta(prev, new_slots, old_slots, src_put, src_del, dst_put, dst_del,
                                    port_put, port_del))

    # --- slots -------------------------------------------------------------------------------
    def _slots(self, added: list[MatchRule], removed: Mapping[MatchRule, int]) -> tuple[list[int], list[int]]:
        self.slots = slots = _copy(self.previous.slots)
        self.rules = rules = _copy(self.state.rules)
        self.rule_ids = rule_ids = _copy(self.state.rule_ids)
        old_slots = []
        for rule, slot in removed.items():
            del slots[slot], rules[id(rule)], rule_ids[rule.rule_id]
            old_slots.append(slot)
        ids = Ids({}, self.previous.slots, 0, self.capacity.slots - 1, "rule slots", self.state.hints[0])
        new_slots = []
        for rule in sorted(added, key=ORDER):
            slot = ids.fresh()
            slots[slot] = rule
            rules[id(rule)] = (rule, slot)
            rule_ids[rule.rule_id] = slot
            new_slots.append(slot)
        self.slot_hint = ids.hint(old_slots)
        return new_slots, old_slots

    # --- stage 1 -----------------------------------------------------------------------------
    def _classes(self, added: list[MatchRule], removed: Mapping[MatchRule, int]) -> list[Change]:
        """The source prefixes whose class changes, sorted; updates own, order and refs."""
        state = self.state
        own: dict[Prefix, frozenset[int]] = {}  # of the touched prefixes, in the new policy

        def own_of(p: Prefix) -> frozenset[int]:
            found = own.get(p)
            if found is None:
                node = state.nodes.get(p)
                found = own[p] = node.own if node is not None else frozenset()
            return found

        for rule, slot in removed.items():
            own[rule.src_prefix] = own_of(rule.src_prefix) - {slot}
        for rule in added:
            own[rule.src_prefix] = own_of(rule.src_prefix) | {self.rules[id(rule)][1]}
        self.order = order = list(state.order)
        for p, slots in own.items():
            if not slots:
                del order[bisect.bisect_left(order, p)]
            elif p not in state.nodes:
                bisect.insort(order, p)

        changed: list[Change] = []
        for start, end, root in _runs(order, sorted(own)):
            run = order[start:end]
            run_own = {p: own[p] if p in own else state.nodes[p].own for p in run}
            for p, content in sweep(run, run_own, self._outer(root, own)):
                node = state.nodes.get(p)
                old = node.content if node is not None else None
                if content != old:
                    changed.append((p, old, content))
        changed += [(p, state.nodes[p].content, None) for p, slots in own.items() if not slots]
        changed.sort(key=lambda c: c[0])
        self.own = own
        self.refs = state.refs + sum(len(new or ()) - len(old or ()) for _, old, new in changed)
        return changed

    def _outer(self, root: Prefix,
               own: Mapping[Prefix, frozenset[int]]) -> tuple[Prefix, frozenset[int]] | None:
        """The nearest prefix enclosing `root` in the new policy, and its class (which is not
        in any run, so unchanged)."""
        for plen in range(root.plen - 1, -1, -1):
            shift = KEY_BITS - plen
            p = Prefix(root.bits >> shift << shift, plen)
            node = self.state.nodes.get(p)
            if node is not None and own.get(p, node.own):
                return p, node.content
        return None

    def _src(self, changed: list[Change]) -> tuple[dict[SrcKey, int], list[SrcKey], list[SrcKey]]:
        prev = self.previous
        self.classes = classes = _copy(prev.classes)
        class_ids = Ids(prev.classes, self.state.cids, FIRST_SET_ID, SET_ID_MAX, "classes",
                        self.state.hints[1])
        self.src = src = _copy(prev.src)
        self.src_keys: dict[Prefix, SrcKey] = {}
        src_put, src_del = [], []
        freed: list[int] = []
        for p, old, new in changed:
            if old is not None:
                freed.append(classes.pop(old))
            key = src_key(p)
            if new is None:
                del src[key]
                src_del.append(key)
            else:
                src[key] = classes[new] = class_ids.get(new)  # stage 2 may name a ruleset instead
                src_put.append(key)
                self.src_keys[p] = key
        self.class_hint = class_ids.hint(freed)
        return src, src_put, src_del

    # --- stage 2 -----------------------------------------------------------------------------
    def _stage2(self, changed: list[Change]) -> tuple[list[DstKey], list[DstKey], list[int], list[int]]:
        prev, state = self.previous, self.state
        self.dst = dst = _copy(prev.dst)
        self.nodes = nodes = _copy(state.nodes)
        self.cids = cids = _copy(state.cids)
        refs: dict[int, int] = {}  # ruleset id -> change of its count
        contents: dict[int, frozenset[int]] = {}  # of the rulesets first named here
        dst_put: list[DstKey] = []
        dst_del: list[DstKey] = []
        for p, old, _ in changed:
            if old is not None:
                node = nodes.pop(p)
                del cids[node.cid]
                if not node.dst:  # stage 1 named the ruleset
                    rid = node.value & ~SET_F_RULESET
                    refs[rid] = refs.get(rid, 0) - 1
                for key in node.dst:
                    rid = dst.pop(key)
                    refs[rid] = refs.get(rid, 0) - 1
                    dst_del.append(key)
        ruleset_ids = Ids(prev.rulesets, state.rulesets, FIRST_SET_ID, SET_ID_MAX, "rulesets", state.hints[2])
        parts: dict[Prefix, tuple[int, bytes]] = {}
        for p, _, new in changed:
            if new is None:
                continue
            cid = self.classes[new]
            pairs = class_dsts(new, self.slots)
            keys = []
            for q, rs in pairs:
                rid = ruleset_ids.get(rs)
                if rid not in state.rulesets:
                    contents[rid] = rs
                refs[rid] = refs.get(rid, 0) + 1
                if len(pairs) == 1 and q == ANY:
                    break  # every destination: stage 1 names the ruleset, as in compile_full
                key = dst_key(q, cid, parts)
                dst[key] = rid
                keys.append(key)
            own = self.own[p] if p in self.own else state.nodes[p].own
            if keys:
                nodes[p] = SrcNode(own, new, cid, tuple(keys), cid)
            else:
                self.src[self.src_keys[p]] = value = rid | SET_F_RULESET
                nodes[p] = SrcNode(own, new, cid, (), value)
            cids[cid] = p
            dst_put += keys
        self.rulesets = rulesets = _copy(state.rulesets)
        dead = []
        for rid, delta in refs.items():
            held = rulesets.get(rid)
            if held is None:
                rulesets[rid] = RulesetNode(delta, contents[rid], ())
            elif held.refs + delta == 0:
                dead.append(rid)
            elif delta:
                rulesets[rid] = held._replace(refs=held.refs + delta)
        self.ruleset_hint = ruleset_ids.hint(dead)
        return dst_put, dst_del, list(contents), dead

    # --- stage 3 -----------------------------------------------------------------------------
    def _stage3(self, born: list[int], dead: list[int]) -> tuple[list[PortKey], list[PortKey]]:
        self.port = port = _copy(self.previous.port)
        self.ruleset_ids = ruleset_ids = _copy(self.previous.rulesets)
        rulesets = self.rulesets
        port_put: list[PortKey] = []
        port_del: list[PortKey] = []
        for rid in dead:
            node = rulesets.pop(rid)
            del ruleset_ids[node.content]
            for key in node.port:
                del port[key]
                port_del.append(key)
        for rid in born:
            node = rulesets[rid]
            entries = ruleset_ports(node.content, self.slots, rid)
            ruleset_ids[node.content] = rid
            port.update(entries)
            rulesets[rid] = node._replace(port=tuple(entries))
            port_put += entries
        return port_put, port_del


def _copy(mapping: Mapping[_K, _V]) -> dict[_K, _V]:
    """A dict's own copy (a memory copy even after deletions, where dict(d) inserts one by one)."""
    return mapping.copy() if type(mapping) is dict else dict(mapping)


def _delta(base: CompiledMatch, *lists: list) -> Delta:  # type: ignore[type-arg]
    lists = lists or tuple([] for _ in range(8))
    return Delta(weakref.ref(base), (lists[0], lists[1]), (lists[2], lists[3]), (lists[4], lists[5]),
                 (lists[6], lists[7]))


def _runs(order: list[Prefix], roots: list[Prefix]) -> list[tuple[int, int, Prefix]]:
    """[start, end) in `order` of the prefixes nested in each root (itself included), merged:
    nested roots fall inside their outermost one, which names the run."""
    runs: list[tuple[int, int, Prefix]] = []
    for root in roots:  # sorted: an enclosing root comes before the roots inside it
        start = bisect.bisect_left(order, root)
        end = bisect.bisect_left(order, (root.bits + (1 << (KEY_BITS - root.plen)), -1))
        if runs and start < runs[-1][1]:
            continue  # inside the previous run (runs are nested or apart, never overlapping)
        runs.append((start, end, root))
    return runs
