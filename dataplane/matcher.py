"""Compiles first-match rules into the three LPM stages the BPF programs look up.

Layout (xdp/include/tidegate_abi.h, xdp/include/match.h):

    stage 1  src: (family, address)             -> class   = rules whose source covers it
    stage 2  dst: (class, family, address)      -> ruleset = ... and whose destination covers it
    stage 3  port: (ruleset, protocol, port)    -> slot of the first of those (priority, rule id)

A class whose rules all match any destination has no stage-2 entry: its stage-1 value is its
one ruleset's id with SET_F_RULESET, and the program skips stage 2 (one trie lookup less).

The prefixes covering one address form a chain, so the longest match at each stage picks the
entry whose set is exactly the rules that can still match. Classes and rulesets are named by
their content (the set of rule slots) and keep their ids from one compile to the next, so an
update touches only what changed; new contents get ids the previous policy does not use, which
is what lets dataplane.matcher_plan switch policies without a packet seeing a mix.

Everything here is pure: compile_rules raises ValueError (naming the rule and field, or the
capacity) before anything is written. The compiling itself is in dataplane.matcher_compile
(from scratch) and dataplane.matcher_incremental (only what changed since the previous compile,
which keeps what it derived in CompiledMatch.state); both give exactly the same result.
"""

from __future__ import annotations

import gc
import ipaddress
import weakref
from collections import defaultdict
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING, Any, NamedTuple

from dataplane import abi

if TYPE_CHECKING:
    from functools import cached_property as computed_once
else:
    class computed_once:  # noqa: N801 - used as a decorator, like cached_property
        """functools.cached_property without its lock (Python 3.11 takes one on every first use):
        computed on first access, then a plain attribute of the instance (frozen or not)."""

        def __init__(self, fn: Any) -> None:
            self.fn = fn
            self.name = fn.__name__

        def __set_name__(self, owner: type, name: str) -> None:
            self.name = name

        def __get__(self, obj: Any, owner: type | None = None) -> Any:
            if obj is None:
                return self
            value = obj.__dict__[self.name] = self.fn(obj)
            return value

Network = IPv4Network | IPv6Network

FAMILY_V4 = abi.define("TG_FAMILY_V4")
FAMILY_V6 = abi.define("TG_FAMILY_V6")
FAMILY_BITS = abi.define("TG_FAMILY_BITS")
ADDR_BITS = abi.define("TG_ADDR_BITS")
ADDR_LEN = abi.define("TG_ADDR_LEN")
SET_BITS = abi.define("TG_SET_BITS")
SET_F_RULESET = abi.define("TG_SET_F_RULESET")  # a stage-1 value naming a ruleset: no stage 2
SET_ID_MAX = SET_F_RULESET - 1  # class and ruleset ids stay below the flag
PROTO_BITS = abi.define("TG_PROTO_BITS")
PORT_BITS = abi.define("TG_PORT_BITS")
SLOT_NONE = abi.SLOT_NONE
KEY_BITS = FAMILY_BITS + ADDR_BITS  # a full-length address key
PORT_MAX = (1 << PORT_BITS) - 1
U32_MAX = (1 << 32) - 1
PROTO_MAX = (1 << PROTO_BITS) - 1
# IANA protocol numbers of the protocols whose destination port the data plane reads.
PORT_PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}
FIRST_SET_ID = 1
# Set contents are unions along prefix chains; past this many rule references in all classes
# the cross product of the policy cannot fit any sane capacity, so stop instead of allocating.
CLASS_REFS_PER_ENTRY = 8

_FAMILY_OF_VERSION = {4: FAMILY_V4, 6: FAMILY_V6}
_V4_SHIFT = ADDR_BITS - 32  # IPv4 addresses are left-aligned in the key


def _net_ident(net: Network | None) -> tuple[int, int, int] | None:
    return None if net is None else (net.version, int(net.network_address), net.prefixlen)


@dataclass(frozen=True, eq=False)
class MatchRule:
    """One rule of a first-match table. `payload` is what its slot holds (action, mark, ...).

    src/dst None match any address of either family; `0.0.0.0/0` matches all IPv4 only.
    dport (inclusive range) needs a port protocol: packets without ports match port 0.
    Equal when all fields are; the hash is computed once (every compile hashes every rule).
    """

    rule_id: int
    priority: int
    src: Network | None = None
    dst: Network | None = None
    proto: int | None = None
    dport: tuple[int, int] | None = None
    payload: Hashable = None
    identity: tuple[Any, ...] = field(init=False, repr=False, compare=False)  # what equality compares
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        who = f"rule {self.rule_id}"
        if not 0 <= self.rule_id <= U32_MAX:
            raise ValueError(f"{who}: rule_id must be 0..{U32_MAX}")
        if not 0 <= self.priority <= U32_MAX:
            raise ValueError(f"{who}: priority must be 0..{U32_MAX}, got {self.priority}")
        for name in ("src", "dst"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, IPv4Network | IPv6Network):
                raise ValueError(f"{who}: {name} must be an IPv4/IPv6 network, got {value!r}")
        if self.proto is not None and not 0 <= self.proto <= PROTO_MAX:
            raise ValueError(f"{who}: proto must be 0..{PROTO_MAX}, got {self.proto}")
        if self.dport is not None:
            self._check_dport(who)
        ident = (self.rule_id, self.priority, _net_ident(self.src), _net_ident(self.dst), self.proto,
                 self.dport, self.payload)
        object.__setattr__(self, "identity", ident)
        object.__setattr__(self, "_hash", hash(ident))

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if other.__class__ is not MatchRule:
            return NotImplemented
        return self.identity == other.identity  # type: ignore[attr-defined, no-any-return]

    def __hash__(self) -> int:
        return self._hash

    def _check_dport(self, who: str) -> None:
        if self.proto not in PORT_PROTOCOLS:
            names = "/".join(PORT_PROTOCOLS.values())
            raise ValueError(f"{who}: dport needs proto {names}, got proto {self.proto}")
        lo, hi = self.dport  # type: ignore[misc]
        if not 0 <= lo <= hi <= PORT_MAX:
            raise ValueError(f"{who}: dport range {lo}-{hi} is not within 0-{PORT_MAX} with low <= high")

    @property
    def order(self) -> tuple[int, int]:
        """First match wins by (priority, rule id), ascending."""
        return (self.priority, self.rule_id)

    @computed_once
    def src_prefix(self) -> Prefix:
        return prefix_of(self.src)

    @computed_once
    def dst_prefix(self) -> Prefix:
        return prefix_of(self.dst)

    def matches(self, src: ipaddress.IPv4Address | ipaddress.IPv6Address,
                dst: ipaddress.IPv4Address | ipaddress.IPv6Address, proto: int, dport: int) -> bool:
        """The rule's meaning, stated directly: the reference the compiled form is tested against."""
        if self.src is not None and (src.version != self.src.version or src not in self.src):
            return False
        if self.dst is not None and (dst.version != self.dst.version or dst not in self.dst):
            return False
        if self.proto is not None and proto != self.proto:
            return False
        return self.dport is None or self.dport[0] <= dport <= self.dport[1]


@dataclass(frozen=True)
class MatchCapacity:
    slots: int
    src: int
    dst: int
    port: int


# --- keys as the maps hold them ----------------------------------------------------------------


class SrcKey(NamedTuple):
    prefixlen: int
    family: int
    addr: bytes  # ADDR_LEN bytes, masked to the prefix


class DstKey(NamedTuple):
    prefixlen: int
    set: int  # class id
    family: int
    addr: bytes


class PortKey(NamedTuple):
    prefixlen: int
    set: int  # ruleset id
    proto: int
    port: int  # host order; written big-endian (network order) into the key


class Prefix(NamedTuple):
    """A prefix in the (family, address) bit string of the keys; plen 0 = any family.

    Sorted as (bits, plen), prefixes come in pre-order of their nesting."""

    bits: int  # KEY_BITS wide, masked to plen
    plen: int

    def contains(self, other: Prefix) -> bool:
        shift = KEY_BITS - self.plen
        return other.plen >= self.plen and other.bits >> shift == self.bits >> shift

    @property
    def family(self) -> int:
        return self.bits >> ADDR_BITS

    @property
    def addr(self) -> bytes:
        return (self.bits & ((1 << ADDR_BITS) - 1)).to_bytes(ADDR_LEN, "big")


ANY = Prefix(0, 0)


def address_bits(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """An address as the data plane keys it: family byte, then the address left-aligned."""
    return (_FAMILY_OF_VERSION[addr.version] << ADDR_BITS) | (int(addr) << (ADDR_BITS - addr.max_prefixlen))


def prefix_of(net: Network | None) -> Prefix:
    if net is None:
        return ANY
    if net.version == 4:
        bits = (FAMILY_V4 << ADDR_BITS) | (int(net.network_address) << _V4_SHIFT)
    else:
        bits = (FAMILY_V6 << ADDR_BITS) | int(net.network_address)
    return Prefix(bits, FAMILY_BITS + net.prefixlen)


# --- the compiled form -------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledMatch:
    slots: Mapping[int, MatchRule] = field(default_factory=dict)
    src: Mapping[SrcKey, int] = field(default_factory=dict)
    dst: Mapping[DstKey, int] = field(default_factory=dict)
    port: Mapping[PortKey, int] = field(default_factory=dict)
    classes: Mapping[frozenset[int], int] = field(default_factory=dict)  # content -> class id
    rulesets: Mapping[frozenset[int], int] = field(default_factory=dict)  # content -> ruleset id
    # A class whose stage 2 would be one entry for any destination has no stage-2 entry: its
    # stage-1 value is that ruleset's id | SET_F_RULESET (the class keeps its id in `classes`).
    # What the compile derived on the way (for the next, incremental compile) and the writes from
    # the policy it was compiled against (for the planner); neither is part of the value.
    state: CompileState | None = field(default=None, compare=False, repr=False)
    delta: Delta | None = field(default=None, compare=False, repr=False)

    def changes_from(self, old: CompiledMatch) -> Delta | None:
        """The writes from `old` to this, when this was compiled against that very object."""
        return self.delta if self.delta is not None and self.delta.base() is old else None

    @property
    def rules(self) -> list[MatchRule]:
        return sorted(self.slots.values(), key=lambda r: r.order)

    def lookup(self, src: ipaddress.IPv4Address | ipaddress.IPv6Address,
               dst: ipaddress.IPv4Address | ipaddress.IPv6Address, proto: int, dport: int) -> int:
        """The slot the BPF program would find (longest-prefix lookups done in Python)."""
        return simulate_lookup(self.src, self.dst, self.port, src, dst, proto, dport)


class SrcNode(NamedTuple):
    """A source prefix of the policy and what hangs off it."""

    own: frozenset[int]  # slots whose source is exactly this prefix
    content: frozenset[int]  # its class: slots whose source covers it
    cid: int  # the class id
    dst: tuple[DstKey, ...]  # the class's stage-2 keys (none when stage 1 names its ruleset)
    value: int  # its stage-1 value: the class id, or its only ruleset's id | SET_F_RULESET


class RulesetNode(NamedTuple):
    refs: int  # stage-2 entries naming the ruleset
    content: frozenset[int]
    port: tuple[PortKey, ...]  # its stage-3 keys


@dataclass(frozen=True)
class CompileState:
    """What a compile derived on the way, so that the next one redoes only what changed.

    Never mutated: a compile copies what it changes. Ids are those of the CompiledMatch holding
    this state."""

    rules: Mapping[int, tuple[MatchRule, int]]  # id() of each rule object in the slots -> (it, slot)
    rule_ids: Mapping[int, int]  # rule id -> slot
    nodes: Mapping[Prefix, SrcNode]
    order: Sequence[Prefix]  # the keys of `nodes`, sorted
    cids: Mapping[int, Prefix]  # class id -> its prefix
    refs: int  # the sizes of all classes added up (bounded: CLASS_REFS_PER_ENTRY)
    rulesets: Mapping[int, RulesetNode]  # by ruleset id
    hints: tuple[int, int, int]  # slots, class ids, ruleset ids: all ids below these are in use


@dataclass(frozen=True)
class Delta:
    """Keys written (new or changed value) and removed, per map, going from `base` to a compile."""

    base: weakref.ref[CompiledMatch]
    slots: tuple[list[int], list[int]]
    src: tuple[list[SrcKey], list[SrcKey]]
    dst: tuple[list[DstKey], list[DstKey]]
    port: tuple[list[PortKey], list[PortKey]]


def empty() -> CompiledMatch:
    return CompiledMatch()


def _lpm(table: Mapping, keys: Iterator) -> int | None:  # type: ignore[type-arg]
    for key in keys:
        value = table.get(key)
        if value is not None:
            return int(value)
    return None


def _addr_keys(bits: int) -> Iterator[Prefix]:
    for plen in range(KEY_BITS, -1, -1):
        shift = KEY_BITS - plen
        yield Prefix(bits >> shift << shift, plen)


def simulate_lookup(src_map: Mapping[SrcKey, int], dst_map: Mapping[DstKey, int],
                    port_map: Mapping[PortKey, int], src: ipaddress.IPv4Address | ipaddress.IPv6Address,
                    dst: ipaddress.IPv4Address | ipaddress.IPv6Address, proto: int, dport: int) -> int:
    """What tg_match() computes over these map contents (tests use it on partial updates too)."""
    cls = _lpm(src_map, (SrcKey(p.plen, p.family, p.addr) for p in _addr_keys(address_bits(src))))
    if cls is None:
        return SLOT_NONE
    if cls & SET_F_RULESET:
        rs: int | None = cls & ~SET_F_RULESET  # the class's rules ignore the destination
    else:
        rs = _lpm(dst_map, (DstKey(SET_BITS + p.plen, cls, p.family, p.addr)
                            for p in _addr_keys(address_bits(dst))))
    if rs is None:
        return SLOT_NONE
    port_keys = [PortKey(SET_BITS + PROTO_BITS + plen, rs, proto, dport >> shift << shift)
                 for plen in range(PORT_BITS, -1, -1) for shift in (PORT_BITS - plen,)]
    slot = _lpm(port_map, iter([*port_keys, PortKey(SET_BITS, rs, 0, 0)]))
    return SLOT_NONE if slot is None else slot


# --- compiling (shared by dataplane.matcher_compile and dataplane.matcher_incremental) --------


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
    for prefix, content in sweep(sorted(own), {p: frozenset(m) for p, m in own.items()}):
        if budget is not None:
            budget -= len(content)
            if budget < 0:
                raise Oversized(f"more than {len(out)} sets")
        out[prefix] = content
    return out


def sweep(prefixes: Iterable[Prefix], own: Mapping[Prefix, frozenset[int]],
          outer: tuple[Prefix, frozenset[int]] | None = None) -> Iterator[tuple[Prefix, frozenset[int]]]:
    """(prefix, union of `own` along its chain) for sorted `prefixes`; `outer` is the nearest
    enclosing prefix outside them (and its union), when they are one subtree of a larger set."""
    stack: list[tuple[int, int, frozenset[int]]] = [(outer[0].bits, outer[0].plen, outer[1])] if outer else []
    for prefix in prefixes:
        bits, plen = prefix
        while stack:
            top_bits, top_plen, _ = stack[-1]
            shift = KEY_BITS - top_plen
            if plen >= top_plen and bits >> shift == top_bits >> shift:
                break
            stack.pop()
        content = stack[-1][2] | own[prefix] if stack else own[prefix]
        stack.append((bits, plen, content))
        yield prefix, content


def port_prefixes(lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """The fewest aligned (port, prefix bits) blocks covering lo..hi exactly."""
    while lo <= hi:
        size = (lo & -lo) if lo else 1 << PORT_BITS
        while size > hi - lo + 1:
            size >>= 1
        yield lo, PORT_BITS - (size.bit_length() - 1)
        lo += size


@cache
def port_blocks(lo: int, hi: int) -> tuple[tuple[int, int], ...]:
    return tuple(port_prefixes(lo, hi))


@contextmanager
def gc_paused() -> Iterator[None]:
    """Holds off the cyclic garbage collector. A compile of 100,000 rules makes a million objects
    that all stay alive, and the collections their allocation triggers (each walking every
    object of its generation, the oldest one holding the whole policy) took half its time.
    Nothing made here is cyclic garbage; what is collectable is collected once this ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def compile_rules(rules: Sequence[MatchRule], previous: CompiledMatch, capacity: MatchCapacity,
                  table: str = "acl") -> CompiledMatch:
    """Compiles `rules` to replace `previous` (whose ids stay valid until the switch is done)."""
    with gc_paused():
        return _compile(rules, previous, capacity, table)


def _compile(rules: Sequence[MatchRule], previous: CompiledMatch, capacity: MatchCapacity,
             table: str) -> CompiledMatch:
    from dataplane.matcher_compile import compile_full
    from dataplane.matcher_incremental import compile_incremental

    if previous.state is not None:
        try:
            compiled = compile_incremental(rules, previous, previous.state, capacity)
        except ValueError:
            compiled = None  # compile_full names the problem exactly as it always does
        if compiled is not None:
            return compiled
    return compile_full(rules, previous, capacity, table)
