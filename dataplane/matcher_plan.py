"""Orders the map writes that replace one compiled match structure with another.

Pure: plan(old, new) -> Plan, no I/O (dataplane.tables executes it). The order is what makes a
policy switch atomic per packet, with no generation flag in the fast path:

 1. new slots, new rulesets' stage-3 entries, new classes' stage-2 entries: all under ids the
    old policy never references, so no packet can reach them yet;
 2. stage-1 puts, longest prefix first: a packet whose longest match is a freshly written entry
    already sees every longer new entry, so its class (or ruleset, when stage 1 names one:
    SET_F_RULESET) is the new policy's;
 3. stage-1 deletes, shortest prefix first: a packet whose longest match is an old entry still
    sees every longer old entry, so its class is the old policy's;
 4. grace: a packet that read an old stage-1 entry finishes its stage-2/3 lookups;
 5. old classes, rulesets and slots go away (slot counters are zeroed for reuse).

Every packet is therefore judged entirely by the old rules or entirely by the new ones. Ids are
content-addressed (dataplane.matcher), so whatever both policies share is not touched at all.
A plan is a Step per kind of op; within one, ops are sorted by key (stage 1: by prefix length
first, as above), so a plan does not depend on the order in which a compile built its maps, and
an executor may write a step as one batch, in order.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import cached_property
from itertools import zip_longest
from operator import attrgetter
from typing import Any, NamedTuple

from dataplane.matcher import CompiledMatch

OP_KINDS = ("put_slot", "put_port", "put_dst", "put_src", "del_src", "del_dst", "del_port", "free_slot")
_PREFIXLEN = attrgetter("prefixlen")


class Op(NamedTuple):
    kind: str  # one of OP_KINDS
    key: Any   # slot number, SrcKey, DstKey or PortKey
    value: Any = None


class Step(NamedTuple):
    """The ops of one kind, in order: keys[i] gets values[i] (removals have no values)."""

    kind: str
    keys: tuple[Any, ...]
    values: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]  # at most one per kind, in OP_KINDS order
    grace_step: int  # pause before steps[grace_step]: the first that removes what old packets use

    @cached_property
    def ops(self) -> tuple[Op, ...]:
        """The plan op by op."""
        return tuple(Op(step.kind, key, value) for step in self.steps
                     for key, value in zip_longest(step.keys, step.values))

    @property
    def grace_index(self) -> int:
        """Pause before ops[grace_index] (-1: no pause)."""
        if self.grace_step < 0:
            return -1
        return sum(len(step.keys) for step in self.steps[: self.grace_step])

    def count(self, kind: str) -> int:
        return sum(len(step.keys) for step in self.steps if step.kind == kind)

    def count_all(self) -> int:
        return sum(len(step.keys) for step in self.steps)

    @property
    def empty(self) -> bool:
        return not self.steps


def _added(old: Mapping, new: Mapping) -> Collection:  # type: ignore[type-arg]
    """Keys whose value is new or changed."""
    if not old:
        return new.keys()
    return [k for k, _ in new.items() - old.items()]


def _removed(old: Mapping, new: Mapping) -> Collection:  # type: ignore[type-arg]
    return old.keys() - new.keys()


def _changes(old: CompiledMatch, new: CompiledMatch) -> tuple[tuple[Collection, Collection], ...]:  # type: ignore[type-arg]
    """(written, removed) keys of slots, src, dst, port: recorded by an incremental compile
    against `old`, else found by comparing every entry."""
    delta = new.changes_from(old)
    if delta is not None:
        return delta.slots, delta.src, delta.dst, delta.port
    return tuple((_added(o, n), _removed(o, n)) for o, n in ((old.slots, new.slots), (old.src, new.src),
                                                             (old.dst, new.dst), (old.port, new.port)))


def _by_prefixlen(keys: Collection, longest_first: bool) -> list:  # type: ignore[type-arg]
    ordered = sorted(keys)
    ordered.sort(key=_PREFIXLEN, reverse=longest_first)  # stable: equal lengths stay sorted by key
    return ordered


def plan(old: CompiledMatch, new: CompiledMatch) -> Plan:
    (slots_put, slots_del), (src_put, src_del), (dst_put, dst_del), (port_put, port_del) = _changes(old, new)
    puts: list[tuple[str, list[Any], Mapping[Any, Any]]] = [
        ("put_slot", sorted(slots_put), new.slots), ("put_port", sorted(port_put), new.port),
        ("put_dst", sorted(dst_put), new.dst), ("put_src", _by_prefixlen(src_put, True), new.src)]
    steps = [Step(kind, tuple(keys), tuple(map(values.__getitem__, keys))) for kind, keys, values in puts
             if keys]
    if src_del:
        steps.append(Step("del_src", tuple(_by_prefixlen(src_del, False))))
    grace_step = len(steps)
    steps += [Step(kind, tuple(sorted(keys))) for kind, keys in
              (("del_dst", dst_del), ("del_port", port_del), ("free_slot", slots_del)) if keys]
    if grace_step == len(steps):
        grace_step = -1  # nothing is removed: no pause
    return Plan(tuple(steps), grace_step)
