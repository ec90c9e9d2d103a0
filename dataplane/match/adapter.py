"""Today's rule objects (MatchRule, built by dataplane.acl from the policy models) as RuleColumns.

TEMPORARY, and the one place of it: the control path still translates its pydantic policy rule by
rule into MatchRules (control/policy/intent.py); the columnar control path (decoding straight
into RuleColumns) replaces this module. Until then the reconciler compiles through
`compile_rules` here, which converts and calls the classifier's compiler; whatever it builds,
the compiler sees only RuleColumns.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Any

import numpy as np

from dataplane import abi, protocols
from dataplane.match import compiler as cp
from dataplane.match import planner
from dataplane.match.columns import RuleColumns

Network = IPv4Network | IPv6Network
U32_MAX = (1 << 32) - 1
PORT_MAX = 0xFFFF
PROTO_MAX = 0xFF
# IANA numbers of the protocols whose ports the data plane reads (xdp/include/match.h).
PORT_PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}
ICMP_PROTOCOLS = protocols.ICMP_NUMBERS
TCP = protocols.TCP
TCP_NEW_MASK, TCP_NEW = abi.define("TG_TCP_NEW_MASK"), abi.define("TG_TCP_NEW")
_FAMILY = {4: abi.define("TG_FAMILY_V4"), 6: abi.define("TG_FAMILY_V6")}

MatchCapacity = cp.Capacity
CompiledMatch = cp.Compiled
Live = cp.Live


def empty() -> Live:
    """What a table holds before anything is written."""
    return Live()


def _ident(net: Network | None) -> tuple[int, int, int] | None:
    return None if net is None else (net.version, int(net.network_address), net.prefixlen)


@dataclass(frozen=True, eq=False)
class MatchRule:
    """One rule of a first-match table. `payload`: (action, flags) for the ACL, the mark for a
    classifier. src/dst None match any address of either family; `0.0.0.0/0` all IPv4 only.
    proto None: any protocol. sport/dport (inclusive ranges) need a port protocol, and a packet
    without ports (another protocol, a later fragment) never matches a rule with one.
    icmp_type/icmp_code (None: any) need proto 1 or 58, syn (TCP opening a connection) proto 6;
    a later fragment never matches a rule with one."""

    rule_id: int
    priority: int
    src: Network | None = None
    dst: Network | None = None
    proto: int | None = None
    dport: tuple[int, int] | None = None
    payload: Hashable = None
    sport: tuple[int, int] | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    syn: bool = False
    identity: tuple[Any, ...] = field(init=False, repr=False, compare=False)

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
        for name in ("sport", "dport"):
            if getattr(self, name) is not None:
                self._check_ports(who, name)
        for name in ("icmp_type", "icmp_code"):
            value = getattr(self, name)
            if value is not None and (self.proto not in ICMP_PROTOCOLS or not 0 <= value <= PROTO_MAX):
                raise ValueError(f"{who}: {name} must be 0..{PROTO_MAX} with proto 1 or 58, got {value} "
                                 f"(proto {self.proto})")
        if self.syn and self.proto != TCP:
            raise ValueError(f"{who}: syn needs proto {TCP}, got proto {self.proto}")
        object.__setattr__(self, "identity", (self.rule_id, self.priority, _ident(self.src), _ident(self.dst),
                                              self.proto, self.sport, self.dport, self.payload,
                                              self.icmp_type, self.icmp_code, self.syn))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MatchRule):
            return NotImplemented
        return self.identity == other.identity

    def __hash__(self) -> int:
        return hash(self.identity)

    def _check_ports(self, who: str, name: str) -> None:
        if self.proto not in PORT_PROTOCOLS:
            names = "/".join(PORT_PROTOCOLS.values())
            raise ValueError(f"{who}: {name} needs proto {names}, got proto {self.proto}")
        lo, hi = getattr(self, name)
        if not 0 <= lo <= hi <= PORT_MAX:
            raise ValueError(f"{who}: {name} range {lo}-{hi} is not within 0-{PORT_MAX} with low <= high")

    @property
    def order(self) -> tuple[int, int]:
        """First match wins by (priority, rule id), ascending."""
        return (self.priority, self.rule_id)

    def matches(self, src: ipaddress.IPv4Address | ipaddress.IPv6Address,
                dst: ipaddress.IPv4Address | ipaddress.IPv6Address, proto: int, dport: int,
                sport: int = 0, ports: bool | None = None, icmp: tuple[int, int] | None = None,
                tcp_flags: int | None = None) -> bool:
        """The rule's meaning, stated directly (a reference for tests). `ports`: whether the packet
        has ports (default: TCP/UDP/SCTP); icmp: its (type, code), tcp_flags: its TCP flags (None:
        a later fragment, or not the protocol)."""
        has_ports = proto in PORT_PROTOCOLS if ports is None else ports
        if self.src is not None and (src.version != self.src.version or src not in self.src):
            return False
        if self.dst is not None and (dst.version != self.dst.version or dst not in self.dst):
            return False
        if self.proto is not None and proto != self.proto:
            return False
        for rng, port in ((self.sport, sport), (self.dport, dport)):
            if rng is not None and rng != (0, PORT_MAX) and not (has_ports and rng[0] <= port <= rng[1]):
                return False
        for wanted, index in ((self.icmp_type, 0), (self.icmp_code, 1)):
            if wanted is not None and (icmp is None or icmp[index] != wanted):
                return False
        return not self.syn or (tcp_flags is not None and tcp_flags & TCP_NEW_MASK == TCP_NEW)


def to_columns(rules: Sequence[MatchRule]) -> RuleColumns:
    """The rules as columns, sorted into judging order."""
    ordered = sorted(rules, key=lambda r: r.order)
    cols = RuleColumns.empty(len(ordered))
    for i, r in enumerate(ordered):
        cols.rule_id[i] = r.rule_id
        cols.order[i] = (r.priority << 32) | r.rule_id
        if isinstance(r.payload, tuple):  # ACL: (action, flags)
            cols.action[i], cols.flags[i] = int(r.payload[0]), int(r.payload[1])
        elif isinstance(r.payload, int):  # classifier: the mark
            cols.mark[i] = r.payload
        families = {n.version for n in (r.src, r.dst) if n is not None}
        if len(families) > 1:
            raise ValueError(f"rule {r.rule_id}: src and dst are of different families")
        cols.family[i] = _FAMILY[families.pop()] if families else 0
        for net, addr, length in ((r.src, cols.src_addr, cols.src_len), (r.dst, cols.dst_addr, cols.dst_len)):
            if net is not None:
                packed = net.network_address.packed
                addr[i, : len(packed)] = np.frombuffer(packed, dtype=np.uint8)
                length[i] = net.prefixlen
        if r.proto is not None:
            cols.proto_any[i], cols.proto[i] = False, r.proto
        for name, rng in (("sport", r.sport), ("dport", r.dport)):
            if rng is not None:
                getattr(cols, f"{name}_lo")[i], getattr(cols, f"{name}_hi")[i] = rng
        if r.icmp_type is not None:
            cols.has_icmp_type[i], cols.icmp_type[i] = True, r.icmp_type
        if r.icmp_code is not None:
            cols.has_icmp_code[i], cols.icmp_code[i] = True, r.icmp_code
        cols.syn[i] = r.syn
    return cols


def compile_rules(rules: Sequence[MatchRule], base: Live, capacity: MatchCapacity,
                  table: str = "acl") -> CompiledMatch:
    """The reconciler's entry: MatchRules compiled against what the table holds."""
    return planner.compile_rules(to_columns(rules), base, capacity, table)
