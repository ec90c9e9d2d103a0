"""Writes compiled match rules (dataplane.matcher) into the ACL or classifier maps.

The planner orders the operations so that every packet is judged by the old or the new rule
set, never a mix (see dataplane.matcher_plan); this adapter only translates keys to BCC's
ctypes and executes them, pausing at the plan's grace point so that a packet which looked up
an old stage-1 entry finishes its stage-2/3 lookups before those entries go away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from dataplane.maps import Counter, DataplaneMaps
from dataplane.matcher import (
    SLOT_NONE,
    CompiledMatch,
    DstKey,
    MatchCapacity,
    MatchRule,
    PortKey,
    SrcKey,
    compile_rules,
    empty,
)
from dataplane.matcher_plan import Plan, plan

log = logging.getLogger(__name__)

# An XDP program runs for microseconds under rcu_read_lock; a millisecond is far past that.
GRACE_SECONDS = 0.001
_PORT_BYTES = 2


@dataclass(frozen=True)
class TableNames:
    src: str
    dst: str
    port: str
    rules: str
    stats: str


ACL_TABLES = TableNames("acl_src", "acl_dst", "acl_port", "acl_rules", "acl_rule_stats")
CLS_TABLES = TableNames("cls_src", "cls_dst", "cls_port", "cls_rules", "cls_rule_stats")

SlotWriter = Callable[[Any, MatchRule], Any]  # (Leaf type, rule) -> Leaf


def acl_leaf(leaf_type: Any, rule: MatchRule) -> Any:
    """payload of an ACL MatchRule: (action: abi.Action, flags: int)."""
    action, flags = cast(tuple[int, int], rule.payload)
    return leaf_type(rule_id=rule.rule_id, action=int(action), flags=flags)


def cls_leaf(leaf_type: Any, rule: MatchRule) -> Any:
    """payload of a classifier MatchRule: the mark."""
    return leaf_type(classifier_id=rule.rule_id, mark=int(rule.payload))  # type: ignore[call-overload]


class MatchTable:
    """One match structure (ACL or classifiers) and what is currently written to it."""

    def __init__(self, table: Callable[[str], Any], names: TableNames, capacity: MatchCapacity,
                 slot_writer: SlotWriter, maps: DataplaneMaps) -> None:
        self._table = table
        self.names = names
        self.capacity = capacity
        self._slot_writer = slot_writer
        self._maps = maps
        self.current: CompiledMatch = empty()

    def adopt(self, intended: Sequence[MatchRule] = ()) -> CompiledMatch:
        """Takes what the maps hold (written by an earlier process) as the current state.

        The maps say which keys and ids are in use, not which rules made them, so every set id
        is marked taken under a placeholder content: the next apply gives all sets fresh ids and
        swaps atomically as usual, and packets keep the old verdicts until then. A slot whose
        leaf is exactly what one of the `intended` rules would write (the leaf is all the
        program reads from a slot) is kept for that rule, and with it the rule's counters.
        """
        src = {self._src_from(k): int(v.value) for k, v in self._table(self.names.src).items()}
        dst = {self._dst_from(k): int(v.value) for k, v in self._table(self.names.dst).items()}
        port = {self._port_from(k): int(v.value) for k, v in self._table(self.names.port).items()}
        slots = self._adopt_slots({s for s in port.values() if s != SLOT_NONE}, intended)
        classes = set(src.values()) | {k.set for k in dst}
        rulesets = set(dst.values()) | {k.set for k in port}
        self.current = CompiledMatch(slots, src, dst, port, {frozenset({-c}): c for c in classes},
                                     {frozenset({-r}): r for r in rulesets})
        wanted = set(intended)
        kept = sum(1 for r in slots.values() if r in wanted)
        log.info("match table adopted", extra={"table": self.names.src, "slots": len(slots), "kept": kept,
                                               "src": len(src), "dst": len(dst), "port": len(port)})
        return self.current

    def _adopt_slots(self, used: set[int], intended: Sequence[MatchRule]) -> dict[int, MatchRule]:
        table = self._table(self.names.rules)
        by_leaf = {bytes(self._slot_writer(table.Leaf, r)): r for r in intended}
        slots: dict[int, MatchRule] = {}
        for slot in sorted(used):
            leaf = table[table.Key(slot)]
            rule = by_leaf.pop(bytes(leaf), None)
            slots[slot] = rule if rule is not None else self._placeholder(slot, leaf)
        return slots

    @staticmethod
    def _placeholder(slot: int, leaf: Any) -> MatchRule:
        rule_id = leaf.rule_id if hasattr(leaf, "rule_id") else leaf.classifier_id
        return MatchRule(rule_id=int(rule_id), priority=0, payload=("adopted", slot))

    @staticmethod
    def _src_from(key: Any) -> SrcKey:
        return SrcKey(int(key.prefixlen), int(key.family), bytes(key.addr))

    @staticmethod
    def _dst_from(key: Any) -> DstKey:
        return DstKey(int(key.prefixlen), int(key.set), int(key.family), bytes(key.addr))

    @staticmethod
    def _port_from(key: Any) -> PortKey:
        port = int.from_bytes(bytes(key.port), "big")
        return PortKey(int(key.prefixlen), int(key.set), int(key.proto), port)

    def compile(self, rules: list[MatchRule]) -> CompiledMatch:
        """Pure: raises ValueError (incl. capacity) before anything is written."""
        return compile_rules(rules, self.current, self.capacity, self.names.src.removesuffix("_src"))

    def apply(self, compiled: CompiledMatch) -> Plan:
        p = plan(self.current, compiled)
        self._execute(p)
        self.current = compiled
        return p

    def replace(self, rules: list[MatchRule]) -> Plan:
        return self.apply(self.compile(rules))

    def _execute(self, p: Plan) -> None:
        started = time.perf_counter()
        for index, op in enumerate(p.ops):
            if index == p.grace_index:
                time.sleep(GRACE_SECONDS)
            getattr(self, f"_op_{op.kind}")(op.key, op.value)
        log.debug("match table written", extra={"table": self.names.src, "ops": len(p.ops),
                                                 "seconds": time.perf_counter() - started})

    # --- key translation ---------------------------------------------------------------
    def _src_key(self, t: Any, k: SrcKey) -> Any:
        key = t.Key()
        key.prefixlen, key.family = k.prefixlen, k.family
        key.addr = type(key.addr)(*k.addr)
        return key

    def _dst_key(self, t: Any, k: DstKey) -> Any:
        key = t.Key()
        key.prefixlen, key.set, key.family = k.prefixlen, k.set, k.family
        key.addr = type(key.addr)(*k.addr)
        return key

    def _port_key(self, t: Any, k: PortKey) -> Any:
        key = t.Key()
        key.prefixlen, key.set, key.proto = k.prefixlen, k.set, k.proto
        key.port = type(key.port)(*k.port.to_bytes(_PORT_BYTES, "big"))
        return key

    # --- operations (names match matcher_plan's op kinds) ------------------------------
    def _op_put_slot(self, slot: int, rule: MatchRule) -> None:
        t = self._table(self.names.rules)
        t[t.Key(slot)] = self._slot_writer(t.Leaf, rule)

    def _op_free_slot(self, slot: int, _: Any) -> None:
        t = self._table(self.names.rules)
        t[t.Key(slot)] = t.Leaf()
        self._maps.reset_slot_counts(self.names.stats, [slot])

    def _put(self, name: str, keyfn: Callable[[Any, Any], Any], k: Any, value: int) -> None:
        t = self._table(name)
        t[keyfn(t, k)] = t.Leaf(value)

    def _delete(self, name: str, keyfn: Callable[[Any, Any], Any], k: Any) -> None:
        t = self._table(name)
        try:
            del t[keyfn(t, k)]
        except KeyError:
            pass  # already gone: deleting is idempotent

    def _op_put_src(self, k: SrcKey, v: int) -> None:
        self._put(self.names.src, self._src_key, k, v)

    def _op_put_dst(self, k: DstKey, v: int) -> None:
        self._put(self.names.dst, self._dst_key, k, v)

    def _op_put_port(self, k: PortKey, v: int) -> None:
        self._put(self.names.port, self._port_key, k, v)

    def _op_del_src(self, k: SrcKey, _: Any) -> None:
        self._delete(self.names.src, self._src_key, k)

    def _op_del_dst(self, k: DstKey, _: Any) -> None:
        self._delete(self.names.dst, self._dst_key, k)

    def _op_del_port(self, k: PortKey, _: Any) -> None:
        self._delete(self.names.port, self._port_key, k)

    # --- counters ----------------------------------------------------------------------
    def counts_by_rule(self) -> dict[int, Counter]:
        """Per rule id (a rule rewritten with new fields gets a new slot, and new counters)."""
        slots = self.current.slots
        per_slot = self._maps.slot_counts(self.names.stats, list(slots))
        out: dict[int, Counter] = {}
        for slot, counter in per_slot.items():
            rid = slots[slot].rule_id
            out[rid] = out.get(rid, Counter()) + counter
        return out
