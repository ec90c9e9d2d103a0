"""VLAN tags and non-IP tunnel payloads through the real programs (BPF_PROG_TEST_RUN), table-driven.

What the fuzzer found:
- an 802.1Q-tagged packet skipped the ACL (PASS_NOT_IP): on a trunk whose VLAN subinterfaces
  receive the IP packet inside, every deny rule was bypassed by tagging. Up to 2 tags (802.1Q,
  802.1ad) are now looked through, outside and inside a tunnel; a third fails closed.
- a tunnel carrying ARP was decapsulated and the bare ARP frame delivered to the underlay
  interface, whose neighbour table an overlay sender could then poison. Only IP payloads are
  decapsulated now; anything else passes still encapsulated (PASS_TUNNEL_NOT_IP), after the ACL
  judged the outer packet, which is what reaches the stack.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from dataplane import abi
from dataplane.acl import acl_rule, classifier
from dataplane.map_config import TunnelEntry
from testbed.packets import geneve, vxlan

from .conftest import IF_MAC
from .verdicts import XDP_DROP, XDP_PASS, Verdict, judge

pytestmark = pytest.mark.root

R = abi.Reason
VNI = 4242
IPPROTO_TCP = 6
IPPROTO_UDP = 17
TELNET, HTTPS = 23, 443
ETH_P_LLDP = 0x88CC
MARK = 0x10
DECAPPED = abi.define("TG_META_F_DECAPPED")

# Explicit MACs: without a dst, scapy tries to resolve one and takes seconds per packet.
ETH = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:99")
OUTER_ETH = Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02")
V4 = IP(src="10.1.0.2", dst="10.2.0.1")
V6 = IPv6(src="fd00:1::2", dst="fd00:2::1")
ARP_WHO_HAS = ARP(op=1, hwsrc="02:00:00:00:00:02", psrc="10.1.0.2", pdst="10.2.0.1")
LLDP = Raw(bytes(46))

ACL = [acl_rule(1, 10, "deny", proto=IPPROTO_TCP, dport=(TELNET, TELNET))]
CLASSIFIERS = [classifier(1, 10, MARK, proto=IPPROTO_TCP, dport=(HTTPS, HTTPS))]


def tags(*tpids: str, eth: Packet = ETH) -> Packet:
    """Ethernet followed by VLAN tags, outermost first: "q" = 802.1Q, "ad" = 802.1ad."""
    pkt: Packet = eth.copy()
    for i, tpid in enumerate(tpids):
        pkt = pkt / (Dot1Q(vlan=10 + i) if tpid == "q" else Dot1AD(vlan=10 + i))
    return pkt


def tcp(dport: int, l2: Packet | None = None, ip: Packet = V4) -> Packet:
    return (ETH if l2 is None else l2) / ip / TCP(sport=40000, dport=dport) / b"data"


def over_v4(inner: Packet | bytes, *outer_tags: str, kind: str = "vxlan", vni: int = VNI) -> bytes:
    """A tunnel packet around `inner`; the outer frame carries `outer_tags`."""
    outer = tags(*outer_tags, eth=OUTER_ETH) / IP(src="192.0.2.1", dst="192.0.2.2")
    return vxlan(outer, vni, inner) if kind == "vxlan" else geneve(outer, vni, inner)


def _rewritten(inner: Packet) -> bytes:
    """The inner frame as delivered: its unicast destination MAC rewritten to the interface's."""
    return IF_MAC + bytes(inner)[6:]


@pytest.fixture
def vdp(dp):
    dp.acl.replace(ACL)
    dp.classifiers.replace(CLASSIFIERS)
    dp.maps.put_tunnel(TunnelEntry(vni=VNI))
    return dp


# --- 1. VLAN-tagged frames are judged by the ACL --------------------------------------------------

# (description, frame, reason): every passed frame leaves unchanged, tags and all.
TAGGED = [
    ("untagged TCP/23 (the reference)", tcp(TELNET), R.DROP_DENIED),
    ("802.1Q TCP/23", tcp(TELNET, tags("q")), R.DROP_DENIED),
    ("802.1ad TCP/23", tcp(TELNET, tags("ad")), R.DROP_DENIED),
    ("QinQ (802.1ad, 802.1Q) TCP/23", tcp(TELNET, tags("ad", "q")), R.DROP_DENIED),
    ("double 802.1Q, IPv6 TCP/23", tcp(TELNET, tags("q", "q"), V6), R.DROP_DENIED),
    ("three tags: one more than the stack's subinterfaces would be judged for",
     tcp(TELNET, tags("ad", "q", "q")), R.DROP_MALFORMED),
    ("three tags, even when the packet inside would be allowed",
     tcp(HTTPS, tags("q", "q", "q")), R.DROP_MALFORMED),
    ("802.1Q TCP/443 is allowed", tcp(HTTPS, tags("q")), R.PASS_DEFAULT),
    ("QinQ IPv6 TCP/443 is allowed", tcp(HTTPS, tags("ad", "q"), V6), R.PASS_DEFAULT),
    ("802.1Q ARP is not IP", tags("q") / ARP_WHO_HAS, R.PASS_NOT_IP),
    ("frame ends inside the tag", bytes(tags("q"))[:16], R.DROP_TRUNCATED),
    ("frame ends inside the second tag", bytes(tags("ad", "q"))[:20], R.DROP_TRUNCATED),
    ("802.1Q, IP header cut", bytes(tcp(TELNET, tags("q")))[:18 + 10], R.DROP_TRUNCATED),
]


def _assert_verdict(v: Verdict, reason: abi.Reason, desc: str) -> None:
    want = XDP_DROP if abi.is_drop(reason) else XDP_PASS
    assert (v.action, v.reason) == (want, reason), desc


@pytest.mark.parametrize("desc,frame,reason", TAGGED, ids=[c[0] for c in TAGGED])
def test_tagged_frames_are_judged_by_what_they_carry(vdp, desc, frame, reason):
    pkt = bytes(frame)
    v = judge(vdp, pkt)
    _assert_verdict(v, reason, desc)
    if v.action == XDP_PASS:
        assert v.data == pkt, "tags on a passed frame are left as they are"


def test_tagged_allowed_packet_is_classified_in_xdp(vdp):
    v = judge(vdp, bytes(tcp(HTTPS, tags("ad", "q"))))
    assert v.meta_mark == MARK


# --- 2. Tunnels: outer tags stripped with the outer headers, inner tags looked through ------------

# (description, packet, reason, the frame delivered: None = the packet unchanged)
INNER_QINQ_HTTPS = tcp(HTTPS, tags("ad", "q"))
TUNNELS = [
    ("802.1Q VxLAN, inner TCP/23: decapped and denied", over_v4(tcp(TELNET), "q"), R.DROP_DENIED, None),
    ("802.1Q VxLAN, inner TCP/443: decapped and allowed", over_v4(tcp(HTTPS), "q"), R.PASS_DEFAULT,
     _rewritten(tcp(HTTPS))),
    ("QinQ Geneve, inner TCP/443: decapped", over_v4(tcp(HTTPS), "ad", "q", kind="geneve"),
     R.PASS_DEFAULT, _rewritten(tcp(HTTPS))),
    ("three outer tags around a tunnel", over_v4(tcp(HTTPS), "q", "q", "q"), R.DROP_MALFORMED, None),
    ("VxLAN, inner 802.1Q TCP/23: denied", over_v4(tcp(TELNET, tags("q"))), R.DROP_DENIED, None),
    ("VxLAN, inner QinQ IPv6 TCP/23: denied", over_v4(tcp(TELNET, tags("ad", "q"), V6)),
     R.DROP_DENIED, None),
    ("VxLAN, inner QinQ TCP/443: decapped, inner tags kept", over_v4(INNER_QINQ_HTTPS), R.PASS_DEFAULT,
     _rewritten(INNER_QINQ_HTTPS)),
    ("VxLAN, three inner tags", over_v4(tcp(HTTPS, tags("q", "ad", "q"))), R.DROP_MALFORMED, None),
    ("VxLAN, inner tag cut by the end of the UDP payload", over_v4(bytes(tags("q"))[:16]),
     R.DROP_TRUNCATED, None),
    ("VxLAN, inner ARP: passed encapsulated", over_v4(ETH / ARP_WHO_HAS), R.PASS_TUNNEL_NOT_IP, None),
    ("802.1Q VxLAN, inner 802.1Q ARP: passed encapsulated", over_v4(tags("q") / ARP_WHO_HAS, "q"),
     R.PASS_TUNNEL_NOT_IP, None),
    ("Geneve, inner LLDP: passed encapsulated", over_v4(Ether(dst="01:80:c2:00:00:0e", src=ETH.src,
                                                              type=ETH_P_LLDP) / LLDP, kind="geneve"),
     R.PASS_TUNNEL_NOT_IP, None),
]


@pytest.mark.parametrize("desc,pkt,reason,delivered", TUNNELS, ids=[c[0] for c in TUNNELS])
def test_tunnels_with_vlan_tags_and_non_ip_payloads(vdp, desc, pkt, reason, delivered):
    v = judge(vdp, pkt)
    _assert_verdict(v, reason, desc)
    if v.action == XDP_DROP:
        return
    decapped = delivered is not None
    assert v.data == (delivered if decapped else pkt), desc
    assert bool(v.meta_flags & DECAPPED) == decapped, desc
    assert v.meta_vni == VNI, "the VNI read from the tunnel header goes to TC either way"


def test_inner_non_ip_counts_as_not_decapped(vdp):
    before = vdp.maps.event_counts()
    judge(vdp, over_v4(ETH / ARP_WHO_HAS))
    after = vdp.maps.event_counts()
    assert after[abi.Event.TUNNEL_NOT_DECAPPED].packets == before[abi.Event.TUNNEL_NOT_DECAPPED].packets + 1
    assert after[abi.Event.DECAP_VXLAN].packets == before[abi.Event.DECAP_VXLAN].packets


def test_inner_non_ip_is_judged_as_the_outer_packet(vdp):
    # Not decapped, so what reaches the stack is the outer UDP packet: the ACL judges it.
    vdp.acl.replace([*ACL, acl_rule(2, 10, "deny", src="192.0.2.1/32", proto=IPPROTO_UDP)])
    v = judge(vdp, over_v4(ETH / ARP_WHO_HAS))
    assert (v.action, v.reason) == (XDP_DROP, R.DROP_DENIED)


def test_inner_non_ip_with_unknown_vni_is_an_ordinary_packet(vdp):
    # Not a tunnel we terminate: the unknown-VNI rules apply, whatever it carries.
    pkt = over_v4(ETH / ARP_WHO_HAS, vni=VNI + 1)
    v = judge(vdp, pkt)
    assert (v.action, v.reason, v.data) == (XDP_PASS, R.PASS_DEFAULT, pkt)


# --- 3. TC's fallback classification agrees --------------------------------------------------------

TC_CASES = [
    ("untagged", tcp(HTTPS), MARK),
    # With VLAN offload the tag is in skb->vlan_tci and the data starts like an untagged frame's:
    # the case above. Without it, the tags are in the data:
    ("802.1Q", tcp(HTTPS, tags("q")), MARK),
    ("QinQ, IPv6", tcp(HTTPS, tags("ad", "q"), V6), MARK),
    ("three tags: not classified (XDP drops it)", tcp(HTTPS, tags("q", "q", "q")), 0),
    ("802.1Q TCP/23: no classifier matches", tcp(TELNET, tags("q")), 0),
]


@pytest.mark.parametrize("desc,frame,mark", TC_CASES, ids=[c[0] for c in TC_CASES])
def test_tc_fallback_classifies_tagged_frames(vdp, desc, frame, mark):
    assert vdp.run_tc(bytes(frame)).mark == mark, desc

