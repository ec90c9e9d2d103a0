"""Hypothesis strategies for rule sets and probe packets over a small pool of nested prefixes.

A small pool makes overlaps (the interesting cases: nesting, ties, wildcards) the common case.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from hypothesis import strategies as st

from dataplane.acl import acl_rule

PREFIXES = [None, "0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "192.168.0.0/16",
            "::/0", "fd00::/8", "fd00:1::/32", "fd00:1::5/128"]
V4_ADDRS = ["10.1.2.3", "10.1.2.4", "10.1.9.9", "10.200.0.1", "192.168.4.4", "172.16.0.1"]
V6_ADDRS = ["fd00:1::5", "fd00:1::6", "fd00:2::1", "2001:db8::1"]
PROTOS = [None, 6, 17, 1]
PORT_PROTOS = {6, 17}
PORT_EDGES = [0, 1, 52, 53, 54, 79, 80, 443, 1023, 1024, 8080, 65534, 65535]


@st.composite
def port_ranges(draw: st.DrawFn) -> tuple[int, int]:
    a, b = draw(st.sampled_from(PORT_EDGES)), draw(st.sampled_from(PORT_EDGES))
    return (min(a, b), max(a, b))


@st.composite
def rules(draw: st.DrawFn, max_rules: int = 30, prefixes: Sequence[str | None] = PREFIXES) -> list:
    n = draw(st.integers(min_value=0, max_value=max_rules))
    ids = draw(st.lists(st.integers(min_value=1, max_value=10_000), min_size=n, max_size=n, unique=True))
    out = []
    for rid in ids:
        proto = draw(st.sampled_from(PROTOS))
        dport = draw(st.one_of(st.none(), port_ranges())) if proto in PORT_PROTOS else None
        out.append(acl_rule(rid, draw(st.integers(min_value=0, max_value=5)),
                            draw(st.sampled_from(["allow", "deny"])), src=draw(st.sampled_from(prefixes)),
                            dst=draw(st.sampled_from(prefixes)), proto=proto, dport=dport))
    return out


@st.composite
def probes(draw: st.DrawFn, v4: Sequence[str] = V4_ADDRS, v6: Sequence[str] = V6_ADDRS) -> tuple:
    """(src, dst, proto, dport) with both addresses of one family."""
    pool = draw(st.sampled_from([v4, v6]))
    proto = draw(st.sampled_from([6, 17, 1]))
    dport = draw(st.sampled_from(PORT_EDGES)) if proto in PORT_PROTOS else 0
    src, dst = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
    return ipaddress.ip_address(src), ipaddress.ip_address(dst), proto, dport


def reference(rule_set: list, src, dst, proto: int, dport: int):  # noqa: ANN001, ANN201
    """The first matching rule by (priority, rule id), stated without any of the compiler's ideas."""
    matching = [r for r in rule_set if r.matches(src, dst, proto, dport)]
    return min(matching, key=lambda r: (r.priority, r.rule_id), default=None)
