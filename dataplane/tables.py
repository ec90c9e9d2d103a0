"""Writes compiled match rules (dataplane.matcher) into the ACL or classifier maps.

The planner orders the operations so that every packet is judged by the old or the new rule
set, never a mix (see dataplane.matcher_plan); this adapter only translates keys into the bytes
of BCC's Key/Leaf types and executes them in that order, each run of one kind of op as one
batched write (dataplane.bulk), pausing at the plan's grace point so that a packet which looked
up an old stage-1 entry finishes its stage-2/3 lookups before those entries go away.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from dataplane.bulk import Layout, MapWriter
from dataplane.maps import Counter, DataplaneMaps
from dataplane.matcher import (
    SET_F_RULESET,
    SLOT_NONE,
    CompiledMatch,
    DstKey,
    MatchCapacity,
    MatchRule,
    PortKey,
    SrcKey,
    compile_rules,
    empty,
    gc_paused,
)
from dataplane.matcher_plan import Plan, plan

log = logging.getLogger(__name__)

# An XDP program runs for microseconds under rcu_read_lock; a millisecond is far past that.
GRACE_SECONDS = 0.001
# The members of the stage keys a compiled key fills, in memory order (the rest stays zero).
_SRC_FIELDS = ("prefixlen", "family", "addr")
_DST_FIELDS = ("prefixlen", "set", "family", "addr")
_PORT_FIELDS = ("prefixlen", "set", "proto", "port")


@dataclass(frozen=True)
class TableNames:
    src: str
    dst: str
    port: str
    rules: str
    stats: str


ACL_TABLES = TableNames("acl_src", "acl_dst", "acl_port", "acl_rules", "acl_rule_stats")
CLS_TABLES = TableNames("cls_src", "cls_dst", "cls_port", "cls_rules", "cls_rule_stats")


@dataclass(frozen=True)
class SlotFormat:
    """What a slot of the rules map holds for a rule: members of its Leaf (memory order, the id
    first) and their values."""

    fields: tuple[str, ...]
    values: Callable[[MatchRule], tuple[int, ...]]


def _acl_values(rule: MatchRule) -> tuple[int, ...]:
    action, flags = cast(tuple[int, int], rule.payload)  # (abi.Action, flags)
    return (rule.rule_id, int(action), flags)


def _cls_values(rule: MatchRule) -> tuple[int, ...]:
    return (rule.rule_id, cast(int, rule.payload))  # the mark


ACL_SLOT = SlotFormat(("rule_id", "action", "flags"), _acl_values)
CLS_SLOT = SlotFormat(("classifier_id", "mark"), _cls_values)


@dataclass(frozen=True)
class _Stage:
    writer: MapWriter
    key: Layout
    value: Layout


class MatchTable:
    """One match structure (ACL or classifiers) and what is currently written to it."""

    def __init__(self, table: Callable[[str], Any], names: TableNames, capacity: MatchCapacity,
                 slot: SlotFormat, maps: DataplaneMaps) -> None:
        self._table = table
        self.names = names
        self.capacity = capacity
        self._slot = slot
        self._maps = maps
        self._stages: dict[str, _Stage] = {}
        self._writers: dict[str, MapWriter] = {}
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
        named = {v & ~SET_F_RULESET for v in src.values() if v & SET_F_RULESET}  # stage 1 naming a ruleset
        classes = {v for v in src.values() if not v & SET_F_RULESET} | {k.set for k in dst}
        rulesets = named | set(dst.values()) | {k.set for k in port}
        self.current = CompiledMatch(slots, src, dst, port, {frozenset({-c}): c for c in classes},
                                     {frozenset({-r}): r for r in rulesets})
        wanted = set(intended)
        kept = sum(1 for r in slots.values() if r in wanted)
        log.info("match table adopted", extra={"table": self.names.src, "slots": len(slots), "kept": kept,
                                               "src": len(src), "dst": len(dst), "port": len(port)})
        return self.current

    def _adopt_slots(self, used: set[int], intended: Sequence[MatchRule]) -> dict[int, MatchRule]:
        table, layout = self._table(self.names.rules), self._rules_stage().value
        by_leaf = {layout.pack([self._slot.values(r)]): r for r in intended}
        slots: dict[int, MatchRule] = {}
        for slot in sorted(used):
            leaf = table[table.Key(slot)]
            rule = by_leaf.pop(bytes(leaf), None)
            slots[slot] = rule if rule is not None else self._placeholder(slot, leaf)
        return slots

    def _placeholder(self, slot: int, leaf: Any) -> MatchRule:
        rule_id = getattr(leaf, self._slot.fields[0])
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
        with gc_paused():  # hundreds of thousands of ops and keys, none of them garbage
            p = plan(self.current, compiled)
            self._execute(p)
            self.current = compiled
        return p

    def replace(self, rules: list[MatchRule]) -> Plan:
        return self.apply(self.compile(rules))

    def _execute(self, p: Plan) -> None:
        """Runs the plan in order, each step (the ops of one kind) as one batch (dataplane.bulk)."""
        started = time.perf_counter()
        for index, step in enumerate(p.steps):
            if index == p.grace_step:
                time.sleep(GRACE_SECONDS)
            getattr(self, f"_run_{step.kind}")(step.keys, step.values)
        log.debug("match table written", extra={"table": self.names.src, "ops": p.count_all(),
                                                 "seconds": time.perf_counter() - started})

    # --- maps, with layouts from BCC's Key/Leaf types ------------------------------------
    def _stage(self, name: str, key_fields: Sequence[str] = (), value_fields: Sequence[str] = ()) -> _Stage:
        stage = self._stages.get(name)
        if stage is None:
            t = self._table(name)
            key, value = Layout(t.Key, key_fields), Layout(t.Leaf, value_fields)
            stage = _Stage(MapWriter(t.map_fd, name, key.size, value.size), key, value)
            self._stages[name] = stage
        return stage

    def _rules_stage(self) -> _Stage:
        return self._stage(self.names.rules, value_fields=self._slot.fields)

    def _stats_writer(self) -> MapWriter:
        """The per-CPU slot counters: BCC's Leaf holds one counter per possible CPU."""
        writer = self._writers.get(self.names.stats)
        if writer is None:
            t = self._table(self.names.stats)
            writer = MapWriter(t.map_fd, self.names.stats, ctypes.sizeof(t.Key), ctypes.sizeof(t.Leaf))
            self._writers[self.names.stats] = writer
        return writer

    # --- operations (names match matcher_plan's op kinds), a step of one kind at a time ---------
    def _run_put_slot(self, slots: Sequence[int], rules: Sequence[MatchRule]) -> None:
        m = self._rules_stage()
        m.writer.update(m.key.pack(slots), m.value.pack(map(self._slot.values, rules)))

    def _run_free_slot(self, slots: Sequence[int], _: Sequence[Any]) -> None:
        m = self._rules_stage()
        keys = m.key.pack(slots)
        m.writer.update(keys, m.value.zeros(len(slots)))
        stats = self._stats_writer()  # a freed slot is reused by another rule later: count from zero
        stats.update(keys, bytes(stats.value_size * len(slots)))

    def _write(self, name: str, fields: Sequence[str], rows: Iterable[tuple[Any, ...]],
               values: Sequence[int] | None) -> None:
        """Puts rows[i] = values[i], or deletes the rows (values None), in one stage."""
        m = self._stage(name, fields)
        if values is None:
            m.writer.delete(m.key.pack(rows))
        else:
            m.writer.update(m.key.pack(rows), m.value.pack(values))

    def _port_rows(self, keys: Sequence[PortKey]) -> Iterable[tuple[Any, ...]]:
        width = self._stage(self.names.port, _PORT_FIELDS).key.field_size("port")  # network byte order
        return ((k.prefixlen, k.set, k.proto, k.port.to_bytes(width, "big")) for k in keys)

    # SrcKey's and DstKey's fields are their key's members, in order: the keys are the rows.
    def _run_put_src(self, keys: Sequence[SrcKey], values: Sequence[int]) -> None:
        self._write(self.names.src, _SRC_FIELDS, keys, values)

    def _run_del_src(self, keys: Sequence[SrcKey], _: Sequence[int]) -> None:
        self._write(self.names.src, _SRC_FIELDS, keys, None)

    def _run_put_dst(self, keys: Sequence[DstKey], values: Sequence[int]) -> None:
        self._write(self.names.dst, _DST_FIELDS, keys, values)

    def _run_del_dst(self, keys: Sequence[DstKey], _: Sequence[int]) -> None:
        self._write(self.names.dst, _DST_FIELDS, keys, None)

    def _run_put_port(self, keys: Sequence[PortKey], values: Sequence[int]) -> None:
        self._write(self.names.port, _PORT_FIELDS, self._port_rows(keys), values)

    def _run_del_port(self, keys: Sequence[PortKey], _: Sequence[int]) -> None:
        self._write(self.names.port, _PORT_FIELDS, self._port_rows(keys), None)

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
