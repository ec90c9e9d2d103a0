"""Compiles first-match rules into the three LPM stages the BPF programs look up.

Layout (xdp/include/tidegate_abi.h, xdp/include/match.h):

    stage 1  src: (family, address)             -> class   = rules whose source covers it
    stage 2  dst: (class, family, address)      -> ruleset = ... and whose destination covers it
    stage 3  port: (ruleset, protocol, port)    -> slot of the first of those (priority, rule id)

The prefixes covering one address form a chain, so the longest match at each stage picks the
entry whose set is exactly the rules that can still match. Classes and rulesets are named by
their content (the set of rule slots) and keep their ids from one compile to the next, so an
update touches only what changed; new contents get ids the previous policy does not use, which
is what lets dataplane.matcher_plan switch policies without a packet seeing a mix.

Everything here is pure: compile_rules raises ValueError (naming the rule and field, or the
capacity) before anything is written.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections import defaultdict
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

from dataplane import abi

Network = IPv4Network | IPv6Network

FAMILY_V4 = abi.define("TG_FAMILY_V4")
FAMILY_V6 = abi.define("TG_FAMILY_V6")
FAMILY_BITS = abi.define("TG_FAMILY_BITS")
ADDR_BITS = abi.define("TG_ADDR_BITS")
ADDR_LEN = abi.define("TG_ADDR_LEN")
SET_BITS = abi.define("TG_SET_BITS")
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


@dataclass(frozen=True)
class MatchRule:
    """One rule of a first-match table. `payload` is what its slot holds (action, mark, ...).

    src/dst None match any address of either family; `0.0.0.0/0` matches all IPv4 only.
    dport (inclusive range) needs a port protocol: packets without ports match port 0.
    """

    rule_id: int
    priority: int
    src: Network | None = None
    dst: Network | None = None
    proto: int | None = None
    dport: tuple[int, int] | None = None
    payload: Hashable = None

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


@dataclass(frozen=True, order=True)
class SrcKey:
    prefixlen: int
    family: int
    addr: bytes  # ADDR_LEN bytes, masked to the prefix


@dataclass(frozen=True, order=True)
class DstKey:
    prefixlen: int
    set: int  # class id
    family: int
    addr: bytes


@dataclass(frozen=True, order=True)
class PortKey:
    prefixlen: int
    set: int  # ruleset id
    proto: int
    port: int  # host order; written big-endian (network order) into the key


@dataclass(frozen=True, order=True)
class Prefix:
    """A prefix in the (family, address) bit string of the keys; plen 0 = any family."""

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
    return Prefix(address_bits(net.network_address), FAMILY_BITS + net.prefixlen)


# --- the compiled form -------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledMatch:
    slots: Mapping[int, MatchRule] = field(default_factory=dict)
    src: Mapping[SrcKey, int] = field(default_factory=dict)
    dst: Mapping[DstKey, int] = field(default_factory=dict)
    port: Mapping[PortKey, int] = field(default_factory=dict)
    classes: Mapping[frozenset[int], int] = field(default_factory=dict)  # content -> class id
    rulesets: Mapping[frozenset[int], int] = field(default_factory=dict)  # content -> ruleset id

    @property
    def rules(self) -> list[MatchRule]:
        return sorted(self.slots.values(), key=lambda r: r.order)

    def lookup(self, src: ipaddress.IPv4Address | ipaddress.IPv6Address,
               dst: ipaddress.IPv4Address | ipaddress.IPv6Address, proto: int, dport: int) -> int:
        """The slot the BPF program would find (longest-prefix lookups done in Python)."""
        return simulate_lookup(self.src, self.dst, self.port, src, dst, proto, dport)


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
    rs = _lpm(dst_map, (DstKey(SET_BITS + p.plen, cls, p.family, p.addr)
                        for p in _addr_keys(address_bits(dst))))
    if rs is None:
        return SLOT_NONE
    port_keys = [PortKey(SET_BITS + PROTO_BITS + plen, rs, proto, dport >> shift << shift)
                 for plen in range(PORT_BITS, -1, -1) for shift in (PORT_BITS - plen,)]
    slot = _lpm(port_map, iter([*port_keys, PortKey(SET_BITS, rs, 0, 0)]))
    return SLOT_NONE if slot is None else slot


# --- compiling ---------------------------------------------------------------------------------


class _Ids:
    """Content -> id, keeping the previous policy's ids and never reusing one it still holds."""

    def __init__(self, previous: Mapping, first: int, limit: int, what: str) -> None:  # type: ignore[type-arg]
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


def port_prefixes(lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """The fewest aligned (port, prefix bits) blocks covering lo..hi exactly."""
    while lo <= hi:
        size = (lo & -lo) if lo else 1 << PORT_BITS
        while size > hi - lo + 1:
            size >>= 1
        yield lo, PORT_BITS - (size.bit_length() - 1)
        lo += size


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


def _assign_slots(rules: Sequence[MatchRule], previous: CompiledMatch, capacity: int) -> dict[int, MatchRule]:
    seen: dict[int, MatchRule] = {}
    for r in rules:
        if r.rule_id in seen:
            raise ValueError(f"rule {r.rule_id}: rule_id is used twice")
        seen[r.rule_id] = r
    kept = {rule: slot for slot, rule in previous.slots.items()}
    ids = _Ids(kept, 0, capacity - 1, "rule slots")
    return {ids.get(r): r for r in sorted(rules, key=lambda r: r.order)}


def _check(what: str, new: Mapping, old: Mapping, capacity: int, setting: str) -> None:  # type: ignore[type-arg]
    peak = len(new.keys() | old.keys())
    if peak > capacity:
        raise ValueError(f"{what}: the policy needs at least {len(new)} entries ({peak} while the previous "
                         f"policy is still live) but the map holds {capacity}; raise capacities.{setting}")


def compile_rules(rules: Sequence[MatchRule], previous: CompiledMatch, capacity: MatchCapacity,
                  table: str = "acl") -> CompiledMatch:
    """Compiles `rules` to replace `previous` (whose ids stay valid until the switch is done)."""
    slots = _assign_slots(rules, previous, capacity.slots)
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
