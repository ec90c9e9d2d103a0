"""VxLAN and Geneve through the real XDP program (BPF_PROG_TEST_RUN), table-driven."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Ether

from dataplane import abi
from dataplane.acl import acl_rule
from dataplane.map_config import RuntimeConfig, TunnelEntry
from testbed.packets import geneve, geneve_option, vxlan

from .conftest import IF_MAC
from .verdicts import XDP_DROP, XDP_PASS, judge

pytestmark = pytest.mark.root

VNI = 4242
INNER_V4 = (Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:99")
            / IP(src="10.1.0.2", dst="10.2.0.1") / UDP(sport=40000, dport=5000) / b"payload-v4")
INNER_V6 = (Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:99")
            / IPv6(src="fd00:1::2", dst="fd00:2::1") / TCP(sport=40000, dport=443) / b"payload-v6")
# Explicit MACs: without a dst, scapy tries to resolve one and takes seconds per packet.
OUTER_ETH = Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02")
OUTER_V4 = OUTER_ETH / IP(src="192.0.2.1", dst="192.0.2.2")
OUTER_V6 = OUTER_ETH / IPv6(src="2001:db8::1", dst="2001:db8::2")


@pytest.fixture
def tun(dp):
    dp.maps.put_tunnel(TunnelEntry(vni=VNI))
    return dp


def _expected_inner(inner: Ether) -> bytes:
    rewritten = inner.copy()
    rewritten.dst = ":".join(f"{b:02x}" for b in IF_MAC)
    return bytes(rewritten)


DECAP_CASES = [
    ("vxlan outer v4, inner v4", lambda i: vxlan(OUTER_V4, VNI, i)),
    ("vxlan outer v6, inner v4", lambda i: vxlan(OUTER_V6, VNI, i)),
    ("geneve outer v4, no options", lambda i: geneve(OUTER_V4, VNI, i)),
    ("geneve outer v6, two options",
     lambda i: geneve(OUTER_V6, VNI, i, options=[geneve_option(0x0102, 0x01, b"abcd"),
                                                 geneve_option(0xFFFF, 0x7F, b"12345678")])),
    ("geneve outer v4, option with no data", lambda i: geneve(OUTER_V4, VNI, i,
                                                              options=[geneve_option(0x0001, 0x02, b"")])),
]


@pytest.mark.parametrize("inner", [INNER_V4, INNER_V6], ids=["inner-v4", "inner-v6"])
@pytest.mark.parametrize("desc,build", DECAP_CASES, ids=[c[0] for c in DECAP_CASES])
def test_decap_strips_outer_headers_and_rewrites_inner_dmac(tun, desc, build, inner):
    v = judge(tun, build(inner))
    assert v.action == XDP_PASS, desc
    assert v.reason == abi.Reason.PASS_DEFAULT
    assert v.data == _expected_inner(inner)
    assert v.meta_vni == VNI and v.meta_flags & abi.define("TG_META_F_DECAPPED")


def test_decap_counts_per_tunnel(tun):
    pkt = vxlan(OUTER_V4, VNI, INNER_V4)
    before = tun.maps.tunnel_counts()[VNI]
    judge(tun, pkt)
    judge(tun, pkt)
    after = tun.maps.tunnel_counts()[VNI]
    assert after.packets - before.packets == 2
    assert after.bytes - before.bytes == 2 * len(pkt)


def test_each_tunnel_counts_apart_and_a_deleted_tunnels_counts_do_not_carry_over(tun):
    """Tunnels count in entries of an array (tg_tunnel.counter): each its own, kept across a change
    of the tunnel's settings, zeroed for the next tunnel when freed; a later DataplaneMaps over the
    same maps (a restarted daemon) finds them."""
    other = VNI + 1
    tun.maps.put_tunnel(TunnelEntry(vni=other))
    judge(tun, vxlan(OUTER_V4, VNI, INNER_V4))
    judge(tun, vxlan(OUTER_V4, other, INNER_V4))
    judge(tun, vxlan(OUTER_V4, other, INNER_V4))
    assert {v: c.packets for v, c in tun.maps.tunnel_counts().items()} == {VNI: 1, other: 2}
    tun.maps.put_tunnel(TunnelEntry(vni=other, geneve=False))  # settings change: counts kept
    assert tun.maps.tunnel_counts()[other].packets == 2
    assert type(tun.maps)(tun.program.table).tunnel_counts() == tun.maps.tunnel_counts()
    tun.maps.delete_tunnel(other)
    assert other not in tun.maps.tunnel_counts()
    tun.maps.put_tunnel(TunnelEntry(vni=other + 1))  # takes the freed counter, from zero
    judge(tun, vxlan(OUTER_V4, other + 1, INNER_V4))
    assert {v: c.packets for v, c in tun.maps.tunnel_counts().items()} == {VNI: 1, other + 1: 1}


def test_every_configured_vni_is_found_and_no_other(dp):
    """The tunnels map is a table of buckets the program and user space both hash into
    (tidegate_abi.h, struct tg_tunnel_bucket): VNIs from across the 24 bits, sequential runs and
    ones differing only in high bits, each decapped; their neighbours are unknown."""
    vnis = sorted({*range(1000, 1064), *(i << 16 for i in range(1, 64)), *(i << 20 | 7 for i in range(16)),
                   abi.VNI_MAX, 0})
    for vni in vnis:
        dp.maps.put_tunnel(TunnelEntry(vni=vni))
    assert [t.vni for t in dp.maps.tunnels()] == vnis
    dp.configure(RuntimeConfig(unknown_vni_action="drop"), if_mac=IF_MAC)
    for vni in vnis:
        assert judge(dp, vxlan(OUTER_V4, vni, INNER_V4)).reason == abi.Reason.PASS_DEFAULT, vni
    for vni in (1064, 999, 3 << 16 | 1, abi.VNI_MAX - 1):
        assert judge(dp, vxlan(OUTER_V4, vni, INNER_V4)).reason == abi.Reason.DROP_UNKNOWN_VNI, vni


def test_a_full_tunnel_table_of_sequential_vnis_fits(dp):
    """As many tunnels as the capacity (sequential VNIs, the usual numbering) find room."""
    capacity = dp.program.table("tunnel_counters").max_entries
    for vni in range(5000, 5000 + capacity):
        dp.maps.put_tunnel(TunnelEntry(vni=vni))
    assert len(dp.maps.tunnels()) == capacity
    assert judge(dp, vxlan(OUTER_V4, 5000 + capacity - 1, INNER_V4)).reason == abi.Reason.PASS_DEFAULT


def test_broadcast_inner_destination_is_not_rewritten(tun):
    inner = INNER_V4.copy()
    inner.dst = "ff:ff:ff:ff:ff:ff"
    v = judge(tun, vxlan(OUTER_V4, VNI, inner))
    assert v.data == bytes(inner)


def test_rewrite_can_be_switched_off(tun):
    tun.configure(RuntimeConfig(rewrite_inner_dmac=False), if_mac=IF_MAC)
    v = judge(tun, vxlan(OUTER_V4, VNI, INNER_V4))
    assert v.data == bytes(INNER_V4)


NOT_DECAPPED = [
    ("unknown VNI passes whole by default", lambda: vxlan(OUTER_V4, VNI + 1, INNER_V4),
     abi.Reason.PASS_DEFAULT),
    ("wrong UDP port is an ordinary packet", lambda: vxlan(OUTER_V4, VNI, INNER_V4, dport=4790),
     abi.Reason.PASS_DEFAULT),
    ("geneve control packet (O bit) is not decapped", lambda: geneve(OUTER_V4, VNI, INNER_V4, oam=True),
     abi.Reason.PASS_DEFAULT),
    ("geneve non-Ethernet payload is not decapped",
     lambda: geneve(OUTER_V4, VNI, INNER_V4, protocol=0x0800), abi.Reason.PASS_DEFAULT),
]


@pytest.mark.parametrize("desc,build,reason", NOT_DECAPPED, ids=[c[0] for c in NOT_DECAPPED])
def test_packets_left_whole(tun, desc, build, reason):
    pkt = build()
    v = judge(tun, pkt)
    assert (v.action, v.reason) == (XDP_PASS, reason), desc
    assert v.data == pkt


def test_vni_enabled_only_for_vxlan_is_not_decapped_as_geneve(dp):
    dp.maps.put_tunnel(TunnelEntry(vni=VNI, vxlan=True, geneve=False))
    assert judge(dp, vxlan(OUTER_V4, VNI, INNER_V4)).meta_vni == VNI
    pkt = geneve(OUTER_V4, VNI, INNER_V4)
    assert judge(dp, pkt).data == pkt


# Tunnel packets for a VNI terminated here are held to the tunnel's rules: broken, they are dropped.
DROPPED = [
    ("geneve C bit", lambda: geneve(OUTER_V4, VNI, INNER_V4, critical=True),
     abi.Reason.DROP_GENEVE_CRITICAL),
    ("geneve critical option type without the C bit",
     lambda: geneve(OUTER_V4, VNI, INNER_V4, options=[geneve_option(0x0102, 0x81, b"")]),
     abi.Reason.DROP_GENEVE_CRITICAL),
    ("geneve option longer than Opt Len",
     lambda: geneve(OUTER_V4, VNI, INNER_V4, options=[geneve_option(0x0102, 0x01, b"abcd")],
                    opt_len_words=1),
     abi.Reason.DROP_MALFORMED),
]


@pytest.mark.parametrize("desc,build,reason", DROPPED, ids=[c[0] for c in DROPPED])
def test_bad_tunnel_headers_are_dropped(tun, desc, build, reason):
    v = judge(tun, build())
    assert (v.action, v.reason) == (XDP_DROP, reason), desc


# UDP to a tunnel port that is no tunnel packet at all (docs/dataplane.md, "Tunnel ports"): the
# plain UDP it is by default, dropped with its reason under strict_tunnel_ports.
def _udp(dport: int, payload: bytes, ulen: int | None = None) -> bytes:
    return bytes(OUTER_V4 / UDP(sport=5353, dport=dport, len=ulen) / payload)


NOT_TUNNELS = [
    ("VxLAN port, I flag clear", lambda: vxlan(OUTER_V4, VNI, INNER_V4, flags=0x00),
     abi.Reason.DROP_MALFORMED),
    ("VxLAN port, DNS-like payload", lambda: _udp(4789, b"\x12\x34\x01\x00" + bytes(20)),
     abi.Reason.DROP_MALFORMED),
    ("VxLAN port, 3 bytes: no room for a VxLAN header", lambda: _udp(4789, b"abc"),
     abi.Reason.DROP_TRUNCATED),
    ("VxLAN port, empty datagram", lambda: _udp(4789, b""), abi.Reason.DROP_TRUNCATED),
    ("Geneve port, version 1", lambda: geneve(OUTER_V4, VNI, INNER_V4, version=1),
     abi.Reason.DROP_GENEVE_VERSION),
    ("Geneve port, text payload", lambda: _udp(6081, b"hello, world"), abi.Reason.DROP_GENEVE_VERSION),
    ("VxLAN port, UDP length under 8", lambda: _udp(4789, bytes(16), ulen=7), abi.Reason.DROP_MALFORMED),
    ("VxLAN port, UDP length past the datagram", lambda: _udp(4789, bytes(16), ulen=200),
     abi.Reason.DROP_TRUNCATED),
]


@pytest.mark.parametrize("desc,build,strict_reason", NOT_TUNNELS, ids=[c[0] for c in NOT_TUNNELS])
def test_udp_to_a_tunnel_port_that_is_no_tunnel_packet_is_plain_udp(tun, desc, build, strict_reason):
    pkt = build()
    before = tun.maps.event_counts()[abi.Event.TUNNEL_PORT_PLAIN].packets
    v = judge(tun, pkt)
    assert (v.action, v.reason, v.data) == (XDP_PASS, abi.Reason.PASS_DEFAULT, pkt), desc
    assert tun.maps.event_counts()[abi.Event.TUNNEL_PORT_PLAIN].packets == before + 1


@pytest.mark.parametrize("desc,build,strict_reason", NOT_TUNNELS, ids=[c[0] for c in NOT_TUNNELS])
def test_strict_tunnel_ports_drop_what_is_no_tunnel_packet(tun, desc, build, strict_reason):
    tun.configure(RuntimeConfig(strict_tunnel_ports=True), if_mac=IF_MAC)
    v = judge(tun, build())
    assert (v.action, v.reason) == (XDP_DROP, strict_reason), desc


def test_plain_udp_on_a_tunnel_port_is_judged_by_the_acl(tun):
    tun.acl.replace([acl_rule(1, 10, "deny", proto=17, dport=(4789, 4789)),
                     acl_rule(2, 10, "allow", proto=17, dport=(6081, 6081))])
    tun.configure(RuntimeConfig(default_action="deny"), if_mac=IF_MAC)
    assert judge(tun, _udp(4789, b"not vxlan")).reason == abi.Reason.DROP_DENIED
    assert judge(tun, _udp(6081, b"not geneve")).reason == abi.Reason.PASS_ALLOWED
    assert judge(tun, _udp(5000, b"elsewhere")).reason == abi.Reason.DROP_DEFAULT


def test_strictness_leaves_a_configured_vnis_packets_alone(tun):
    tun.configure(RuntimeConfig(strict_tunnel_ports=True), if_mac=IF_MAC)
    assert judge(tun, vxlan(OUTER_V4, VNI, INNER_V4)).data == _expected_inner(INNER_V4)
    assert judge(tun, vxlan(OUTER_V4, VNI + 1, INNER_V4)).reason == abi.Reason.PASS_DEFAULT  # unknown VNI


# Outer fragments: XDP sees one piece of the datagram, so nothing is decapsulated; the first
# fragment (it carries the UDP header) is judged as plain UDP and passed to the stack, which
# reassembles the datagram; the others are ordinary non-first fragments (port-less).
BIG_INNER = (Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:99") / IP(src="10.1.0.2", dst="10.2.0.1")
             / UDP(sport=40000, dport=5000) / bytes(400))


def _fragments(pkt: bytes, size: int = 200) -> list[bytes]:
    """The outer IP datagram of `pkt` in pieces of about `size` bytes."""
    eth = Ether(pkt)
    if eth.haslayer(IP):
        return [bytes(OUTER_ETH / f) for f in fragment(eth[IP], fragsize=size)]
    ip6 = eth[IPv6]
    whole = IPv6(src=ip6.src, dst=ip6.dst) / IPv6ExtHdrFragment() / ip6.payload
    return [bytes(OUTER_ETH / f) for f in fragment6(whole, size)]


@pytest.mark.parametrize("outer", [OUTER_V4, OUTER_V6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_outer_fragments_go_to_the_stack(tun, outer, strict):
    tun.configure(RuntimeConfig(strict_tunnel_ports=strict), if_mac=IF_MAC)
    first, *rest = _fragments(vxlan(outer, VNI, BIG_INNER))
    assert rest, "the packet must be fragmented"
    v = judge(tun, first)
    assert (v.action, v.reason, v.data) == (XDP_PASS, abi.Reason.PASS_TUNNEL_FRAGMENT, first)
    for piece in rest:
        v = judge(tun, piece)
        assert (v.action, v.reason, v.data) == (XDP_PASS, abi.Reason.PASS_DEFAULT, piece)


def test_a_denied_outer_fragment_is_dropped(tun):
    tun.acl.replace([acl_rule(1, 10, "deny", src="192.0.2.1/32", proto=17, dport=(4789, 4789))])
    first, *_ = _fragments(vxlan(OUTER_V4, VNI, BIG_INNER))
    assert judge(tun, first).reason == abi.Reason.DROP_DENIED


def test_an_atomic_ipv6_fragment_is_a_whole_packet(tun):
    ip6 = Ether(vxlan(OUTER_V6, VNI, INNER_V4))[IPv6]
    atomic = bytes(OUTER_ETH / IPv6(src=ip6.src, dst=ip6.dst) / IPv6ExtHdrFragment(offset=0, m=0)
                   / ip6.payload)  # RFC 6946: offset 0, M clear
    assert judge(tun, atomic).data == _expected_inner(INNER_V4)


def test_unknown_vni_dropped_when_configured(tun):
    tun.configure(RuntimeConfig(unknown_vni_action="drop"), if_mac=IF_MAC)
    v = judge(tun, vxlan(OUTER_V4, VNI + 1, INNER_V4))
    assert (v.action, v.reason) == (XDP_DROP, abi.Reason.DROP_UNKNOWN_VNI)


def test_custom_vxlan_port(tun):
    tun.configure(RuntimeConfig(vxlan_port=8472), if_mac=IF_MAC)
    assert judge(tun, vxlan(OUTER_V4, VNI, INNER_V4, dport=8472)).meta_vni == VNI
    pkt = vxlan(OUTER_V4, VNI, INNER_V4)
    assert judge(tun, pkt).data == pkt


def test_decap_disabled_leaves_tunnels_alone(tun):
    tun.configure(RuntimeConfig(decap=False), if_mac=IF_MAC)
    pkt = vxlan(OUTER_V4, VNI, INNER_V4)
    assert judge(tun, pkt).data == pkt


def test_nested_tunnel_is_decapped_once(tun):
    twice = vxlan(OUTER_V4, VNI, Ether(vxlan(OUTER_V4, VNI, INNER_V4)))
    v = judge(tun, twice)
    assert v.action == XDP_PASS
    assert Ether(v.data).haslayer(UDP) and Ether(v.data)[UDP].dport == 4789


def test_geneve_header_layout_is_rfc8926():
    # Guards the builder the other tests trust: Ver|OptLen, O|C, protocol, VNI<<8.
    raw = geneve(OUTER_V4, 0x123456, INNER_V4, options=[geneve_option(0x0102, 0x03, b"abcd")])
    hdr = raw[14 + 20 + 8:]
    ver_optlen, flags, proto, vni_rsvd = struct.unpack("!BBHI", hdr[:8])
    assert ver_optlen == 2 and flags == 0 and proto == 0x6558 and vni_rsvd == 0x123456 << 8
    assert hdr[8:12] == bytes([0x01, 0x02, 0x03, 0x01])
