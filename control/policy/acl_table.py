"""A policy's ACL as columns: the rules held as numpy arrays, never as an object per rule.

`AclTable` is what `Policy.acl` holds. Its rows are `RuleColumns` (dataplane.match.columns, the
classifier's input) in judging order, (priority, id) ascending, plus what the columns do not say
and an operator reads back:

- `given`: which optional fields the rule wrote (GIVEN_* bits), so a rule reads back as written
  (`dst: 0.0.0.0/0` is not the same text as no dst, `dport: 0-65535` not the same as none);
- `seq`: the rule's place in the policy's list order (what ApplyPolicy sent, then each added
  rule after the rest), which ListAclRules and GetPolicy answer in;
- `description`: the operator's text, and `metrics`: whether its counters are Prometheus series.

A table is immutable. It is cut into blocks of about BLOCK_ROWS rules in judging order, so that
adding or deleting one rule copies one block, not the whole table: with 100,000 rules a copy of
every column costs milliseconds, a block a few microseconds (`AddAclRule` has a 5 ms budget).
The whole table as one block (`whole()`) is made when a bulk step needs it, once per table.

Read as a sequence it gives `AclRule` models in list order, built on demand (for edits, tests
and small policies; bulk readers use the columns: control.policy.acl_decode).
"""

from __future__ import annotations

import array
import bisect
import ipaddress
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from control.policy.rule_model import AclRule, Match, PortRange, ipv4_network
from dataplane import abi
from dataplane.match.columns import ADDR_BYTES, PORT_ANY, SCHEMA, RuleColumns

GIVEN_SRC, GIVEN_DST, GIVEN_SPORT, GIVEN_DPORT = 1, 2, 4, 8
BLOCK_ROWS = 2048  # a block is split once it holds twice this many rules
DEFAULT_PRIORITY = 1000
ACTIONS = ("allow", "deny", "reject")  # the model's literals
ACTION_VALUES = np.array([int(abi.Action[a.upper()]) for a in ACTIONS], dtype=np.uint8)  # -> tg_action
FLAG_LOG = abi.define("TG_RULE_F_LOG")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, eq=False)
class Block:
    """Rules in judging order: their columns and what the columns do not hold."""

    rules: RuleColumns
    given: npt.NDArray[np.uint8]
    seq: npt.NDArray[np.uint64]
    description: npt.NDArray[np.object_]  # str per rule
    metrics: npt.NDArray[np.bool_]  # the rule's counters exported as Prometheus series

    def __len__(self) -> int:
        return self.size

    @cached_property
    def size(self) -> int:
        return len(self.rules)

    @cached_property
    def first(self) -> int:
        """The first rule's order (rules are in judging order)."""
        return int(self.rules.order[0])

    @classmethod
    def empty(cls) -> Block:
        return cls(RuleColumns.empty(), np.zeros(0, np.uint8), np.zeros(0, np.uint64),
                   np.zeros(0, dtype=object), np.zeros(0, bool))

    def take(self, rows: Any) -> Block:
        """The rows at `rows` (indices, a boolean mask or a slice), in that order."""
        return Block(self.rules.take(rows), self.given[rows], self.seq[rows], self.description[rows],
                     self.metrics[rows])

    @staticmethod
    def concat(blocks: Sequence[Block]) -> Block:
        if len(blocks) == 1:
            return blocks[0]
        if not blocks:
            return Block.empty()
        return Block(RuleColumns.concat([b.rules for b in blocks]),
                     np.concatenate([b.given for b in blocks]), np.concatenate([b.seq for b in blocks]),
                     np.concatenate([b.description for b in blocks]),
                     np.concatenate([b.metrics for b in blocks]))

    def sorted(self) -> Block:
        """In judging order (order is unique: it holds the rule id)."""
        order = self.rules.order
        if len(order) < 2 or bool(np.all(order[1:] > order[:-1])):
            return self
        return self.take(np.argsort(order, kind="stable"))

    @cached_property
    def sorted_ids(self) -> array.array[int]:
        """The rule ids, sorted: an array.array, which bisect searches without a numpy call per
        block and the collector does not walk (a set would be walked while young)."""
        return array.array("I", np.sort(self.rules.rule_id).astype(np.uint32).tobytes())

    def holds(self, rule_id: int) -> bool:
        ids = self.sorted_ids
        at = bisect.bisect_left(ids, rule_id)
        return at < len(ids) and ids[at] == rule_id

    def same_rows(self, other: Block) -> npt.NDArray[np.bool_]:
        """Row by row (same length): whether the rules are the same, list order aside."""
        same = np.ones(len(self), dtype=bool)
        for name, _, shape in SCHEMA:
            a, b = getattr(self.rules, name), getattr(other.rules, name)
            same &= (a == b).all(axis=1) if shape else a == b
        return (same & (self.given == other.given) & (self.description == other.description)
                & (self.metrics == other.metrics))


def _split(block: Block) -> list[Block]:
    n = len(block)
    if n <= 2 * BLOCK_ROWS:
        return [block] if n else []
    cuts = range(0, n, BLOCK_ROWS)
    return [block.take(slice(start, start + BLOCK_ROWS)) for start in cuts]


class AclTable(Sequence[AclRule]):
    """An immutable ACL (see the module docstring)."""

    def __init__(self, blocks: Sequence[Block] = (), next_seq: int | None = None,
                 step: tuple[AclTable, Block | None, int | None] | None = None) -> None:
        self._blocks = tuple(b for b in blocks if len(b))
        # what made this table from another: (that table, the rule added, the rule id deleted),
        # the other held weakly (a chain of edits must not keep every earlier table alive)
        self._step = None if step is None else (weakref.ref(step[0]), step[1], step[2])
        self._firsts = [b.first for b in self._blocks]
        self._len = sum(b.size for b in self._blocks)
        if next_seq is None:
            next_seq = max((int(b.seq.max()) + 1 for b in self._blocks), default=0)
        self._next_seq = next_seq

    @classmethod
    def from_block(cls, block: Block) -> AclTable:
        """A table of `block`'s rules (any order; ids must be unique: the decoders check)."""
        return cls(_split(block.sorted()))

    # --- reading ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._len

    @property
    def blocks(self) -> tuple[Block, ...]:
        return self._blocks

    def whole(self) -> Block:
        """Every rule, in judging order, as one block (made once per table)."""
        cached: Block | None = self.__dict__.get("_whole")
        if cached is None:
            cached = self.__dict__["_whole"] = Block.concat(self._blocks)
        return cached

    @property
    def columns(self) -> RuleColumns:
        """The rules in judging order: what the classifier compiles."""
        return self.whole().rules

    @cached_property
    def list_order(self) -> npt.NDArray[np.intp]:
        """Rows of whole() in list order."""
        return np.argsort(self.whole().seq, kind="stable")

    def metric_ids(self) -> frozenset[int]:
        """Ids of the rules marked `metrics: true`."""
        whole = self.whole()
        return frozenset(whole.rules.rule_id[whole.metrics].tolist())

    def ids(self) -> list[int]:
        """Rule ids in list order."""
        return [int(i) for i in self.whole().rules.rule_id[self.list_order]]

    @overload
    def __getitem__(self, index: int) -> AclRule: ...
    @overload
    def __getitem__(self, index: slice) -> list[AclRule]: ...

    def __getitem__(self, index: int | slice) -> AclRule | list[AclRule]:
        rows = self.list_order[index]
        if isinstance(index, slice):
            return rules_of(self.whole(), rows)
        return rules_of(self.whole(), [int(rows)])[0]

    def __iter__(self) -> Iterator[AclRule]:
        return iter(rules_of(self.whole(), self.list_order))

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if isinstance(other, list):
            return list(self) == other
        if not isinstance(other, AclTable):
            return NotImplemented
        if len(self) != len(other):
            return False
        a, b = self.whole(), other.whole()
        return bool(a.same_rows(b).all()) and bool(np.array_equal(self.list_order, other.list_order))

    def __hash__(self) -> int:
        return hash((len(self), self.whole().rules.order.tobytes()))

    def __repr__(self) -> str:
        return f"AclTable({len(self)} rules)"

    def find(self, rule_id: int) -> tuple[int, int] | None:
        """(block, row) of the rule with this id, or None."""
        if not 0 <= rule_id <= 0xFFFFFFFF:
            return None
        for index, block in enumerate(self._blocks):
            if block.holds(rule_id):  # sorted once per block: an edit remakes one block's
                return index, int(np.flatnonzero(block.rules.rule_id == rule_id)[0])
        return None

    def __contains__(self, rule: object) -> bool:
        return isinstance(rule, AclRule) and rule in list(self)

    # --- edits -----------------------------------------------------------------------------------
    def add(self, rule: AclRule) -> AclTable:
        """The table with `rule` added (last in list order). The caller checks the id is free."""
        one = block_of([rule], seq_start=self._next_seq)
        order = int(one.rules.order[0])
        at = max(0, bisect.bisect_right(self._firsts, order) - 1)
        blocks = list(self._blocks)
        if not blocks:
            return AclTable([one], self._next_seq + 1, (self, one, None))
        target = blocks[at]
        row = int(np.searchsorted(target.rules.order, order))
        blocks[at:at + 1] = _split(_insert(target, row, one))
        return AclTable(blocks, self._next_seq + 1, (self, one, None))

    def edited(self, removed: set[int], added: Sequence[AclRule]) -> AclTable:
        """The table without the rules of ids `removed`, with `added` after the rest (list
        order): many edits at once (a journal replayed), one copy."""
        whole = self.whole()
        keep = ~np.isin(whole.rules.rule_id, np.fromiter(removed, np.uint32, len(removed)))
        extra = block_of(added, seq_start=self._next_seq)
        return AclTable(_split(Block.concat([whole.take(keep), extra]).sorted()), self._next_seq + len(added))

    def remove(self, rule_id: int) -> AclTable:
        """The table without the rule of that id (KeyError if there is none)."""
        where = self.find(rule_id)
        if where is None:
            raise KeyError(rule_id)
        at, row = where
        blocks = list(self._blocks)
        keep = np.ones(len(blocks[at]), dtype=bool)
        keep[row] = False
        blocks[at] = blocks[at].take(keep)
        return AclTable(blocks, self._next_seq, (self, None, rule_id))

    def edit_from(self, other: AclTable) -> tuple[RuleColumns | None, int | None] | None:
        """(the rule added, the id deleted) when this table is `other` with one rule added or
        deleted (by add() or remove()); None otherwise. What lets the classifier edit in place."""
        if self._step is None or self._step[0]() is not other:
            return None
        _, added, removed = self._step
        return (None if added is None else added.rules), removed


def _insert(block: Block, row: int, one: Block) -> Block:
    before, after = block.take(slice(0, row)), block.take(slice(row, None))
    return Block.concat([before, one, after])


# --- AclRule models <-> rows -----------------------------------------------------------------------

def _prefix_bytes(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bytes:
    return network.network_address.packed.ljust(ADDR_BYTES, b"\0")


def block_of(rules: Sequence[AclRule], seq_start: int = 0) -> Block:
    """Validated rule models as a block, in their order (not sorted)."""
    n = len(rules)
    cols: dict[str, Any] = {name: np.zeros((n, *shape), dtype=dtype) for name, dtype, shape in SCHEMA}
    given = np.zeros(n, np.uint8)
    for i, rule in enumerate(rules):
        m = rule.match
        cols["rule_id"][i] = rule.id
        cols["order"][i] = rule.priority << 32 | rule.id
        cols["action"][i] = ACTION_VALUES[ACTIONS.index(rule.action)]
        cols["flags"][i] = FLAG_LOG if rule.log else 0
        for side, bit in (("src", GIVEN_SRC), ("dst", GIVEN_DST)):
            net = getattr(m, side)
            if net is not None:
                given[i] |= bit
                cols["family"][i] = net.version
                cols[f"{side}_addr"][i] = np.frombuffer(_prefix_bytes(net), np.uint8)
                cols[f"{side}_len"][i] = net.prefixlen
        number = m.protocol_number
        cols["proto_any"][i] = number is None
        cols["proto"][i] = number or 0
        for side, bit in (("sport", GIVEN_SPORT), ("dport", GIVEN_DPORT)):
            ports = getattr(m, side)
            low, high = PORT_ANY if ports is None else (ports.low, ports.high)
            given[i] |= bit if ports is not None else 0
            cols[f"{side}_lo"][i], cols[f"{side}_hi"][i] = low, high
        for name in ("icmp_type", "icmp_code"):
            value = getattr(m, name)
            cols[f"has_{name}"][i], cols[name][i] = value is not None, value or 0
        cols["syn"][i] = m.syn
    description = np.empty(n, dtype=object)
    description[:] = [r.description for r in rules]
    seq = np.arange(seq_start, seq_start + n, dtype=np.uint64)
    metrics = np.fromiter((r.metrics for r in rules), bool, n)
    return Block(RuleColumns(**cols), given, seq, description, metrics)


def _network(family: int, addr: npt.NDArray[np.uint8], plen: int) -> Network:
    if family == 4:
        return ipv4_network(int.from_bytes(addr[:4].tobytes(), "big"), plen)
    return ipaddress.IPv6Network((int.from_bytes(addr.tobytes(), "big"), plen))


_ACTION_OF = {int(v): a for v, a in zip(ACTION_VALUES, ACTIONS, strict=True)}
_PROTOCOL_OF = {n: Match.model_validate({"protocol": n}).protocol for n in range(256)}


def rules_of(block: Block, rows: Sequence[int] | npt.NDArray[np.intp]) -> list[AclRule]:
    """The rows as rule models (built without validating again: they were validated once)."""
    r = block.rules
    out = []
    columns = {name: getattr(r, name)[rows] for name, _, _ in SCHEMA}
    given, description, metrics = block.given[rows], block.description[rows], block.metrics[rows]
    for i in range(len(given)):
        g = int(given[i])
        family = int(columns["family"][i])
        match: dict[str, Any] = {
            side: _network(family, columns[f"{side}_addr"][i], int(columns[f"{side}_len"][i]))
            if g & bit else None for side, bit in (("src", GIVEN_SRC), ("dst", GIVEN_DST))}
        match["protocol"] = None if columns["proto_any"][i] else _PROTOCOL_OF[int(columns["proto"][i])]
        for side, bit in (("dport", GIVEN_DPORT), ("sport", GIVEN_SPORT)):
            match[side] = (PortRange.model_construct(low=int(columns[f"{side}_lo"][i]),
                                                     high=int(columns[f"{side}_hi"][i])) if g & bit else None)
        for name in ("icmp_type", "icmp_code"):
            match[name] = int(columns[name][i]) if columns[f"has_{name}"][i] else None
        match["syn"] = bool(columns["syn"][i])
        order = int(columns["order"][i])
        out.append(AclRule.model_construct(
            id=int(columns["rule_id"][i]), priority=order >> 32, action=_ACTION_OF[int(columns["action"][i])],
            match=Match.model_construct(**match), log=bool(columns["flags"][i] & FLAG_LOG),
            description=description[i], metrics=bool(metrics[i])))
    return out
