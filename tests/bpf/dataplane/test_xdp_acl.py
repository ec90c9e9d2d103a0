"""ACL first-match semantics through the real XDP program (BPF_PROG_TEST_RUN).

The reference is the rule's own meaning (`MatchRule.matches`) and docs/dataplane.md's ordering: the
matching rule with the smallest (priority, rule id) wins; when none matches, the configured
default action applies. Randomized rule sets (hypothesis) are checked against that reference,
then a table of hand-picked cases pins the edges a reader would ask about.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from dataplane import abi
from dataplane.acl import acl_rule
from dataplane.kernel.features import xdp_meta_supported
from dataplane.map_config import RuntimeConfig, TunnelEntry
from dataplane.match.adapter import MatchRule
from testbed.packets import GENEVE_PORT, VXLAN_PORT
from testbed.vxlan import OUTER_DST_MAC, OUTER_SRC_MAC, geneve_packet, inner_frame, vxlan_packet

from .conftest import IF_MAC
from .verdicts import XDP_DROP, XDP_PASS, Verdict, action_for, judge

pytestmark = pytest.mark.root

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
L4_NUMBER = {("tcp", 4): IPPROTO_TCP, ("tcp", 6): IPPROTO_TCP, ("udp", 4): IPPROTO_UDP,
             ("udp", 6): IPPROTO_UDP, ("icmp", 4): IPPROTO_ICMP, ("icmp", 6): IPPROTO_ICMPV6}
U32_MAX = (1 << 32) - 1
# UDP to these is inspected as a tunnel before the ACL runs: random plain UDP must avoid them.
TUNNEL_PORTS = {VXLAN_PORT, GENEVE_PORT}
# IPv4 fragment offset is in 8-byte units; any non-zero offset makes a non-first fragment.
NON_FIRST_FRAG_OFFSET = 185
VNI = 4242

# --- the reference ----------------------------------------------------------------------------

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Flow:
    """One test packet: what the ACL matches on, and how to build it."""

    src: str
    dst: str
    l4: str  # "tcp", "udp", "icmp"
    dport: int = 0  # ignored for icmp

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.src).version

    @property
    def proto(self) -> int:
        return L4_NUMBER[(self.l4, self.version)]

    @property
    def matched_port(self) -> int:
        """Port-less protocols have no port: a rule with a port range never matches them."""
        return self.dport if self.l4 in ("tcp", "udp") else 0

    def frame(self) -> bytes:
        return inner_frame(self.src, self.dst, proto=self.l4, dport=self.dport)  # type: ignore[arg-type]


def expected(rules: list[MatchRule], default: str, src: Address, dst: Address, proto: int,
             dport: int) -> tuple[abi.Reason, int | None]:
    """(reason, winning rule id): min over matching rules of (priority, rule id), else default."""
    matching = [r for r in rules if r.matches(src, dst, proto, dport)]
    if not matching:
        return (abi.Reason.DROP_DEFAULT if default == "deny" else abi.Reason.PASS_DEFAULT), None
    winner = min(matching, key=lambda r: (r.priority, r.rule_id))
    action, _flags = winner.payload  # type: ignore[misc]
    reason = abi.Reason.DROP_DENIED if action == abi.Action.DENY else abi.Reason.PASS_ALLOWED
    return reason, winner.rule_id


def expected_for(rules: list[MatchRule], default: str, flow: Flow) -> tuple[abi.Reason, int | None]:
    return expected(rules, default, ipaddress.ip_address(flow.src), ipaddress.ip_address(flow.dst),
                    flow.proto, flow.matched_port)


def judge_acl(dp, packet: bytes) -> tuple[Verdict, list[int]]:
    """The verdict, and the ids of the rules whose per-rule counter moved."""
    before = dp.acl.counts_by_rule()
    v = judge(dp, packet)
    after = dp.acl.counts_by_rule()
    moved = sorted(rid for rid in after if after[rid].packets != before.get(rid, after[rid]).packets)
    return v, moved


def assert_verdict(dp, packet: bytes, reason: abi.Reason, rule_id: int | None, what: str = "") -> None:
    v, moved = judge_acl(dp, packet)
    assert (v.action, v.reason) == (action_for(reason), reason), what
    assert moved == ([] if rule_id is None else [rule_id]), f"{what}: rule counters that moved"


def configure(dp, default: str) -> None:
    dp.configure(RuntimeConfig(default_action=default), if_mac=IF_MAC)


# --- randomized rule sets ---------------------------------------------------------------------

V4_NETS = ["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "192.168.0.0/16"]
V6_NETS = ["::/0", "fd00::/8", "fd00:1::/32", "fd00:1:2::/48", "fd00:1:2::3/128", "2001:db8::/32"]
ALL_NETS: list[str | None] = [None, *V4_NETS, *V6_NETS]
# Inside, beside and outside the prefixes above; the v4-mapped address is IPv6, not 10.1.2.3.
V4_ADDRS = ["10.1.2.3", "10.1.2.4", "10.1.3.1", "10.2.0.1", "192.168.7.7", "172.16.0.1"]
V6_ADDRS = ["fd00:1:2::3", "fd00:1:2::4", "fd00:1:3::1", "fd00:2::1", "fd01::1", "2001:db8::1",
            "2001:db9::1", "::ffff:10.1.2.3"]
PORT_EDGES = [0, 1, 22, 53, 80, 443, 1024, 8080, 65535]
PROTOS = [None, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP]


def _same_family(net: str | None) -> list[str | None]:
    if net is None:
        return ALL_NETS
    return [None, *(V4_NETS if ipaddress.ip_network(net).version == 4 else V6_NETS)]


@st.composite
def rule_sets(draw) -> list[MatchRule]:
    count = draw(st.integers(1, 40))
    ids = draw(st.lists(st.integers(0, 200) | st.just(U32_MAX), min_size=count, max_size=count, unique=True))
    rules = []
    for rid in ids:
        src = draw(st.sampled_from(ALL_NETS))
        dst = draw(st.sampled_from(_same_family(src)))  # the policy models refuse mixed families
        proto = draw(st.sampled_from(PROTOS))
        dport = None
        if proto in (IPPROTO_TCP, IPPROTO_UDP) and draw(st.booleans()):
            edge = st.sampled_from(PORT_EDGES) | st.integers(0, 65535)
            dport = tuple(sorted((draw(edge), draw(edge))))
        priority = draw(st.integers(0, 8) | st.just(U32_MAX))  # small range: many ties
        rules.append(acl_rule(rid, priority, draw(st.sampled_from(["allow", "deny"])), src=src, dst=dst,
                              proto=proto, dport=dport))
    return rules


def _near_edges() -> list[int]:
    return sorted({p + d for p in PORT_EDGES for d in (-1, 0, 1) if 0 <= p + d <= 65535})


@st.composite
def flows(draw) -> Flow:
    addrs = draw(st.sampled_from([V4_ADDRS, V6_ADDRS]))
    l4 = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    dport = draw(st.sampled_from(_near_edges()) | st.integers(0, 65535))
    if l4 == "udp" and dport in TUNNEL_PORTS:
        dport += 1
    return Flow(draw(st.sampled_from(addrs)), draw(st.sampled_from(addrs)), l4, dport)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(rules=rule_sets(), packets=st.lists(flows(), min_size=1, max_size=12),
       default=st.sampled_from(["allow", "deny"]))
def test_random_rule_sets_agree_with_the_reference(dp, rules, packets, default):
    configure(dp, default)
    dp.acl.replace(rules)
    for flow in packets:
        reason, rule_id = expected_for(rules, default, flow)
        assert_verdict(dp, flow.frame(), reason, rule_id, f"{flow} under default {default}")


# --- hand-picked cases ------------------------------------------------------------------------

A4, B4, C4 = "10.1.2.3", "10.2.0.1", "10.3.0.1"
A6, B6 = "fd00:1:2::3", "fd00:2::1"


def _tcp(dport: int, src: str = A4, dst: str = B4) -> Flow:
    return Flow(src, dst, "tcp", dport)


def _udp(dport: int, src: str = A4, dst: str = B4) -> Flow:
    return Flow(src, dst, "udp", dport)


RANGE_TCP = [acl_rule(1, 10, "deny", proto=IPPROTO_TCP, dport=(1000, 2000))]
RANGE_UDP = [acl_rule(1, 10, "deny", proto=IPPROTO_UDP, dport=(1000, 2000))]
RANGE_LOW = [acl_rule(1, 10, "deny", proto=IPPROTO_TCP, dport=(0, 79))]
RANGE_HIGH = [acl_rule(1, 10, "deny", proto=IPPROTO_TCP, dport=(65000, 65535))]
BROAD_FIRST = [acl_rule(1, 10, "deny", src="10.0.0.0/8"), acl_rule(2, 20, "allow", src="10.1.0.0/16")]
NARROW_FIRST = [acl_rule(1, 10, "deny", src="10.0.0.0/8"), acl_rule(2, 5, "allow", src="10.1.0.0/16")]
DENY_ALL_V4 = [acl_rule(1, 10, "deny", src="0.0.0.0/0", dst="0.0.0.0/0")]
DENY_ALL_V6 = [acl_rule(1, 10, "deny", src="::/0")]
DENY_TCP_ANY_FAMILY = [acl_rule(1, 10, "deny", proto=IPPROTO_TCP)]
DENY_10_8 = [acl_rule(1, 10, "deny", src="10.0.0.0/8")]

FIRST_MATCH = [
    ("priority beats rule id",
     [acl_rule(1, 20, "deny", src="10.0.0.0/8"), acl_rule(2, 10, "allow", src="10.0.0.0/8")],
     "deny", _tcp(80), abi.Reason.PASS_ALLOWED, 2),
    ("equal priority: the lower rule id wins",
     [acl_rule(7, 10, "allow", dst="10.2.0.0/16"), acl_rule(3, 10, "deny", dst="10.0.0.0/8")],
     "allow", _tcp(80), abi.Reason.DROP_DENIED, 3),
    ("equal priority, ids far apart", [acl_rule(U32_MAX, 0, "deny"), acl_rule(0, 0, "allow")],
     "deny", _udp(53), abi.Reason.PASS_ALLOWED, 0),
    ("tcp range: lo-1 is outside", RANGE_TCP, "allow", _tcp(999), abi.Reason.PASS_DEFAULT, None),
    ("tcp range: lo is inside", RANGE_TCP, "allow", _tcp(1000), abi.Reason.DROP_DENIED, 1),
    ("tcp range: hi is inside", RANGE_TCP, "allow", _tcp(2000), abi.Reason.DROP_DENIED, 1),
    ("tcp range: hi+1 is outside", RANGE_TCP, "allow", _tcp(2001), abi.Reason.PASS_DEFAULT, None),
    ("udp range: lo-1 is outside", RANGE_UDP, "allow", _udp(999), abi.Reason.PASS_DEFAULT, None),
    ("udp range: lo is inside", RANGE_UDP, "allow", _udp(1000), abi.Reason.DROP_DENIED, 1),
    ("udp range: hi is inside", RANGE_UDP, "allow", _udp(2000), abi.Reason.DROP_DENIED, 1),
    ("udp range: hi+1 is outside", RANGE_UDP, "allow", _udp(2001), abi.Reason.PASS_DEFAULT, None),
    ("a tcp range does not match udp", RANGE_TCP, "allow", _udp(1500), abi.Reason.PASS_DEFAULT, None),
    ("range from port 0: 0 is inside", RANGE_LOW, "allow", _tcp(0), abi.Reason.DROP_DENIED, 1),
    ("range from port 0: hi is inside", RANGE_LOW, "allow", _tcp(79), abi.Reason.DROP_DENIED, 1),
    ("range from port 0: hi+1 is outside", RANGE_LOW, "allow", _tcp(80), abi.Reason.PASS_DEFAULT, None),
    ("range to 65535: lo-1 is outside", RANGE_HIGH, "allow", _tcp(64999), abi.Reason.PASS_DEFAULT, None),
    ("range to 65535: 65535 is inside", RANGE_HIGH, "allow", _tcp(65535), abi.Reason.DROP_DENIED, 1),
    ("/8 before /16: the broad rule's priority wins in the /16", BROAD_FIRST, "allow", _tcp(80),
     abi.Reason.DROP_DENIED, 1),
    ("/16 before /8: the /16 wins inside it", NARROW_FIRST, "deny", _tcp(80), abi.Reason.PASS_ALLOWED, 2),
    ("/16 before /8: the /8 still applies outside the /16", NARROW_FIRST, "allow", _tcp(80, src=B4),
     abi.Reason.DROP_DENIED, 1),
    ("outside both prefixes: default", NARROW_FIRST, "deny", _tcp(80, src="192.168.0.1"),
     abi.Reason.DROP_DEFAULT, None),
    ("0.0.0.0/0 never matches IPv6", DENY_ALL_V4, "allow", _tcp(80, A6, B6), abi.Reason.PASS_DEFAULT, None),
    ("0.0.0.0/0 matches IPv4", DENY_ALL_V4, "allow", _tcp(80), abi.Reason.DROP_DENIED, 1),
    ("10/8 never matches the v4-mapped ::ffff:10.1.2.3", DENY_10_8, "allow",
     _tcp(80, "::ffff:10.1.2.3", "::ffff:10.2.0.1"), abi.Reason.PASS_DEFAULT, None),
    ("::/0 never matches IPv4", DENY_ALL_V6, "allow", _udp(53), abi.Reason.PASS_DEFAULT, None),
    ("::/0 matches IPv6", DENY_ALL_V6, "allow", _udp(53, A6, B6), abi.Reason.DROP_DENIED, 1),
    ("no prefix: matches IPv4", DENY_TCP_ANY_FAMILY, "allow", _tcp(22),
     abi.Reason.DROP_DENIED, 1),
    ("no prefix: matches IPv6", DENY_TCP_ANY_FAMILY, "allow", _tcp(22, A6, B6),
     abi.Reason.DROP_DENIED, 1),
    ("icmp matches a proto-1 rule", [acl_rule(4, 1, "deny", proto=IPPROTO_ICMP)], "allow",
     Flow(A4, B4, "icmp"), abi.Reason.DROP_DENIED, 4),
    ("icmpv6 is not protocol 1", [acl_rule(4, 1, "deny", proto=IPPROTO_ICMP)], "allow",
     Flow(A6, B6, "icmp"), abi.Reason.PASS_DEFAULT, None),
    ("no rule matches, default deny", [acl_rule(1, 1, "allow", src=C4)], "deny", _tcp(80),
     abi.Reason.DROP_DEFAULT, None),
]


@pytest.mark.parametrize("desc,rules,default,flow,reason,rule_id", FIRST_MATCH,
                         ids=[c[0] for c in FIRST_MATCH])
def test_first_match(dp, desc, rules, default, flow, reason, rule_id):
    ref = expected_for(rules, default, flow)
    assert ref == (reason, rule_id), f"table disagrees with the reference: {desc}"
    configure(dp, default)
    dp.acl.replace(rules)
    assert_verdict(dp, flow.frame(), reason, rule_id, desc)


# A non-first fragment carries no ports: no rule with a port range matches it (not even 0-0),
# a rule for its protocol without ports does.
FRAGMENT_RULES = [acl_rule(1, 10, "deny", proto=IPPROTO_TCP, dport=(0, 0)),
                  acl_rule(2, 20, "allow", proto=IPPROTO_TCP, dport=(80, 80)),
                  acl_rule(3, 30, "deny", proto=IPPROTO_UDP, dport=(1, 65535)),
                  acl_rule(4, 40, "deny", proto=IPPROTO_TCP)]


def _eth() -> Ether:
    return Ether(src=OUTER_SRC_MAC, dst=OUTER_DST_MAC)


def _v4_fragment(proto: int) -> bytes:
    return bytes(_eth() / IP(src=A4, dst=B4, proto=proto, frag=NON_FIRST_FRAG_OFFSET) / Raw(b"x" * 64))


FRAGMENTS = [
    ("IPv4 non-first fragment of TCP: only the portless tcp rule", _v4_fragment(IPPROTO_TCP),
     abi.Reason.DROP_DENIED, 4),
    ("IPv4 first fragment (MF, offset 0) keeps its port",
     bytes(_eth() / IP(src=A4, dst=B4, flags="MF") / TCP(dport=80) / Raw(b"x" * 64)),
     abi.Reason.PASS_ALLOWED, 2),
    ("IPv4 non-first fragment of UDP: a port range never matches it", _v4_fragment(IPPROTO_UDP),
     abi.Reason.PASS_DEFAULT, None),
    ("IPv6 non-first fragment of TCP: only the portless tcp rule",
     bytes(_eth() / IPv6(src=A6, dst=B6)
           / IPv6ExtHdrFragment(nh=IPPROTO_TCP, offset=NON_FIRST_FRAG_OFFSET, m=1) / Raw(b"x" * 64)),
     abi.Reason.DROP_DENIED, 4),
    ("IPv6 first fragment keeps its port",
     bytes(_eth() / IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(nh=IPPROTO_TCP, offset=0, m=1)
           / TCP(dport=80) / Raw(b"x" * 64)),
     abi.Reason.PASS_ALLOWED, 2),
]


@pytest.mark.parametrize("desc,frame,reason,rule_id", FRAGMENTS, ids=[c[0] for c in FRAGMENTS])
def test_fragments_are_matched_without_ports(dp, desc, frame, reason, rule_id):
    dp.acl.replace(FRAGMENT_RULES)
    assert_verdict(dp, frame, reason, rule_id, desc)


# --- replacing a rule set ---------------------------------------------------------------------

OLD_POLICY = [acl_rule(1, 10, "deny", src="10.1.0.0/16"), acl_rule(2, 20, "allow", dst="10.3.0.0/16")]
NEW_POLICY = [acl_rule(11, 10, "allow", src="10.1.0.0/16", proto=IPPROTO_TCP, dport=(80, 80)),
              acl_rule(12, 20, "deny", dst="10.3.0.0/16")]


def test_replace_swaps_one_rule_set_for_another(dp):
    to_b, to_c = _tcp(80, src=A4, dst=B4), _tcp(80, src="192.168.0.1", dst=C4)
    dp.acl.replace(OLD_POLICY)
    assert_verdict(dp, to_b.frame(), abi.Reason.DROP_DENIED, 1, "old policy: deny 10.1/16")
    assert_verdict(dp, to_c.frame(), abi.Reason.PASS_ALLOWED, 2, "old policy: allow to 10.3/16")

    dp.acl.replace(NEW_POLICY)
    assert set(dp.acl.counts_by_rule()) == {11, 12}, "the old rules' counters are gone"
    assert_verdict(dp, to_b.frame(), abi.Reason.PASS_ALLOWED, 11, "new policy: allow 10.1/16 tcp 80")
    assert_verdict(dp, _tcp(81).frame(), abi.Reason.PASS_DEFAULT, None, "old deny no longer in force")
    assert_verdict(dp, to_c.frame(), abi.Reason.DROP_DENIED, 12, "new policy: deny to 10.3/16")

    dp.acl.replace([])
    assert_verdict(dp, to_c.frame(), abi.Reason.PASS_DEFAULT, None, "empty policy: default")


def test_replace_keeps_counting_a_rule_that_stays(dp):
    kept = acl_rule(1, 10, "deny", src="10.1.0.0/16")
    dp.acl.replace([kept])
    assert_verdict(dp, _tcp(80).frame(), abi.Reason.DROP_DENIED, 1)
    dp.acl.replace([kept, acl_rule(2, 5, "allow", dst=C4 + "/32")])
    assert dp.acl.counts_by_rule()[1].packets == 1
    assert_verdict(dp, _tcp(80).frame(), abi.Reason.DROP_DENIED, 1)
    assert_verdict(dp, _tcp(80, dst=C4).frame(), abi.Reason.PASS_ALLOWED, 2)


def test_counters_of_chosen_rules_only(dp):
    """What the metrics endpoint asks: the counters of a few rules, found through the compile's
    index (no walk of every slot); the same numbers as reading them all."""
    dp.acl.replace([acl_rule(1, 10, "deny", src="10.1.0.0/16"), acl_rule(2, 5, "allow", dst=C4 + "/32")])
    assert_verdict(dp, _tcp(80).frame(), abi.Reason.DROP_DENIED, 1)
    everything = dp.acl.counts_by_rule()
    assert dp.acl.counts_by_rule({1}) == {1: everything[1]} and everything[1].packets >= 1
    assert dp.acl.counts_by_rule({2, 99}) == {2: everything[2]}  # 99: no such rule
    assert dp.acl.counts_by_rule(set()) == {}


# --- tunnels: the ACL judges the inner packet ----------------------------------------------------

OUTER_V4 = ("192.0.2.1", "192.0.2.2")
OUTER_V6 = ("2001:db8:ffff::1", "2001:db8:ffff::2")
INNER = inner_frame(A4, B4, proto="udp", dport=5000)
# (description, builder, the OUTER_RULES rule that matches its outer source)
TUNNELLED = [
    ("vxlan over IPv4", lambda vni: vxlan_packet(*OUTER_V4, vni, INNER), 1),
    ("vxlan over IPv6", lambda vni: vxlan_packet(*OUTER_V6, vni, INNER), 2),
    ("geneve over IPv4", lambda vni: geneve_packet(*OUTER_V4, vni, INNER), 1),
    ("geneve over IPv6", lambda vni: geneve_packet(*OUTER_V6, vni, INNER), 2),
]
OUTER_RULES = [acl_rule(1, 10, "deny", src="192.0.2.0/24"), acl_rule(2, 11, "deny", src="2001:db8::/32")]


@pytest.mark.parametrize("desc,build,_outer_rule", TUNNELLED, ids=[c[0] for c in TUNNELLED])
def test_deny_applies_to_the_inner_packet_of_a_decapped_frame(dp, desc, build, _outer_rule):
    dp.maps.put_tunnel(TunnelEntry(vni=VNI))
    dp.acl.replace([acl_rule(1, 10, "deny", src="10.1.0.0/16", dst="10.2.0.0/16", proto=IPPROTO_UDP,
                             dport=(5000, 5000))])
    v, moved = judge_acl(dp, build(VNI))
    assert (v.action, v.reason, moved) == (XDP_DROP, abi.Reason.DROP_DENIED, [1]), desc


@pytest.mark.parametrize("desc,build,_outer_rule", TUNNELLED, ids=[c[0] for c in TUNNELLED])
def test_outer_addresses_are_not_judged_once_decapped(dp, desc, build, _outer_rule):
    dp.maps.put_tunnel(TunnelEntry(vni=VNI))
    dp.acl.replace([*OUTER_RULES, acl_rule(3, 12, "allow", src=A4 + "/32")])
    v, moved = judge_acl(dp, build(VNI))
    assert (v.action, v.reason, moved) == (XDP_PASS, abi.Reason.PASS_ALLOWED, [3]), desc
    if xdp_meta_supported():  # else the kernel refuses XDP metadata (dataplane.kernel.features)
        assert v.meta_vni == VNI


@pytest.mark.parametrize("desc,build,outer_rule", TUNNELLED, ids=[c[0] for c in TUNNELLED])
def test_frame_left_encapsulated_is_judged_by_its_outer_headers(dp, desc, build, outer_rule):
    dp.maps.put_tunnel(TunnelEntry(vni=VNI))
    dp.acl.replace([*OUTER_RULES, acl_rule(3, 5, "allow", src=A4 + "/32")])
    v, moved = judge_acl(dp, build(VNI + 1))  # unknown VNI: left whole by default
    assert (v.action, v.reason, moved) == (XDP_DROP, abi.Reason.DROP_DENIED, [outer_rule]), desc
