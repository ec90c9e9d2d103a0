"""Fragmented datagrams through the real XDP program (BPF_PROG_TEST_RUN), under both settings of
`fragments` (docs/dataplane.md, "Fragments").

The policy is a host firewall's: `default_action: deny` with `allow udp dport 53` (and TCP 80).
A DNS answer too big for the path arrives as a first fragment, which carries the UDP header, and
later fragments, which carry none. Under "judge" every fragment meets the ACL and a later one,
judged without ports, falls to the default deny: the datagram can never be reassembled. Under
"first" the datagram is judged by its first fragment and the later ones pass before the ACL,
counted PASS_LATER_FRAGMENT. The fragments are cut by scapy (IPv4 MF/offset, IPv6 Fragment
header), not by the code under test.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Ether

from dataplane import abi
from dataplane.acl import acl_rule, classifier
from dataplane.map_config import RuntimeConfig, TunnelEntry
from testbed.packets import vxlan

from .conftest import IF_MAC
from .verdicts import XDP_DROP, XDP_PASS, judge, require_meta

pytestmark = pytest.mark.root

R, E = abi.Reason, abi.Event
UDP_P, TCP_P = 17, 6
CLIENT4, SERVER4 = "198.51.100.7", "192.0.2.10"
CLIENT6, SERVER6 = "2001:db8:1::7", "2001:db8::10"
ETH = Ether(src="02:00:00:00:00:02", dst="02:aa:00:00:00:01")  # explicit: scapy would resolve one
ALLOW_DNS, ALLOW_WEB = 1, 2
POLICY = [acl_rule(ALLOW_DNS, 10, "allow", proto=UDP_P, dport=(53, 53)),
          acl_rule(ALLOW_WEB, 20, "allow", proto=TCP_P, dport=(80, 80))]
BIG = bytes(range(256)) * 12  # 3,072 bytes of payload: three fragments of 1,280 bytes or fewer
POLICY_EVENTS = (E.POLICY_SENT, E.POLICY_RATE_LIMITED, E.POLICY_RINGBUF_FULL)


def config(fragments: str, **kw: Any) -> RuntimeConfig:
    return RuntimeConfig(default_action="deny", fragments=fragments, **kw)  # type: ignore[arg-type]


def pieces(l4: Any, family: int = 4, size: int = 1280, src: str | None = None) -> list[bytes]:
    """`l4` (UDP/TCP with its payload) from the client to the server, cut into fragments."""
    if family == 4:
        return [bytes(ETH / f) for f in fragment(IP(src=src or CLIENT4, dst=SERVER4) / l4, fragsize=size)]
    whole = IPv6(src=src or CLIENT6, dst=SERVER6) / IPv6ExtHdrFragment() / l4
    return [bytes(ETH / f) for f in fragment6(whole, size)]


def _is_later(frame: bytes) -> bool:
    pkt = Ether(frame)
    if pkt.haslayer(IP):
        return pkt[IP].frag != 0
    return pkt[IPv6ExtHdrFragment].offset != 0


@pytest.fixture
def fw(dp):
    dp.configure(config("judge"), if_mac=IF_MAC)
    dp.acl.replace(POLICY)
    return dp


def run_datagram(dp: Any, frames: list[bytes]) -> tuple[list[Any], Counter[int], Counter[Any]]:
    """Each fragment's verdict, and how the ACL rule counters and policy events moved."""
    rules, events = dp.acl.counts_by_rule(), dp.maps.event_counts()
    verdicts = [judge(dp, f) for f in frames]
    after_rules, after_events = dp.acl.counts_by_rule(), dp.maps.event_counts()
    moved_rules = Counter({k: c.packets - rules[k].packets for k, c in after_rules.items()
                           if c.packets != rules[k].packets})
    moved_events = Counter({e: after_events[e].packets - events[e].packets for e in POLICY_EVENTS
                            if after_events[e].packets != events[e].packets})
    return verdicts, moved_rules, moved_events


DATAGRAMS = [
    ("IPv4 UDP to 53", lambda: pieces(UDP(sport=40000, dport=53) / BIG), ALLOW_DNS),
    ("IPv6 UDP to 53", lambda: pieces(UDP(sport=40000, dport=53) / BIG, family=6), ALLOW_DNS),
    ("IPv4 TCP to 80", lambda: pieces(TCP(sport=40000, dport=80, flags="PA") / BIG), ALLOW_WEB),
    ("IPv6 TCP to 80, small pieces", lambda: pieces(TCP(sport=40000, dport=80, flags="PA") / BIG, 6, 600),
     ALLOW_WEB),
]


@pytest.mark.parametrize("desc,build,rule", DATAGRAMS, ids=[c[0] for c in DATAGRAMS])
def test_judge_drops_the_later_fragments_of_an_allowed_datagram(fw, desc, build, rule):
    """Today's behaviour, the default: the later fragments carry no port, so the allow rule never
    matches them and the default deny drops them (a policy event each, rule id 0)."""
    first, *later = build()
    assert later and all(_is_later(f) for f in later) and not _is_later(first), desc
    verdicts, rules, events = run_datagram(fw, [first, *later])
    assert (verdicts[0].action, verdicts[0].reason, verdicts[0].data) == (XDP_PASS, R.PASS_ALLOWED, first)
    assert [(v.action, v.reason) for v in verdicts[1:]] == [(XDP_DROP, R.DROP_DEFAULT)] * len(later)
    assert rules == Counter({rule: 1})
    assert sum(events.values()) == len(later)  # each default deny is a policy event


@pytest.mark.parametrize("desc,build,rule", DATAGRAMS, ids=[c[0] for c in DATAGRAMS])
def test_first_passes_the_later_fragments_before_the_acl(fw, desc, build, rule):
    fw.configure(config("first"), if_mac=IF_MAC)
    first, *later = build()
    verdicts, rules, events = run_datagram(fw, [first, *later])
    assert (verdicts[0].action, verdicts[0].reason, verdicts[0].data) == (XDP_PASS, R.PASS_ALLOWED, first)
    assert [(v.action, v.reason, v.data) for v in verdicts[1:]] == \
        [(XDP_PASS, R.PASS_LATER_FRAGMENT, f) for f in later], "passed unchanged, under their own reason"
    assert rules == Counter({rule: 1}), "the ACL judged the first fragment only"
    assert not events, "a later fragment is no policy decision"


@pytest.mark.parametrize("family", [4, 6])
def test_first_judges_a_denied_datagram_by_its_first_fragment(fw, family):
    """To a port the policy does not allow: the first fragment is dropped, so the stack holds the
    later ones (passed) until its reassembly timeout and then discards them: nothing arrives."""
    fw.configure(config("first"), if_mac=IF_MAC)
    first, *later = pieces(UDP(sport=40000, dport=54) / BIG, family)
    assert judge(fw, first).reason == R.DROP_DEFAULT
    assert [judge(fw, f).reason for f in later] == [R.PASS_LATER_FRAGMENT] * len(later)


def test_first_leaves_a_deny_rule_without_ports_to_the_first_fragment(fw):
    """A deny by address matches every fragment under "judge"; under "first" it drops the first
    fragment, which is enough: the stack reassembles nothing without it."""
    fw.acl.replace([acl_rule(9, 1, "deny", src=f"{CLIENT4}/32"), *POLICY])
    first, *later = pieces(UDP(sport=40000, dport=53) / BIG)
    assert [judge(fw, f).reason for f in (first, *later)] == [R.DROP_DENIED] * (1 + len(later))
    fw.configure(config("first"), if_mac=IF_MAC)
    assert [judge(fw, f).reason for f in (first, *later)] == \
        [R.DROP_DENIED] + [R.PASS_LATER_FRAGMENT] * len(later)


@pytest.mark.parametrize("fragments", ["judge", "first"])
def test_whole_datagrams_and_first_fragments_meet_the_acl_under_both(fw, fragments):
    fw.configure(config(fragments), if_mac=IF_MAC)
    whole = bytes(ETH / IP(src=CLIENT4, dst=SERVER4) / UDP(sport=40000, dport=53) / b"q")
    assert judge(fw, whole).reason == R.PASS_ALLOWED
    assert judge(fw, bytes(ETH / IP(src=CLIENT4, dst=SERVER4) / UDP(sport=40000, dport=54) / b"q")).reason \
        == R.DROP_DEFAULT
    # a first fragment by its flags alone (MF, offset 0): it carries the port, the ACL judges it
    mf = bytes(ETH / IP(src=CLIENT4, dst=SERVER4, flags="MF") / UDP(sport=40000, dport=54) / bytes(16))
    assert judge(fw, mf).reason == R.DROP_DEFAULT
    # an IPv6 atomic fragment (RFC 6946: offset 0, M clear) is a whole datagram
    atomic = bytes(ETH / IPv6(src=CLIENT6, dst=SERVER6) / IPv6ExtHdrFragment(offset=0, m=0)
                   / UDP(sport=40000, dport=54) / b"q")
    assert judge(fw, atomic).reason == R.DROP_DEFAULT


@pytest.mark.parametrize("family", [4, 6])
def test_a_later_fragment_is_one_by_its_offset_not_its_flags(fw, family):
    """The last fragment (MF / M clear, offset set) is a later fragment too; so is one whose
    bytes look like a UDP header to port 53 (data, not a header)."""
    fw.configure(config("first"), if_mac=IF_MAC)
    looks_like_dns = bytes(UDP(sport=40000, dport=53, len=16, chksum=0)) + bytes(8)
    if family == 4:
        last = bytes(ETH / IP(src=CLIENT4, dst=SERVER4, proto=UDP_P, frag=160) / looks_like_dns)
    else:
        last = bytes(ETH / IPv6(src=CLIENT6, dst=SERVER6)
                     / IPv6ExtHdrFragment(nh=UDP_P, offset=160, m=0) / looks_like_dns)
    rules = fw.acl.counts_by_rule()
    assert judge(fw, last).reason == R.PASS_LATER_FRAGMENT
    assert fw.acl.counts_by_rule() == rules
    fw.configure(config("judge"), if_mac=IF_MAC)
    assert judge(fw, last).reason == R.DROP_DEFAULT


def test_first_passes_later_fragments_before_allow_established(fw):
    """allow_established finds no flow for a later fragment (no ports): under "judge" the ACL
    drops it whatever the table holds; under "first" it passes as a later fragment."""
    fw.configure(config("judge", allow_established=True), if_mac=IF_MAC)
    fw.maps.clear_conntrack()
    _first, *later = pieces(UDP(sport=53, dport=40000) / BIG)
    fw.run_tc_egress(bytes(Ether(src="02:aa:00:00:00:01", dst="02:00:00:00:00:02")
                           / IP(src=SERVER4, dst=CLIENT4) / UDP(sport=40000, dport=53) / b"q"))
    try:
        assert len(fw.maps.conntrack()) == 1
        assert [judge(fw, f).reason for f in later] == [R.DROP_DEFAULT] * len(later)
        fw.configure(config("first", allow_established=True), if_mac=IF_MAC)
        assert [judge(fw, f).reason for f in later] == [R.PASS_LATER_FRAGMENT] * len(later)
    finally:
        fw.maps.clear_conntrack()


def test_a_later_fragment_is_never_rejected_under_first(fw):
    fw.acl.replace([acl_rule(9, 1, "reject", proto=UDP_P), *POLICY])
    fw.configure(config("first"), if_mac=IF_MAC)
    first, *later = pieces(UDP(sport=40000, dport=53) / BIG)
    assert judge(fw, first).reason == R.DROP_REJECTED
    assert [(v.action, v.reason) for v in map(lambda f: judge(fw, f), later)] == \
        [(XDP_PASS, R.PASS_LATER_FRAGMENT)] * len(later)


def test_a_passed_later_fragment_is_classified(fw):
    """Passed, it is handled like any passed packet: a classifier without ports marks it."""
    fw.classifiers.replace([classifier(1, 10, 0x77, proto=UDP_P, dport=(53, 53)),
                            classifier(2, 20, 0x88, src=f"{CLIENT4}/32")])
    fw.configure(config("first"), if_mac=IF_MAC)
    first, later, *_ = pieces(UDP(sport=40000, dport=53) / BIG)
    v_first, v_later = judge(fw, first), judge(fw, later)
    assert (v_first.reason, v_later.reason) == (R.PASS_ALLOWED, R.PASS_LATER_FRAGMENT)
    require_meta()
    assert (v_first.meta_mark, v_later.meta_mark) == (0x77, 0x88)


VNI = 4242
OUTER_ETH = Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02")
OUTER = OUTER_ETH / IP(src="192.0.2.1", dst="192.0.2.2")


def test_a_tunnel_ports_later_outer_fragments_pass_under_first(fw):
    """An outer datagram to the VxLAN port, fragmented on the path: its first fragment is judged
    as plain UDP (PASS_TUNNEL_FRAGMENT when allowed), its later ones carry no port."""
    fw.maps.put_tunnel(TunnelEntry(vni=VNI))
    fw.acl.replace([acl_rule(5, 5, "allow", proto=UDP_P, dport=(4789, 4789))])
    inner = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:99") / IP(src="10.1.0.2", dst="10.2.0.1") \
        / UDP(sport=40000, dport=5000) / bytes(800)
    eth = Ether(vxlan(OUTER, VNI, inner))
    first, *later = [bytes(OUTER_ETH / f) for f in fragment(eth[IP], fragsize=400)]
    for fragments, later_reason in (("judge", R.DROP_DEFAULT), ("first", R.PASS_LATER_FRAGMENT)):
        fw.configure(config(fragments), if_mac=IF_MAC)
        assert judge(fw, first).reason == R.PASS_TUNNEL_FRAGMENT, fragments
        assert [judge(fw, f).reason for f in later] == [later_reason] * len(later), fragments


def test_an_inner_later_fragment_is_decapsulated_then_passed_under_first(fw):
    """Inside a whole tunnel packet: decapsulated, then judged as the inner packet is."""
    fw.maps.put_tunnel(TunnelEntry(vni=VNI))
    inner_frag = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:99") \
        / IP(src=CLIENT4, dst=SERVER4, proto=UDP_P, frag=185) / bytes(64)
    packet = vxlan(OUTER, VNI, inner_frag)
    want = bytes(IF_MAC) + bytes(inner_frag)[6:]  # the inner frame, its destination MAC rewritten
    assert judge(fw, packet).reason == R.DROP_DEFAULT
    fw.configure(config("first"), if_mac=IF_MAC)
    v = judge(fw, packet)
    assert (v.action, v.reason, v.data) == (XDP_PASS, R.PASS_LATER_FRAGMENT, want)


@pytest.mark.parametrize("fragments", ["judge", "first"])
def test_the_config_map_holds_the_setting(dp, fragments):
    cfg = config(fragments, allow_established=True)
    dp.configure(cfg, if_mac=IF_MAC)
    assert dp.maps.read_config() == (cfg, IF_MAC)
    assert bool(cfg.flags() & abi.define("TG_CFG_F_FRAGMENTS_FIRST")) == (fragments == "first")
