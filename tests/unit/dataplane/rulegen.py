"""Hypothesis strategies for rule sets and probe packets over a small pool of nested prefixes.

A small pool makes overlaps (the interesting cases: nesting, ties, wildcards) the common case.
Rules fix source and destination ports (ranges drawn around edge values) for TCP, UDP and SCTP,
and any protocol number besides: portless ones (ICMP, GRE, ESP, OSPF, 0, 255) are matched by
protocol alone, and a packet without ports never matches a rule with a port range. ICMP and ICMPv6
rules may fix a type and a code, TCP rules SYN (a connection opening); probes carry those fields
(and later fragments, which have none of them).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from hypothesis import strategies as st

from dataplane.acl import acl_rule
from dataplane.match.adapter import MatchRule, to_columns
from dataplane.match.columns import RuleColumns

from .reference_matcher import IPV6_EXTENSIONS, Packet, first_match

PREFIXES = [None, "0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "192.168.0.0/16",
            "::/0", "fd00::/8", "fd00:1::/32", "fd00:1::5/128"]
V4_ADDRS = ["10.1.2.3", "10.1.2.4", "10.1.9.9", "10.200.0.1", "192.168.4.4", "172.16.0.1"]
V6_ADDRS = ["fd00:1::5", "fd00:1::6", "fd00:2::1", "2001:db8::1"]
PORT_PROTOS = (6, 17, 132)  # TCP, UDP, SCTP
ODD_PROTOS = (0, 1, 47, 50, 58, 89, 255)  # HOPOPT/none, ICMP, GRE, ESP, ICMPv6, OSPF, reserved
ICMP_PROTOS = (1, 58)
ICMP_TYPES = [0, 3, 8, 128, 129]  # echo reply, unreachable, echo request; ICMPv6 echo request, reply
ICMP_CODES = [0, 1, 13]
# TCP flag bytes: SYN, SYN-ACK, ACK, SYN-FIN, RST, SYN+PSH, SYN+ECE+CWR, none
TCP_FLAGS = [0x02, 0x12, 0x10, 0x03, 0x04, 0x0A, 0xC2, 0x00]
PROTOS = [None, *PORT_PROTOS, *ODD_PROTOS]
PORT_EDGES = [0, 1, 52, 53, 54, 79, 80, 443, 1023, 1024, 8080, 65534, 65535]


@st.composite
def port_ranges(draw: st.DrawFn) -> tuple[int, int]:
    a, b = draw(st.sampled_from(PORT_EDGES)), draw(st.sampled_from(PORT_EDGES))
    return (min(a, b), max(a, b))


@st.composite
def rules(draw: st.DrawFn, max_rules: int = 30, prefixes: Sequence[str | None] = PREFIXES,
          min_rules: int = 0) -> list[MatchRule]:
    n = draw(st.integers(min_value=min_rules, max_value=max_rules))
    ids = draw(st.lists(st.integers(min_value=1, max_value=10_000), min_size=n, max_size=n, unique=True))
    out = []
    for rid in ids:
        proto = draw(st.sampled_from(PROTOS))
        ported = proto in PORT_PROTOS
        dport = draw(st.one_of(st.none(), port_ranges())) if ported else None
        sport = draw(st.one_of(st.none(), st.none(), port_ranges())) if ported else None
        icmp = proto in ICMP_PROTOS
        icmp_type = draw(st.one_of(st.none(), st.sampled_from(ICMP_TYPES))) if icmp else None
        icmp_code = draw(st.one_of(st.none(), st.none(), st.sampled_from(ICMP_CODES))) if icmp else None
        syn = proto == 6 and draw(st.integers(0, 3)) == 0
        src = draw(st.sampled_from(prefixes))
        dst = draw(st.sampled_from([p for p in prefixes if _family(p) in (None, _family(src))]))
        out.append(acl_rule(rid, draw(st.integers(min_value=0, max_value=5)),
                            draw(st.sampled_from(["allow", "deny"])), src=src, dst=dst, proto=proto,
                            dport=dport, sport=sport, icmp_type=icmp_type, icmp_code=icmp_code, syn=syn))
    return out


def _family(prefix: str | None) -> int | None:
    """A rule's addresses are of one family (the policy models refuse others)."""
    return None if prefix is None else ipaddress.ip_network(prefix).version


@st.composite
def probes(draw: st.DrawFn, v4: Sequence[str] = V4_ADDRS, v6: Sequence[str] = V6_ADDRS) -> Packet:
    """A packet with both addresses of one family; ports only where the protocol has them."""
    pool = draw(st.sampled_from([v4, v6]))
    proto = draw(st.sampled_from([*PORT_PROTOS, *ODD_PROTOS]))
    if proto in IPV6_EXTENSIONS:
        pool = v4
    sport = dport = icmp_type = icmp_code = tcp_flags = 0
    fragment = False
    if proto in PORT_PROTOS or proto in ICMP_PROTOS:
        fragment = draw(st.integers(0, 9)) == 0
    if proto in PORT_PROTOS and not fragment:
        sport, dport = draw(st.sampled_from(PORT_EDGES)), draw(st.sampled_from(PORT_EDGES))
    if proto in ICMP_PROTOS and not fragment:
        icmp_type, icmp_code = draw(st.sampled_from(ICMP_TYPES)), draw(st.sampled_from(ICMP_CODES))
    if proto == 6 and not fragment:
        tcp_flags = draw(st.sampled_from(TCP_FLAGS))
    return Packet.of(draw(st.sampled_from(pool)), draw(st.sampled_from(pool)), proto, sport, dport, fragment,
                     icmp_type, icmp_code, tcp_flags)


def reference(rule_set: list[MatchRule], p: Packet) -> MatchRule | None:
    """The first matching rule by (priority, rule id), from the naive reference matcher."""
    cols = to_columns(rule_set)
    row = first_match(cols, p)
    if row is None:
        return None
    return next(r for r in rule_set if r.rule_id == int(cols.rule_id[row]))


def columns(rule_set: list[MatchRule]) -> RuleColumns:
    return to_columns(rule_set)


def address(p: Packet, which: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(p.address(which))
