"""The naive reference: a rule set's verdict for a packet, evaluated rule by rule in order.

No structure, no precomputation: each rule's fields are compared with the packet's as the
operator wrote them, and the first rule (in RuleColumns row order, i.e. by (priority, id)) that
matches wins. Everything the classifier builds is tested against this. `rule_matches` states one
rule; `first_match` asks the same question of every rule at once (numpy, so that thousands of
probes against thousands of rules stay quick), and a test checks the two agree.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np

from dataplane.match.columns import RuleColumns

PORT_PROTOCOLS = (6, 17, 132)  # TCP, UDP, SCTP: the protocols whose ports the data plane reads
ICMP_PROTOCOLS = (1, 58)  # ICMP, ICMPv6: their type and code
TCP = 6
TCP_NEW_MASK, TCP_NEW = 0x17, 0x02  # FIN|SYN|RST|ACK must be exactly SYN: a connection opening
# Over IPv6 these numbers name extension headers (hop-by-hop, routing, fragment, destination
# options), which the parser walks to the protocol behind them: never a packet's protocol there.
IPV6_EXTENSIONS = (0, 43, 44, 60)


@dataclass(frozen=True)
class Packet:
    """What the classifier sees of a packet."""

    family: int  # 4 or 6
    src: bytes  # 16 bytes, IPv4 in the first four
    dst: bytes
    proto: int
    sport: int = 0
    dport: int = 0
    fragment: bool = False  # a later fragment: no ports, no ICMP header, no TCP flags
    icmp_type: int = 0  # ICMP/ICMPv6 packets
    icmp_code: int = 0
    tcp_flags: int = 0  # TCP packets

    @property
    def ports(self) -> bool:
        return self.proto in PORT_PROTOCOLS and not self.fragment

    @staticmethod
    def of(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0, fragment: bool = False,
           icmp_type: int = 0, icmp_code: int = 0, tcp_flags: int = 0) -> Packet:
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        assert s.version == d.version
        return Packet(s.version, s.packed.ljust(16, b"\0"), d.packed.ljust(16, b"\0"), proto, sport, dport,
                      fragment, icmp_type, icmp_code, tcp_flags)

    def address(self, which: str) -> str:
        raw = self.src if which == "src" else self.dst
        return str(ipaddress.ip_address(raw[:4] if self.family == 4 else raw))


def _prefix_matches(rule_addr: bytes, length: int, addr: bytes) -> bool:
    if length == 0:
        return True
    a, b = int.from_bytes(rule_addr, "big"), int.from_bytes(addr, "big")
    return a >> (128 - length) == b >> (128 - length)


def rule_matches(cols: RuleColumns, i: int, p: Packet) -> bool:
    """Rule i's meaning, stated directly."""
    family = int(cols.family[i])
    if family and family != p.family:
        return False
    if not _prefix_matches(bytes(cols.src_addr[i]), int(cols.src_len[i]), p.src):
        return False
    if not _prefix_matches(bytes(cols.dst_addr[i]), int(cols.dst_len[i]), p.dst):
        return False
    if not cols.proto_any[i] and int(cols.proto[i]) != p.proto:
        return False
    icmp = p.proto in ICMP_PROTOCOLS and not p.fragment
    if cols.has_icmp_type[i] and not (icmp and int(cols.icmp_type[i]) == p.icmp_type):
        return False
    if cols.has_icmp_code[i] and not (icmp and int(cols.icmp_code[i]) == p.icmp_code):
        return False
    if cols.syn[i] and not (p.proto == TCP and not p.fragment and p.tcp_flags & TCP_NEW_MASK == TCP_NEW):
        return False
    ranges = ((int(cols.sport_lo[i]), int(cols.sport_hi[i]), p.sport),
              (int(cols.dport_lo[i]), int(cols.dport_hi[i]), p.dport))
    if all((lo, hi) == (0, 0xFFFF) for lo, hi, _ in ranges):
        return True  # any port: also packets without ports
    return p.ports and all(lo <= port <= hi for lo, hi, port in ranges)


def first_match_slow(cols: RuleColumns, p: Packet) -> int | None:
    """Row of the first rule matching the packet, or None: rule by rule."""
    for i in range(len(cols)):
        if rule_matches(cols, i, p):
            return i
    return None


def _prefixes_match(addrs: np.ndarray, lengths: np.ndarray, addr: bytes) -> np.ndarray:
    bits = np.unpackbits(addrs, axis=1) == np.unpackbits(np.frombuffer(addr, dtype=np.uint8))[None, :]
    inside = np.arange(128)[None, :] < lengths[:, None].astype(np.int64)
    return (bits | ~inside).all(axis=1)


def first_match(cols: RuleColumns, p: Packet) -> int | None:
    """Row of the first rule matching the packet, or None: the same comparisons as rule_matches,
    for all rules at once."""
    ok = (cols.family == 0) | (cols.family == p.family)
    ok &= _prefixes_match(cols.src_addr, cols.src_len, p.src)
    ok &= _prefixes_match(cols.dst_addr, cols.dst_len, p.dst)
    ok &= cols.proto_any | (cols.proto == p.proto)
    any_port = ((cols.sport_lo == 0) & (cols.sport_hi == 0xFFFF) & (cols.dport_lo == 0)
                & (cols.dport_hi == 0xFFFF))
    in_range = ((cols.sport_lo <= p.sport) & (p.sport <= cols.sport_hi) & (cols.dport_lo <= p.dport)
                & (p.dport <= cols.dport_hi))
    ok &= any_port | (p.ports & in_range)
    icmp = p.proto in ICMP_PROTOCOLS and not p.fragment
    ok &= ~cols.has_icmp_type | (icmp & (cols.icmp_type == p.icmp_type))
    ok &= ~cols.has_icmp_code | (icmp & (cols.icmp_code == p.icmp_code))
    opening = p.proto == TCP and not p.fragment and p.tcp_flags & TCP_NEW_MASK == TCP_NEW
    ok &= ~cols.syn | opening
    rows = np.flatnonzero(ok)
    return int(rows[0]) if rows.size else None
