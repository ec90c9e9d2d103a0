"""Writes compiled match rules (dataplane.matcher) into the ACL or classifier maps.

The planner orders the operations so that every packet is judged by the old or the new rule
set, never a mix (see dataplane.matcher_plan), and dataplane.matcher_layout turns its trie
entries into the writes of the tries and their fixed-depth forms (buckets, lists, exact ports);
this adapter only translates keys into the bytes of BCC's Key/Leaf types and executes them in
that order, each run of one kind of op as one batched write (dataplane.kernel.bulk), pausing at the
plan's grace point so that a packet which looked up an old stage-1 entry finishes its
stage-2/3 lookups before those entries go away.
"""

from __future__ import annotations

import ctypes
import logging
import struct
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from dataplane import abi
from dataplane.kernel.bulk import Layout, MapWriter
from dataplane.kernel.maps import Counter, DataplaneMaps
from dataplane.matcher import (
    ADDR_BITS,
    ADDR_LEN,
    FAMILY_BITS,
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
from dataplane.matcher_layout import (
    FIXED_DEPTH_MIN,
    HINT_KINDS,
    HINT_WORDS,
    Entries,
    EntryWords,
    ExactKey,
    SrcIndex,
    bucket_from_key,
    bucket_key,
    entry_from_words,
    flags,
    translate,
)
from dataplane.matcher_plan import Plan, plan

log = logging.getLogger(__name__)
ADDR_MASK = (1 << ADDR_BITS) - 1

# An XDP program runs for microseconds under rcu_read_lock; a millisecond is far past that.
GRACE_SECONDS = 0.001
# The members of the stage keys a compiled key fills, in memory order (the rest stays zero).
_SRC_FIELDS = ("prefixlen", "family", "addr")
_DST_FIELDS = ("prefixlen", "set", "family", "addr")
_PORT_FIELDS = ("prefixlen", "set", "proto", "port")
_EXACT_FIELDS = ("set", "proto", "port")
_BUCKET_FIELDS = ("family", "addr")


@dataclass(frozen=True)
class TableNames:
    src: str
    dst: str
    port: str
    rules: str
    stats: str
    src_bucket: str  # the fixed-depth forms of the stages (dataplane.matcher_layout)
    dst_list: str
    port_exact: str
    table: int  # enum tg_table: this structure's key in match_flags


_TABLE = abi.enums()["tg_table"]
FLAGS_MAP = "match_flags"
HINTS_MAP = "match_hints"
ACL_TABLES = TableNames("acl_src", "acl_dst", "acl_port", "acl_rules", "acl_rule_stats", "acl_src_bucket",
                        "acl_dst_list", "acl_port_exact", _TABLE["TG_TABLE_ACL"])
CLS_TABLES = TableNames("cls_src", "cls_dst", "cls_port", "cls_rules", "cls_rule_stats", "cls_src_bucket",
                        "cls_dst_list", "cls_port_exact", _TABLE["TG_TABLE_CLS"])


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


class ListLayout:
    """How prefix lists (matcher_layout.Entries) become struct tg_prefix_list values: offsets from
    BCC's Leaf type, unused entries zero. The address and mask words are packed as the bytes the
    program reads them from (matcher_layout.entry_words gives the same as integers)."""

    def __init__(self, leaf: Any) -> None:
        array = {name: t for name, t, *_ in leaf._fields_}["entries"]
        self.entry = Layout(array._type_, EntryWords._fields)
        self.capacity = int(array._length_)
        self.offset = int(leaf.entries.offset)
        self.header = Layout(leaf, ("count",))
        self.size = self.header.size
        if int(leaf.count.offset) != 0 or self.entry.field_size("addr_hi") != 8:
            raise TypeError("struct tg_prefix_list: count first, 64-bit address words expected")
        # Each u64 word as 8 raw bytes: the bytes of the address and mask, in memory order.
        entry_fmt = self.entry.format.lstrip("=").replace("Q", "8s")
        self._structs = [struct.Struct(f"=I{self.offset - 4}x{entry_fmt * n}"
                                       f"{self.size - self.offset - n * self.entry.size}x")
                         for n in range(self.capacity + 1)]
        self._masks: dict[int, bytes] = {}

    def _mask(self, plen: int) -> bytes:
        found = self._masks.get(plen)
        if found is None:
            bits = max(0, plen - FAMILY_BITS)
            found = self._masks[plen] = (((1 << bits) - 1) << (ADDR_BITS - bits)).to_bytes(ADDR_LEN, "big")
        return found

    def pack(self, lists: Iterable[Entries]) -> bytes:
        out = []
        for entries in lists:
            if len(entries) > self.capacity:
                raise ValueError(f"a prefix list of {len(entries)} entries; the map holds {self.capacity}")
            row: list[Any] = [len(entries)]
            for (bits, plen), value in entries:
                addr = (bits & ADDR_MASK).to_bytes(ADDR_LEN, "big")
                mask = self._mask(plen)
                row += (addr[:8], addr[8:], mask[:8], mask[8:], value, bits >> ADDR_BITS if plen else 0)
            out.append(self._structs[len(entries)].pack(*row))
        return b"".join(out)

    @staticmethod
    def unpack(leaf: Any) -> Entries:
        return tuple(entry_from_words(EntryWords(*(int(getattr(e, f)) for f in EntryWords._fields)))
                     for e in list(leaf.entries)[: int(leaf.count)])


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
        self._lists: ListLayout | None = None
        self._list_maps = {names.src_bucket, names.dst_list}  # values: struct tg_prefix_list
        self.current: CompiledMatch = empty()
        self._index: SrcIndex | None = SrcIndex()  # in step with current; None: rebuild from the maps
        self.fixed_depth_min = FIXED_DEPTH_MIN  # entries from which a stage uses its fixed-depth form

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
        self._index = None  # rebuilt from src and the buckets written, on the next apply
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
        """Writes `compiled` in place of the current policy; returns the plan (trie entries)."""
        with gc_paused():  # hundreds of thousands of ops and keys, none of them garbage
            p = plan(self.current, compiled)
            index, self._index = self._index or self._read_index(), None  # unknown if a write fails
            self._execute(translate(p, compiled, index))
            self.current, self._index = compiled, index
            self._write_flags(flags(compiled, self.fixed_depth_min))
        return p

    def _write_flags(self, value: int) -> None:
        """Which fixed-depth forms the program looks up (any value is correct at any moment)."""
        m = self._stage(FLAGS_MAP)
        m.writer.update(m.key.pack([self.names.table]), m.value.pack([value]))

    def _read_index(self) -> SrcIndex:
        """The bucket index of the current policy and the bucket elements the maps hold."""
        written = {bucket_from_key(int(k.family), bytes(k.addr)): ListLayout.unpack(v)
                   for k, v in self._table(self.names.src_bucket).items()}
        return SrcIndex.build(self.current.src, self.current.port, written)

    def replace(self, rules: list[MatchRule]) -> Plan:
        return self.apply(self.compile(rules))

    def _execute(self, p: Plan) -> None:
        """Runs the plan in order, each step (the ops of one kind) as one batch (dataplane.kernel.bulk)."""
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
            key = Layout(t.Key, key_fields)
            value = self._list_layout().header if name in self._list_maps else Layout(t.Leaf, value_fields)
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

    def _write(self, name: str, fields: Sequence[str], rows: Iterable[Any],
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

    def _exact_rows(self, keys: Sequence[ExactKey]) -> Iterable[tuple[Any, ...]]:
        width = self._stage(self.names.port_exact, _EXACT_FIELDS).key.field_size("port")
        return ((k.set, k.proto, k.port.to_bytes(width, "big")) for k in keys)

    def _list_layout(self) -> ListLayout:
        if self._lists is None:
            self._lists = ListLayout(self._table(self.names.dst_list).Leaf)
        return self._lists

    def _write_lists(self, name: str, fields: Sequence[str], rows: Iterable[Any],
                     lists: Sequence[Entries] | None) -> None:
        """Puts list elements rows[i] = lists[i], or deletes the rows (lists None)."""
        m = self._stage(name, fields)
        if lists is None:
            m.writer.delete(m.key.pack(rows))
        else:
            m.writer.update(m.key.pack(rows), self._list_layout().pack(lists))

    def _run_put_bucket(self, keys: Sequence[Any], values: Sequence[Entries]) -> None:
        self._write_lists(self.names.src_bucket, _BUCKET_FIELDS, map(bucket_key, keys), values)

    def _run_del_bucket(self, keys: Sequence[Any], _: Sequence[Any]) -> None:
        self._write_lists(self.names.src_bucket, _BUCKET_FIELDS, map(bucket_key, keys), None)

    def _run_put_dst_list(self, keys: Sequence[int], values: Sequence[Entries]) -> None:
        self._write_lists(self.names.dst_list, (), keys, values)

    def _run_del_dst_list(self, keys: Sequence[int], _: Sequence[Any]) -> None:
        self._write_lists(self.names.dst_list, (), keys, None)

    def _run_put_hint(self, words: Sequence[int], values: Sequence[int]) -> None:
        base = self.names.table * HINT_KINDS * HINT_WORDS  # this table's hints in match_hints
        self._write(HINTS_MAP, (), [base + w for w in words], values)

    def _run_put_port_exact(self, keys: Sequence[ExactKey], values: Sequence[int]) -> None:
        self._write(self.names.port_exact, _EXACT_FIELDS, self._exact_rows(keys), values)

    def _run_del_port_exact(self, keys: Sequence[ExactKey], _: Sequence[int]) -> None:
        self._write(self.names.port_exact, _EXACT_FIELDS, self._exact_rows(keys), None)

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
    def counts_by_rule(self, rule_ids: Collection[int] | None = None) -> dict[int, Counter]:
        """Per rule id (a rule rewritten with new fields gets a new slot, and new counters);
        only the rules in `rule_ids` when given (their slots alone are read from the kernel)."""
        current = self.current
        slots = current.slots
        if rule_ids is None:
            wanted = list(slots)
        elif current.state is not None:  # the compile's index: rule id -> slot, no walk of the slots
            index = current.state.rule_ids
            wanted = [index[r] for r in rule_ids if r in index]
        else:  # adopted from the pins, not compiled yet
            wanted = [s for s, r in slots.items() if r.rule_id in rule_ids]
        per_slot = self._maps.slot_counts(self.names.stats, wanted)
        out: dict[int, Counter] = {}
        for slot, counter in per_slot.items():
            rid = slots[slot].rule_id
            out[rid] = out.get(rid, Counter()) + counter
        return out
