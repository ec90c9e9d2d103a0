"""allow_established through the real programs (BPF_PROG_TEST_RUN): TC egress records a leaving
flow, XDP passes its replies before the ACL (docs/dataplane.md, "Established").

Every case runs under `default_action: deny` with no rule, so a reply that is not let through as
established is dropped as DROP_DEFAULT: what passes, passes because of the recorded flow.
"""

from __future__ import annotations

import ipaddress
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from dataplane import abi
from dataplane.kernel.build_settings import Capacities, DataplaneSettings
from dataplane.kernel.interface import Dataplane
from dataplane.kernel.maps import CtKey
from dataplane.map_config import RuntimeConfig

from .conftest import IF_MAC
from .verdicts import TC_ACT_OK, XDP_DROP, XDP_PASS, judge

pytestmark = pytest.mark.root

R, E = abi.Reason, abi.Event
LOCAL4, REMOTE4 = "192.0.2.10", "198.51.100.7"
LOCAL6, REMOTE6 = "2001:db8::10", "2001:db8:1::7"
ETH_OUT = Ether(src="02:aa:00:00:00:01", dst="02:00:00:00:00:02")
ETH_IN = Ether(src="02:00:00:00:00:02", dst="02:aa:00:00:00:01")
NS = 1_000_000_000
ESTABLISHED = RuntimeConfig(default_action="deny", allow_established=True, ct_udp_s=30, ct_tcp_closing_s=10)


def out(l3: Packet) -> bytes:
    return bytes(ETH_OUT / l3)


def back(l3: Packet) -> bytes:
    return bytes(ETH_IN / l3)


@pytest.fixture
def ct(dp):
    dp.configure(ESTABLISHED, if_mac=IF_MAC)
    dp.maps.clear_conntrack()
    yield dp
    dp.maps.clear_conntrack()


def leave(dp, packet: bytes) -> None:
    before = dp.maps.event_counts()
    r = dp.run_tc_egress(packet)
    assert (r.retval, r.data) == (TC_ACT_OK, packet), "TC egress never drops or changes a packet"
    assert not any(dp.maps.event_counts()[e].packets != before[e].packets
                   for e in (E.CLASSIFIED, E.POLICY_SENT))


# (what, the packet leaving, a reply, a packet of the same peers that is no reply)
FLOWS = [
    ("TCP over IPv4", IP(src=LOCAL4, dst=REMOTE4) / TCP(sport=40000, dport=443, flags="S"),
     IP(src=REMOTE4, dst=LOCAL4) / TCP(sport=443, dport=40000, flags="SA"),
     IP(src=REMOTE4, dst=LOCAL4) / TCP(sport=443, dport=40001, flags="SA")),
    ("TCP over IPv6", IPv6(src=LOCAL6, dst=REMOTE6) / TCP(sport=40000, dport=22, flags="S"),
     IPv6(src=REMOTE6, dst=LOCAL6) / TCP(sport=22, dport=40000, flags="SA"),
     IPv6(src=REMOTE6, dst=LOCAL6) / TCP(sport=23, dport=40000, flags="SA")),
    ("UDP over IPv4", IP(src=LOCAL4, dst=REMOTE4) / UDP(sport=5353, dport=53),
     IP(src=REMOTE4, dst=LOCAL4) / UDP(sport=53, dport=5353),
     IP(src="198.51.100.8", dst=LOCAL4) / UDP(sport=53, dport=5353)),
    ("UDP over IPv6", IPv6(src=LOCAL6, dst=REMOTE6) / UDP(sport=5353, dport=53),
     IPv6(src=REMOTE6, dst=LOCAL6) / UDP(sport=53, dport=5353),
     IPv6(src=REMOTE6, dst=LOCAL6) / TCP(sport=53, dport=5353)),
    ("ping", IP(src=LOCAL4, dst=REMOTE4) / ICMP(type=8, id=0x1234, seq=1),
     IP(src=REMOTE4, dst=LOCAL4) / ICMP(type=0, id=0x1234, seq=1),
     IP(src=REMOTE4, dst=LOCAL4) / ICMP(type=0, id=0x1235, seq=1)),
    ("ping over IPv6", IPv6(src=LOCAL6, dst=REMOTE6) / ICMPv6EchoRequest(id=77, seq=1),
     IPv6(src=REMOTE6, dst=LOCAL6) / ICMPv6EchoReply(id=77, seq=1),
     IPv6(src=REMOTE6, dst=LOCAL6) / ICMPv6EchoRequest(id=77, seq=1)),  # a request is no reply
]


@pytest.mark.parametrize("desc,leaving,reply,other", FLOWS, ids=[f[0] for f in FLOWS])
def test_the_reply_of_a_leaving_flow_passes_before_the_acl(ct, desc, leaving, reply, other):
    assert judge(ct, back(reply)).reason == R.DROP_DEFAULT, "nothing recorded yet"
    before = ct.maps.event_counts()[E.CT_NEW].packets
    leave(ct, out(leaving))
    assert ct.maps.event_counts()[E.CT_NEW].packets == before + 1
    v = judge(ct, back(reply))
    assert (v.action, v.reason, v.data) == (XDP_PASS, R.PASS_ESTABLISHED, back(reply)), desc
    assert judge(ct, back(other)).reason == R.DROP_DEFAULT, f"{desc}: not a reply"
    leave(ct, out(leaving))  # the same flow again: refreshed, not recorded twice
    assert ct.maps.event_counts()[E.CT_NEW].packets == before + 1
    assert len(ct.maps.conntrack()) == 1


def test_the_key_is_the_reply_as_it_arrives(ct):
    leave(ct, out(IP(src=LOCAL4, dst=REMOTE4) / TCP(sport=40000, dport=443, flags="S")))
    [(key, entry)] = ct.maps.conntrack().items()
    assert key == CtKey(ipaddress.ip_address(REMOTE4), ipaddress.ip_address(LOCAL4), 6, 443, 40000)
    assert not entry.closing and abs(entry.seen_ns - time.monotonic_ns()) < 5 * NS
    assert ct.maps.conntrack_live() == 1


def test_off_by_default(dp):
    dp.configure(RuntimeConfig(default_action="deny"), if_mac=IF_MAC)
    dp.maps.clear_conntrack()
    leave(dp, out(FLOWS[0][1]))
    assert dp.maps.conntrack() == {}
    assert judge(dp, back(FLOWS[0][2])).reason == R.DROP_DEFAULT


def test_the_acl_still_judges_what_is_no_reply(ct):
    from dataplane.acl import acl_rule

    ct.acl.replace([acl_rule(1, 10, "allow", src=REMOTE4 + "/32", proto=6, dport=(22, 22))])
    assert judge(ct, back(IP(src=REMOTE4, dst=LOCAL4) / TCP(sport=999, dport=22))).reason == R.PASS_ALLOWED
    ct.acl.replace([])


def test_a_flow_idle_past_its_timeout_is_forgotten(ct):
    leaving, reply = FLOWS[2][1], FLOWS[2][2]  # UDP, 30 s
    leave(ct, out(leaving))
    [key] = ct.maps.conntrack()
    ct.maps.put_conntrack(key, time.monotonic_ns() - 31 * NS)  # last seen 31 s ago
    before = ct.maps.event_counts()[E.CT_EXPIRED].packets
    assert judge(ct, back(reply)).reason == R.DROP_DEFAULT
    assert ct.maps.event_counts()[E.CT_EXPIRED].packets == before + 1
    assert ct.maps.conntrack() == {}, "the expired entry is taken out"
    ct.maps.put_conntrack(key, time.monotonic_ns() - 29 * NS)  # within the timeout
    assert judge(ct, back(reply)).reason == R.PASS_ESTABLISHED


def test_a_leaving_packet_refreshes_and_a_reply_too(ct):
    leaving, reply = FLOWS[2][1], FLOWS[2][2]
    leave(ct, out(leaving))
    [key] = ct.maps.conntrack()
    stale = time.monotonic_ns() - 20 * NS
    ct.maps.put_conntrack(key, stale)
    judge(ct, back(reply))
    assert ct.maps.conntrack()[key].seen_ns > stale + 19 * NS
    ct.maps.put_conntrack(key, stale)
    leave(ct, out(leaving))
    assert ct.maps.conntrack()[key].seen_ns > stale + 19 * NS


@pytest.mark.parametrize("who", ["we", "they"])
@pytest.mark.parametrize("flag", ["F", "R"])
def test_tcp_closes_on_fin_or_rst_either_way(ct, who, flag):
    syn = FLOWS[0][1]
    leave(ct, out(syn))
    [key] = ct.maps.conntrack()
    assert not ct.maps.conntrack()[key].closing
    if who == "we":
        leave(ct, out(IP(src=LOCAL4, dst=REMOTE4) / TCP(sport=40000, dport=443, flags=flag + "A")))
    else:
        rst = back(IP(src=REMOTE4, dst=LOCAL4) / TCP(sport=443, dport=40000, flags=flag + "A"))
        assert judge(ct, rst).reason == R.PASS_ESTABLISHED
    assert ct.maps.conntrack()[key].closing


@pytest.mark.parametrize("closing,reason", [(False, R.PASS_ESTABLISHED), (True, R.DROP_DEFAULT)],
                         ids=["open: TCP's 3600 s", "closing: 10 s"])
def test_the_closing_timeout_applies_after_a_fin_or_rst(ct, closing, reason):
    leave(ct, out(FLOWS[0][1]))
    [key] = ct.maps.conntrack()
    ct.maps.put_conntrack(key, time.monotonic_ns() - 11 * NS, closing=closing)  # idle for 11 s
    assert judge(ct, back(FLOWS[0][2])).reason == reason


def test_a_rst_or_fin_opens_nothing(ct):
    for flags in ("R", "FA", "RA"):
        leave(ct, out(IP(src=LOCAL4, dst=REMOTE4) / TCP(sport=40000, dport=443, flags=flags)))
    assert ct.maps.conntrack() == {}


def test_non_first_fragments_are_no_replies(ct):
    leave(ct, out(FLOWS[2][1]))
    frag = IP(src=REMOTE4, dst=LOCAL4, proto=17, frag=100) / bytes(40)
    assert judge(ct, back(frag)).reason == R.DROP_DEFAULT


def test_a_full_table_replaces_its_least_recently_used_flow_and_counts_it(bpf_available):
    capacity, flows = 256, 300
    dp = Dataplane.load(settings=DataplaneSettings(capacities=Capacities(conntrack=capacity)))
    try:
        dp.configure(ESTABLISHED, if_mac=IF_MAC)
        for port in range(flows):
            dp.run_tc_egress(out(IP(src=LOCAL4, dst=REMOTE4) / UDP(sport=10000 + port, dport=53)))
        events = dp.maps.event_counts()
        assert events[E.CT_NEW].packets == flows
        assert events[E.CT_EVICTED].packets == flows - capacity
        assert dp.maps.conntrack_live() == capacity
        recorded = dp.maps.conntrack()
        assert len(recorded) <= capacity
        passed = dropped = 0
        for port in range(flows):
            reply = back(IP(src=REMOTE4, dst=LOCAL4) / UDP(sport=53, dport=10000 + port))
            key = CtKey(ipaddress.ip_address(REMOTE4), ipaddress.ip_address(LOCAL4), 17, 53, 10000 + port)
            v = dp.run_xdp(reply)
            if key in recorded:
                assert v.action == XDP_PASS
                passed += 1
            else:  # replaced: the ACL decides, and it denies
                assert v.action == XDP_DROP
                dropped += 1
        assert passed == len(recorded) and dropped >= flows - capacity
        counts = dp.maps.reason_counts()
        assert (counts[R.PASS_ESTABLISHED].packets, counts[R.DROP_DEFAULT].packets) == (passed, dropped)
    finally:
        dp.close()
