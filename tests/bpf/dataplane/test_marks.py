"""Service-chain classifiers: the mark in XDP metadata, and TC's fallback into skb->mark.

XDP (docs/dataplane.md, pipeline steps 4-5): an allowed packet is classified, first match by (priority,
classifier id); the mark goes into struct tg_meta in front of the packet with
TG_META_F_CLASSIFIED. A dropped packet is never classified. A decapped packet is classified on
its inner headers.

TC: BPF_PROG_TEST_RUN cannot hand XDP metadata to a TC program, so every TC run here is the
fallback path (generic XDP on a driver that loses metadata, or XDP detached): TC classifies the
packet itself with the same maps, sets skb->mark when a classifier matches, and never drops.
"""

from __future__ import annotations

import ctypes

import pytest
from scapy.layers.l2 import ARP, Ether

from dataplane import abi
from dataplane.acl import acl_rule, classifier
from dataplane.map_config import RuntimeConfig, TunnelEntry
from testbed.vxlan import OUTER_SRC_MAC, geneve_packet, inner_frame, vxlan_packet

from .conftest import IF_MAC
from .verdicts import XDP_DROP, XDP_PASS, Verdict, judge, require_meta

pytestmark = pytest.mark.root

TC_ACT_OK = 0  # linux/pkt_cls.h
IPPROTO_TCP = 6
IPPROTO_UDP = 17
META_LEN = ctypes.sizeof(abi.Meta)
ETH_HLEN = 14
IPV4_HLEN = 20
TCP_HLEN = 20
F_CLASSIFIED = abi.define("TG_META_F_CLASSIFIED")
F_DECAPPED = abi.define("TG_META_F_DECAPPED")
MARK_MAX = (1 << 32) - 1
VNI = 4242

A4, B4 = "10.1.2.3", "10.2.0.1"
A6, B6 = "fd00:1:2::3", "fd00:2::1"
WEB_V4 = inner_frame(A4, B4, proto="tcp", dport=443)
WEB_V6 = inner_frame(A6, B6, proto="tcp", dport=443)
DNS_V4 = inner_frame(A4, B4, proto="udp", dport=53)
DNS_V6 = inner_frame(A6, B6, proto="udp", dport=53)
WEB_MARK = 0x10
WEB = [classifier(1, 10, WEB_MARK, dst="10.2.0.0/16", proto=IPPROTO_TCP, dport=(443, 443)),
       classifier(2, 10, WEB_MARK, dst="fd00:2::/32", proto=IPPROTO_TCP, dport=(443, 443))]
WEB_PACKETS = [("IPv4", WEB_V4, 1), ("IPv6", WEB_V6, 2)]
OTHER_PACKETS = [("IPv4 udp/53", DNS_V4), ("IPv6 udp/53", DNS_V6)]


def _deltas(before: dict, after: dict) -> dict:
    return {k: after[k].packets - before.get(k, after[k]).packets for k in after
            if after[k].packets != before.get(k, after[k]).packets}


def classify(dp, packet: bytes) -> tuple[Verdict, list[int], dict]:
    """The XDP verdict, the classifiers whose counter moved, and the events that moved (by how much)."""
    cls_before, ev_before = dp.classifiers.counts_by_rule(), dp.maps.event_counts()
    v = judge(dp, packet)
    moved = sorted(_deltas(cls_before, dp.classifiers.counts_by_rule()))
    return v, moved, _deltas(ev_before, dp.maps.event_counts())


def run_tc(dp, packet: bytes, mark: int = 0):
    """TC's result, the classifiers whose counter moved, and the events that moved."""
    cls_before, ev_before = dp.classifiers.counts_by_rule(), dp.maps.event_counts()
    r = dp.run_tc(packet, mark=mark)
    moved = sorted(_deltas(cls_before, dp.classifiers.counts_by_rule()))
    return r, moved, _deltas(ev_before, dp.maps.event_counts())


def meta_magic(v: Verdict) -> int:
    require_meta()
    return int(abi.Meta.from_buffer_copy(v.meta[:META_LEN]).magic)


# --- XDP: the mark in metadata ------------------------------------------------------------------


@pytest.mark.parametrize("desc,packet,cls_id", WEB_PACKETS, ids=[c[0] for c in WEB_PACKETS])
def test_allowed_packet_carries_the_mark_in_metadata(dp, desc, packet, cls_id):
    dp.classifiers.replace(WEB)
    v, moved, events = classify(dp, packet)
    assert (v.action, v.reason) == (XDP_PASS, abi.Reason.PASS_DEFAULT), desc
    assert meta_magic(v) == abi.META_MAGIC and len(v.meta) == META_LEN
    assert (v.meta_mark, v.meta_flags, v.meta_vni) == (WEB_MARK, F_CLASSIFIED, 0)
    assert v.data == packet
    assert moved == [cls_id]
    assert events.get(abi.Event.CLASSIFIED) == 1


def test_packet_allowed_by_a_rule_is_classified_too(dp):
    dp.configure(RuntimeConfig(default_action="deny"), if_mac=IF_MAC)
    dp.acl.replace([acl_rule(1, 10, "allow", dst="10.2.0.0/16")])
    dp.classifiers.replace(WEB)
    v, moved, _ = classify(dp, WEB_V4)
    assert (v.action, v.reason) == (XDP_PASS, abi.Reason.PASS_ALLOWED)
    assert (v.meta_mark, v.meta_flags) == (WEB_MARK, F_CLASSIFIED)
    assert moved == [1]


FIRST_MATCH = [
    ("priority beats classifier id",
     [classifier(1, 20, 0x1, dst=B4 + "/32"), classifier(2, 10, 0x2, dst="10.0.0.0/8")], WEB_V4, 0x2),
    ("equal priority: the lower id wins",
     [classifier(5, 10, 0x5), classifier(3, 10, 0x3, proto=IPPROTO_TCP)], WEB_V4, 0x3),
    ("a longer prefix with a worse priority loses",
     [classifier(1, 10, 0x1, src="10.0.0.0/8"), classifier(2, 20, 0x2, src="10.1.2.0/24")], WEB_V4, 0x1),
    ("a port range that misses falls through to the next",
     [classifier(1, 10, 0x1, proto=IPPROTO_TCP, dport=(80, 80)), classifier(2, 20, 0x2, proto=IPPROTO_TCP)],
     WEB_V4, 0x2),
    ("an IPv4 classifier never marks IPv6",
     [classifier(1, 10, 0x1, src="0.0.0.0/0"), classifier(2, 20, 0x2, src="::/0")], WEB_V6, 0x2),
    ("udp is not tcp", [classifier(1, 10, 0x1, proto=IPPROTO_TCP), classifier(2, 20, 0x2, proto=IPPROTO_UDP)],
     DNS_V6, 0x2),
    ("the largest mark", [classifier(1, 10, MARK_MAX)], DNS_V4, MARK_MAX),
]


@pytest.mark.parametrize("desc,classifiers,packet,mark", FIRST_MATCH, ids=[c[0] for c in FIRST_MATCH])
def test_first_matching_classifier_gives_the_mark(dp, desc, classifiers, packet, mark):
    dp.classifiers.replace(classifiers)
    v, moved, _ = classify(dp, packet)
    assert (v.action, v.meta_mark, v.meta_flags) == (XDP_PASS, mark, F_CLASSIFIED), desc
    winner = [c.rule_id for c in classifiers if c.payload == mark]
    assert moved == winner


@pytest.mark.parametrize("classifiers", [[], WEB], ids=["no classifiers", "none matching"])
@pytest.mark.parametrize("desc,packet", OTHER_PACKETS, ids=[c[0] for c in OTHER_PACKETS])
def test_unclassified_packet_has_mark_zero_and_no_flag(dp, classifiers, desc, packet):
    dp.classifiers.replace(classifiers)
    v, moved, events = classify(dp, packet)
    assert (v.action, v.reason) == (XDP_PASS, abi.Reason.PASS_DEFAULT), desc
    assert meta_magic(v) == abi.META_MAGIC and len(v.meta) == META_LEN
    assert (v.meta_mark, v.meta_flags) == (0, 0)
    assert moved == []
    assert abi.Event.CLASSIFIED not in events


DENIALS = [
    ("a deny rule", "allow", [acl_rule(1, 10, "deny", src="10.1.0.0/16")], abi.Reason.DROP_DENIED),
    ("the default action", "deny", [], abi.Reason.DROP_DEFAULT),
]


@pytest.mark.parametrize("desc,default,rules,reason", DENIALS, ids=[c[0] for c in DENIALS])
def test_dropped_packet_is_not_classified(dp, desc, default, rules, reason):
    dp.configure(RuntimeConfig(default_action=default), if_mac=IF_MAC)
    dp.acl.replace(rules)
    dp.classifiers.replace(WEB)
    v, moved, events = classify(dp, WEB_V4)
    assert (v.action, v.reason) == (XDP_DROP, reason), desc
    assert v.meta == b""
    assert moved == []
    assert abi.Event.CLASSIFIED not in events


OUTER_V4 = ("192.0.2.1", "192.0.2.2")
OUTER_V6 = ("2001:db8::1", "2001:db8::2")
TUNNELLED = [
    ("vxlan over IPv4, inner IPv4", lambda: vxlan_packet(*OUTER_V4, VNI, WEB_V4)),
    ("vxlan over IPv6, inner IPv6", lambda: vxlan_packet(*OUTER_V6, VNI, WEB_V6)),
    ("geneve over IPv4, inner IPv6", lambda: geneve_packet(*OUTER_V4, VNI, WEB_V6)),
    ("geneve over IPv6, inner IPv4", lambda: geneve_packet(*OUTER_V6, VNI, WEB_V4)),
]
# The outer classifiers would win on priority if the outer headers were classified.
OUTER_CLASSIFIERS = [classifier(100, 1, 0x99, src="192.0.2.0/24"),
                     classifier(101, 1, 0x99, src="2001:db8::/32"),
                     classifier(102, 1, 0x99, proto=IPPROTO_UDP)]


@pytest.mark.parametrize("desc,build", TUNNELLED, ids=[c[0] for c in TUNNELLED])
def test_decapped_packet_is_classified_on_its_inner_headers(dp, desc, build):
    dp.maps.put_tunnel(TunnelEntry(vni=VNI))
    dp.classifiers.replace([*OUTER_CLASSIFIERS, *WEB])
    v, moved, events = classify(dp, build())
    assert (v.action, v.reason) == (XDP_PASS, abi.Reason.PASS_DEFAULT), desc
    assert (v.meta_mark, v.meta_flags, v.meta_vni) == (WEB_MARK, F_DECAPPED | F_CLASSIFIED, VNI)
    assert len(moved) == 1 and moved[0] in (1, 2)
    assert events.get(abi.Event.CLASSIFIED) == 1


# --- TC: the fallback path ---------------------------------------------------------------------


@pytest.mark.parametrize("desc,packet,cls_id", WEB_PACKETS, ids=[c[0] for c in WEB_PACKETS])
def test_tc_without_metadata_classifies_and_sets_the_skb_mark(dp, desc, packet, cls_id):
    dp.classifiers.replace(WEB)
    r, moved, events = run_tc(dp, packet)
    assert (r.retval, r.mark) == (TC_ACT_OK, WEB_MARK), desc
    assert moved == [cls_id]
    assert events.get(abi.Event.TC_FALLBACK) == 1
    assert abi.Event.TC_META_MARK not in events
    assert abi.Event.CLASSIFIED not in events, "CLASSIFIED counts XDP classifications only"


NOT_CLASSIFIED = [
    *OTHER_PACKETS,
    ("ARP", bytes(Ether(src=OUTER_SRC_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=A4, pdst=B4))),
    # The kernel runs TC only on frames holding the whole L3 header: cut in the TCP header.
    ("IPv4 cut inside its TCP header", WEB_V4[:ETH_HLEN + IPV4_HLEN + TCP_HLEN // 2]),
]


@pytest.mark.parametrize("mark", [0, 0x55], ids=["no input mark", "input mark"])
@pytest.mark.parametrize("desc,packet", NOT_CLASSIFIED, ids=[c[0] for c in NOT_CLASSIFIED])
def test_tc_leaves_the_mark_of_an_unclassified_packet(dp, desc, packet, mark):
    dp.classifiers.replace(WEB)
    r, moved, events = run_tc(dp, packet, mark=mark)
    assert (r.retval, r.mark) == (TC_ACT_OK, mark), desc
    assert moved == []
    assert events.get(abi.Event.TC_FALLBACK) == 1


def test_tc_classifier_mark_replaces_an_input_mark(dp):
    dp.classifiers.replace(WEB)
    r, _, _ = run_tc(dp, WEB_V4, mark=0x55)
    assert (r.retval, r.mark) == (TC_ACT_OK, WEB_MARK)


def test_tc_never_drops_what_the_acl_denies(dp):
    dp.configure(RuntimeConfig(default_action="deny"), if_mac=IF_MAC)
    dp.acl.replace([acl_rule(1, 10, "deny", src="10.1.0.0/16")])
    r, _, _ = run_tc(dp, WEB_V4)
    assert r.retval == TC_ACT_OK
