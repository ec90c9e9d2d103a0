"""Orders the map writes that replace one compiled match structure with another.

Pure: plan(old, new) -> Plan, no I/O (dataplane.tables executes it). The order is what makes a
policy switch atomic per packet, with no generation flag in the fast path:

 1. new slots, new rulesets' stage-3 entries, new classes' stage-2 entries: all under ids the
    old policy never references, so no packet can reach them yet;
 2. stage-1 puts, longest prefix first: a packet whose longest match is a freshly written entry
    already sees every longer new entry, so its class is the new policy's;
 3. stage-1 deletes, shortest prefix first: a packet whose longest match is an old entry still
    sees every longer old entry, so its class is the old policy's;
 4. grace: a packet that read an old stage-1 entry finishes its stage-2/3 lookups;
 5. old classes, rulesets and slots go away (slot counters are zeroed for reuse).

Every packet is therefore judged entirely by the old rules or entirely by the new ones. Ids are
content-addressed (dataplane.matcher), so whatever both policies share is not touched at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dataplane.matcher import CompiledMatch

OP_KINDS = ("put_slot", "put_port", "put_dst", "put_src", "del_src", "del_dst", "del_port", "free_slot")


@dataclass(frozen=True)
class Op:
    kind: str  # one of OP_KINDS
    key: Any   # slot number, SrcKey, DstKey or PortKey
    value: Any = None


@dataclass(frozen=True)
class Plan:
    ops: tuple[Op, ...]
    grace_index: int  # pause before ops[grace_index]: the first op that removes what old packets use

    def count(self, kind: str) -> int:
        return sum(1 for op in self.ops if op.kind == kind)

    @property
    def empty(self) -> bool:
        return not self.ops


def _added(old: Mapping, new: Mapping) -> list:  # type: ignore[type-arg]
    """Keys whose value is new or changed."""
    return [k for k, v in new.items() if old.get(k) != v]


def _removed(old: Mapping, new: Mapping) -> list:  # type: ignore[type-arg]
    return [k for k in old if k not in new]


def plan(old: CompiledMatch, new: CompiledMatch) -> Plan:
    ops: list[Op] = []
    ops += [Op("put_slot", s, new.slots[s]) for s in sorted(_added(old.slots, new.slots))]
    ops += [Op("put_port", k, new.port[k]) for k in sorted(_added(old.port, new.port))]
    ops += [Op("put_dst", k, new.dst[k]) for k in sorted(_added(old.dst, new.dst))]
    src_puts = sorted(_added(old.src, new.src), key=lambda k: -k.prefixlen)
    ops += [Op("put_src", k, new.src[k]) for k in src_puts]
    ops += [Op("del_src", k) for k in sorted(_removed(old.src, new.src), key=lambda k: k.prefixlen)]
    grace_index = len(ops)
    ops += [Op("del_dst", k) for k in sorted(_removed(old.dst, new.dst))]
    ops += [Op("del_port", k) for k in sorted(_removed(old.port, new.port))]
    ops += [Op("free_slot", s) for s in sorted(_removed(old.slots, new.slots))]
    if grace_index == len(ops):
        grace_index = -1  # nothing is removed: no pause
    return Plan(tuple(ops), grace_index)
