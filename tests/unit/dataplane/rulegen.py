"""Hypothesis strategies for rule sets and probe packets over a small pool of nested prefixes.

A small pool makes overlaps (the interesting cases: nesting, ties, wildcards) the common case.
Rules fix source and destination ports (ranges drawn around edge values) for TCP, UDP and SCTP,
and any protocol number besides: portless ones (ICMP, GRE, ESP, OSPF, 0, 255) are matched by
protocol alone, and a packet without ports never matches a rule with a port range.
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
ODD_PROTOS = (0, 1, 47, 50, 89, 255)  # HOPOPT/none, ICMP, GRE, ESP, OSPF, reserved
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
        src = draw(st.sampled_from(prefixes))
        dst = draw(st.sampled_from([p for p in prefixes if _family(p) in (None, _family(src))]))
        out.append(acl_rule(rid, draw(st.integers(min_value=0, max_value=5)),
                            draw(st.sampled_from(["allow", "deny"])), src=src, dst=dst, proto=proto,
                            dport=dport, sport=sport))
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
    sport = dport = 0
    fragment = False
    if proto in PORT_PROTOS:
        sport, dport = draw(st.sampled_from(PORT_EDGES)), draw(st.sampled_from(PORT_EDGES))
        fragment = draw(st.integers(0, 9)) == 0
    return Packet.of(draw(st.sampled_from(pool)), draw(st.sampled_from(pool)), proto, sport, dport, fragment)


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
