"""Reject rules through the real XDP program (BPF_PROG_TEST_RUN): the answer it sends back with
XDP_TX, checked by an independent dissector (scapy: every checksum recomputed, every length
re-derived), which packets get none, the pace, and the policy event.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror, in4_chksum
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, in6_chksum
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import checksum

from dataplane import abi
from dataplane.acl import acl_rule
from dataplane.kernel.events import EventReader
from dataplane.map_config import RuntimeConfig, TunnelEntry
from testbed.packets import vxlan

from .conftest import IF_MAC
from .verdicts import XDP_DROP, judge

pytestmark = pytest.mark.root

R, E = abi.Reason, abi.Event
XDP_TX = 3
CLIENT4, SERVER4 = "198.51.100.9", "192.0.2.10"
CLIENT6, SERVER6 = "2001:db8:9::9", "2001:db8::10"
CLIENT_MAC, OUR_MAC = "02:00:00:00:00:09", "02:aa:00:00:00:01"
ETH = Ether(src=CLIENT_MAC, dst=OUR_MAC)
RULES = [acl_rule(9, 10, "reject", dst=SERVER4 + "/32"), acl_rule(10, 10, "reject", dst=SERVER6 + "/128")]


@pytest.fixture
def rj(dp):
    dp.acl.replace(RULES)
    dp.configure(RuntimeConfig(reject_rate=1000, reject_burst=1000), if_mac=IF_MAC)
    dp.maps.reset_reject_budget()
    yield dp
    dp.acl.replace([])


def answer(dp, packet: Packet) -> Ether:
    """Runs the packet; it must be rejected and answered. Returns the answer, dissected."""
    before = dp.maps.event_counts()[E.REJECT_SENT].packets
    v = judge(dp, bytes(packet))
    assert (v.action, v.reason) == (XDP_TX, R.DROP_REJECTED)
    assert dp.maps.event_counts()[E.REJECT_SENT].packets == before + 1
    return Ether(v.data)


def assert_checksums(a: Ether) -> None:
    """Every length and checksum of the answer, re-derived from its bytes by scapy's own
    functions (RFC 1071 over the header; over the pseudo-header and the segment or message)."""
    raw = bytes(a)
    l3 = 14 + 4 * len([layer for layer in a.layers() if layer is Dot1Q])
    if a.haslayer(IPv6):
        ip6 = a[IPv6]
        assert 40 + ip6.plen == len(raw) - l3, "IPv6 payload length"
        assert in6_chksum(ip6.nh, ip6, raw[l3 + 40:]) == 0, "ICMPv6/TCP checksum"
        return
    ip = a[IP]
    assert ip.len == len(raw) - l3, "IPv4 total length"
    assert checksum(raw[l3:l3 + ip.ihl * 4]) == 0, "IPv4 header checksum"
    l4 = raw[l3 + ip.ihl * 4:]
    if ip.proto == 6:
        assert in4_chksum(6, ip, l4) == 0, "TCP checksum"
    else:
        assert checksum(l4) == 0, "ICMP checksum"


SYN4 = ETH / IP(src=CLIENT4, dst=SERVER4, ttl=50) / TCP(sport=40000, dport=443, seq=1000, flags="S")


def test_a_syn_gets_a_rst_ack_of_its_sequence(rj):
    a = answer(rj, SYN4)
    assert (a.src, a.dst) == (OUR_MAC, CLIENT_MAC)
    ip, tcp = a[IP], a[TCP]
    assert (ip.src, ip.dst, ip.proto, ip.ihl, ip.len, ip.ttl) == (SERVER4, CLIENT4, 6, 5, 40, 64)
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack, str(tcp.flags)) == (443, 40000, 0, 1001, "RA")
    assert tcp.dataofs == 5
    assert len(a) == 14 + 40 and not tcp.payload
    assert_checksums(a)


def test_a_segment_with_an_ack_gets_a_rst_at_that_sequence(rj):
    seg = (ETH / IPv6(src=CLIENT6, dst=SERVER6) / TCP(sport=40000, dport=22, seq=7, ack=123456, flags="PA",
                                                      options=[("NOP", None)] * 8) / Raw(b"x" * 30))
    a = answer(rj, seg)
    ip6, tcp = a[IPv6], a[TCP]
    assert (ip6.src, ip6.dst, ip6.nh, ip6.plen, ip6.hlim) == (SERVER6, CLIENT6, 6, 20, 64)
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack, str(tcp.flags)) == (22, 40000, 123456, 0, "R")
    assert_checksums(a)


def test_the_ack_covers_the_data_syn_and_fin(rj):
    seg = ETH / IP(src=CLIENT4, dst=SERVER4, options=b"\x01" * 8) / TCP(sport=1, dport=2, seq=0xFFFFFFF0,
                                                                        flags="SF") / Raw(b"y" * 20)
    a = answer(rj, seg)
    assert a[TCP].ack == (0xFFFFFFF0 + 20 + 2) & 0xFFFFFFFF  # wraps
    assert a[IP].ihl == 5, "the answer has no IP options"
    assert_checksums(a)


def test_udp_gets_icmp_administratively_prohibited_quoting_the_datagram(rj):
    dgram = IP(src=CLIENT4, dst=SERVER4) / UDP(sport=5353, dport=53) / Raw(b"q" * 200)
    a = answer(rj, ETH / dgram)
    ip, icmp = a[IP], a[ICMP]
    assert (ip.src, ip.dst, ip.proto) == (SERVER4, CLIENT4, 1)
    assert (icmp.type, icmp.code) == (3, 13)
    quoted = bytes(icmp.payload)
    assert quoted == bytes(dgram)[:124], "the start of the datagram, 124 bytes of it"
    assert ip.len == 20 + 8 + 124 and len(a) == 14 + ip.len
    assert_checksums(a)
    assert isinstance(a[ICMP].payload, IPerror) and a[UDPerror].dport == 53


def test_a_short_datagram_is_quoted_whole(rj):
    dgram = IP(src=CLIENT4, dst=SERVER4) / UDP(sport=5353, dport=53) / Raw(b"abcd")  # 32 bytes
    a = answer(rj, Ether(bytes(ETH / dgram) + bytes(14)))  # Ethernet padding after it is not quoted
    assert bytes(a[ICMP].payload) == bytes(dgram)
    assert_checksums(a)


def test_ipv6_gets_icmpv6_administratively_prohibited(rj):
    dgram = IPv6(src=CLIENT6, dst=SERVER6) / UDP(sport=5353, dport=53) / Raw(b"q" * 10)
    a = answer(rj, ETH / dgram)
    ip6, icmp = a[IPv6], a[ICMPv6DestUnreach]
    assert (ip6.src, ip6.dst, ip6.nh) == (SERVER6, CLIENT6, 58)
    assert (icmp.type, icmp.code) == (1, 1)
    assert bytes(icmp.payload) == bytes(dgram)[:len(bytes(dgram)) // 4 * 4]
    assert_checksums(a)


def test_a_ping_is_answered_too(rj):
    a = answer(rj, ETH / IP(src=CLIENT4, dst=SERVER4) / ICMP(type=8, id=5, seq=1) / Raw(b"p" * 8))
    assert (a[ICMP].type, a[ICMP].code) == (3, 13)
    assert_checksums(a)
    a6 = answer(rj, ETH / IPv6(src=CLIENT6, dst=SERVER6) / ICMPv6EchoRequest(id=5))
    assert (a6[ICMPv6DestUnreach].type, a6[ICMPv6DestUnreach].code) == (1, 1)
    assert_checksums(a6)


def test_vlan_tags_are_kept(rj):
    tagged = Ether(src=CLIENT_MAC, dst=OUR_MAC) / Dot1Q(vlan=7) / Dot1Q(vlan=8) / SYN4[IP]
    a = answer(rj, tagged)
    assert [a[Dot1Q].vlan, a[Dot1Q].payload.vlan] == [7, 8]
    assert a[TCP].flags == "RA"
    assert_checksums(a)
    a = answer(rj, Ether(src=CLIENT_MAC, dst=OUR_MAC) / Dot1Q(vlan=7)
               / IP(src=CLIENT4, dst=SERVER4) / UDP(dport=53) / Raw(b"z" * 40))
    assert a[Dot1Q].vlan == 7 and a[ICMP].type == 3
    assert_checksums(a)


NO_ANSWER = [
    ("an RST", ETH / IP(src=CLIENT4, dst=SERVER4) / TCP(dport=80, flags="R")),
    ("an ICMP error", ETH / IP(src=CLIENT4, dst=SERVER4) / ICMP(type=3, code=1) / bytes(28)),
    ("an ICMPv6 error", ETH / IPv6(src=CLIENT6, dst=SERVER6) / ICMPv6DestUnreach() / bytes(48)),
    ("a broadcast frame", Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / SYN4[IP]),
    ("a multicast source", ETH / IP(src="224.0.0.5", dst=SERVER4) / UDP(dport=53)),
    ("an unspecified source", ETH / IP(src="0.0.0.0", dst=SERVER4) / UDP(dport=53)),
    ("a non-first fragment", ETH / IP(src=CLIENT4, dst=SERVER4, proto=17, frag=10) / bytes(24)),
    ("a non-first IPv6 fragment", ETH / IPv6(src=CLIENT6, dst=SERVER6) / IPv6ExtHdrFragment(nh=17, offset=5)
     / bytes(24)),
]


@pytest.mark.parametrize("desc,packet", NO_ANSWER, ids=[c[0] for c in NO_ANSWER])
def test_no_answer_is_due_to(rj, desc, packet):
    before = rj.maps.event_counts()[E.REJECT_UNANSWERED].packets
    v = judge(rj, bytes(packet))
    assert (v.action, v.reason) == (XDP_DROP, R.DROP_REJECTED), desc
    assert rj.maps.event_counts()[E.REJECT_UNANSWERED].packets == before + 1


def test_answers_are_paced_per_cpu(rj):
    rj.configure(RuntimeConfig(reject_rate=1, reject_burst=3), if_mac=IF_MAC)
    rj.maps.reset_reject_budget()
    actions = [judge(rj, bytes(SYN4)).action for _ in range(5)]
    assert actions == [XDP_TX] * 3 + [XDP_DROP] * 2
    assert rj.maps.event_counts()[E.REJECT_RATE_LIMITED].packets >= 2


def test_reject_rate_zero_answers_none(rj):
    rj.configure(RuntimeConfig(reject_rate=0), if_mac=IF_MAC)
    v = judge(rj, bytes(SYN4))
    assert (v.action, v.reason) == (XDP_DROP, R.DROP_REJECTED)


def test_a_decapped_packet_is_dropped_unanswered(rj):
    rj.maps.put_tunnel(TunnelEntry(vni=42))
    pkt = vxlan(Ether(src=CLIENT_MAC, dst=OUR_MAC) / IP(src="203.0.113.1", dst="203.0.113.2"), 42, SYN4)
    before = rj.maps.event_counts()[E.REJECT_UNANSWERED].packets
    v = judge(rj, pkt)
    assert (v.action, v.reason) == (XDP_DROP, R.DROP_REJECTED)
    assert rj.maps.event_counts()[E.REJECT_UNANSWERED].packets == before + 1


def test_a_reject_is_a_policy_event(rj):
    reader = EventReader(rj)
    reader.poll(0)
    rj.maps.reset_event_budget()
    judge(rj, bytes(SYN4))
    [event] = reader.poll(0)
    assert (event.rule_id, event.reason, event.action) == (9, R.DROP_REJECTED, abi.Action.REJECT)
    assert (str(event.src), str(event.dst), event.dport) == (CLIENT4, SERVER4, 443)
