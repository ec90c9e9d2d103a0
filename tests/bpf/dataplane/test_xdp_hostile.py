"""Hostile packets: the XDP and TC programs fuzzed through BPF_PROG_TEST_RUN.

Inputs (hostile_packets.py): valid VxLAN, Geneve (with options) and plain frames over outer IPv4
and IPv6, inner IPv4/IPv6 with TCP/UDP/SCTP/ICMP/other or inner ARP/LLDP/other ethertypes,
tunnels in tunnels, outer and inner frames with 0-3 VLAN tags (802.1Q, 802.1ad); then 1-3 mutations
each (bit flips, bytes overwritten at header boundaries, a length field lying: IPv4 IHL and total
length, IPv6 payload length, extension header lengths, UDP length, Geneve Opt Len and option
lengths, TCP doff; truncation, appended and spliced bytes); and pure random bytes. Known,
VxLAN-only, Geneve-only and unknown VNIs, and the runtime config, are drawn too.

Properties checked for every input against the programs' own maps and counters:
  - the kernel runs it (frames under 14 bytes may be refused, moving nothing) and the verdict is
    XDP_PASS or XDP_DROP as its reason implies, never XDP_ABORTED or anything else;
  - exactly one reason counter moves, by one, and it is the reason docs/dataplane.md predicts
    (hostile_model.py: truncated, malformed, unknown VNI, Geneve version/critical, denied...);
  - the events, the per-tunnel, per-rule and per-classifier counters and the policy-event
    accounting move exactly as predicted;
  - a passed frame is the input byte for byte, or, when decapsulated, exactly the input's inner
    frame (outer Ethernet, IP, UDP and tunnel headers stripped by an independent reference) with
    the documented destination MAC rewrite, and it is well formed (Ethernet complete, at most
    two VLAN tags, an inner IP header that parses and announces no more bytes than were
    delivered: a non-IP payload is never decapsulated);
  - the metadata in front of a passed frame carries the predicted mark, VNI and flags;
  - TC, with any input mark, never drops, never changes the packet, and changes the mark only to
    the mark of the classifier that matches the packet.

Budget: TIDEGATE_FUZZ_EXAMPLES (default 500) examples per hypothesis test, and 4x that many
seeded random packets in the coverage test (TIDEGATE_FUZZ_SEED picks the seed, default 0).
`TIDEGATE_FUZZ_EXAMPLES=20000 pytest tests/bpf/dataplane/test_xdp_hostile.py` runs for a long time.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import struct
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane import abi
from dataplane.acl import acl_rule, classifier
from dataplane.kernel.features import xdp_meta_supported
from dataplane.kernel.maps import CtKey
from dataplane.map_config import EVENT_BURST_MAX, RuntimeConfig, TunnelEntry

from .conftest import IF_MAC
from .hostile_model import (
    ETH_HLEN,
    ETH_P_IP,
    ETH_P_IPV6,
    FLOW_EVENTS,
    IPV4_HLEN,
    IPV6_HLEN,
    META_LEN,
    POLICY_EVENTS,
    Expected,
    Setup,
    check_well_formed,
    ct_key,
    meta_flags,
    tc_egress_expected,
    tc_expected_mark,
    xdp_expected,
)
from .hostile_packets import HypothesisSource, RandomSource, Seed, Source, hostile_packet, mutate, valid_frame
from .verdicts import XDP_DROP, XDP_PASS

EXAMPLES = int(os.environ.get("TIDEGATE_FUZZ_EXAMPLES", "500"))
# A long run outlasts the suite's per-test timeout: allow a generous 100 ms per example.
pytestmark = [pytest.mark.root, pytest.mark.timeout(max(300, EXAMPLES // 10 * 4))]
SEED = int(os.environ.get("TIDEGATE_FUZZ_SEED", "0"))
TC_ACT_OK = 0
XDP_ABORTED = 0
XDP_TX = 3
TCP, UDP, GRE = 6, 17, 47
TUNNELS = ((100, True, True), (200, True, False), (300, False, True))
ICMP, ICMPV6 = 1, 58
ACL = (
    acl_rule(21, 5, "allow", proto=ICMP, icmp_type=8, icmp_code=0, log=True),  # ping, also to 10.66/16
    acl_rule(22, 25, "deny", proto=ICMPV6, icmp_type=128),
    acl_rule(23, 35, "deny", proto=TCP, syn=True),  # new TCP connections not allowed before
    acl_rule(1, 10, "deny", dst="10.66.0.0/16"),
    acl_rule(2, 10, "deny", dst="fd66::/16"),
    acl_rule(3, 20, "allow", proto=UDP, dport=(7, 7), log=True),
    acl_rule(4, 30, "deny", proto=TCP, dport=(23, 23)),
    acl_rule(5, 40, "allow", src="10.1.0.0/16"),
    acl_rule(6, 5, "reject", proto=TCP, dport=(7, 7)),
    acl_rule(7, 50, "reject", dst="192.0.2.2/32"),
    acl_rule(8, 50, "reject", dst="2001:db8::2/128"),
)
CLASSIFIERS = (classifier(1, 10, 0x77, proto=TCP, dport=(443, 443)),
               classifier(2, 20, 0x88, dst="fd00:2::/32"),
               classifier(3, 30, 0x99, proto=ICMPV6, icmp_code=0),
               classifier(4, 40, 0xaa, proto=TCP, syn=True))
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                HealthCheck.data_too_large])


@pytest.fixture
def fuzz_dp(dp):
    for vni, vxlan, geneve in TUNNELS:
        dp.maps.put_tunnel(TunnelEntry(vni=vni, vxlan=vxlan, geneve=geneve))
    dp.acl.replace(list(ACL))
    dp.classifiers.replace(list(CLASSIFIERS))
    return Harness(dp)


class Harness:
    """The data plane, its current config, and counter snapshots around each run."""

    def __init__(self, dp: Any) -> None:
        self.dp = dp
        self.setup: Setup | None = None

    def configure(self, src: Source) -> Setup:
        # Now and then the ports move: swapped, shared (VxLAN is tried first), or elsewhere.
        ports = src.choice(((6081, 4789), (4789, 4789), (8472, 6081))) if src.chance(0.1) else (4789, 6081)
        return self.apply(Setup(default_action=src.choice(("allow", "deny")),
                                unknown_vni_action=src.choice(("pass", "drop")),
                                rewrite_inner_dmac=not src.chance(0.2), decap=not src.chance(0.1),
                                strict_tunnel_ports=src.chance(0.3), xdp_meta=xdp_meta_supported(),
                                allow_established=src.chance(0.3),
                                fragments="first" if src.chance(0.4) else "judge",
                                vxlan_port=ports[0], geneve_port=ports[1],
                                if_mac=IF_MAC, tunnels=TUNNELS, acl=ACL, classifiers=CLASSIFIERS))

    def apply(self, setup: Setup) -> Setup:
        if setup != self.setup:
            self.dp.configure(RuntimeConfig(default_action=setup.default_action,
                                            unknown_vni_action=setup.unknown_vni_action,
                                            rewrite_inner_dmac=setup.rewrite_inner_dmac,
                                            decap=setup.decap, strict_tunnel_ports=setup.strict_tunnel_ports,
                                            allow_established=setup.allow_established,
                                            fragments=setup.fragments,  # type: ignore[arg-type]
                                            reject_rate=setup.reject_rate, reject_burst=EVENT_BURST_MAX,
                                            vxlan_port=setup.vxlan_port,
                                            geneve_port=setup.geneve_port), if_mac=IF_MAC)
            self.setup = setup
        return setup

    def record_reply_of(self, setup: Setup, pkt: bytes) -> Setup:
        """Records the flow `pkt` (what the ACL would judge of it) is a reply of, if it can be one."""
        judged = xdp_expected(pkt, setup).judged
        key = ct_key(judged, leaving=False) if judged is not None else None
        if key is None:
            return setup
        _family, src, dst, proto, sport, dport = key
        self.dp.maps.put_conntrack(CtKey(src, dst, proto, sport, dport), time.monotonic_ns())  # type: ignore[arg-type]
        return dataclasses.replace(setup, ct=frozenset({key}))

    def snapshot(self) -> dict[str, dict[Any, int]]:
        maps = self.dp.maps
        return {
            "reason": {k: c.packets for k, c in maps.reason_counts().items()},
            "event": {k: c.packets for k, c in maps.event_counts().items()},
            "tunnel": {k: c.packets for k, c in maps.tunnel_counts().items()},
            "tunnel_bytes": {k: c.bytes for k, c in maps.tunnel_counts().items()},
            "acl": {k: c.packets for k, c in self.dp.acl.counts_by_rule().items()},
            "cls": {k: c.packets for k, c in self.dp.classifiers.counts_by_rule().items()},
        }


def _deltas(before: dict[str, dict[Any, int]], after: dict[str, dict[Any, int]]) -> dict[str, Counter[Any]]:
    return {name: Counter({k: v - before[name].get(k, 0) for k, v in after[name].items()
                           if v != before[name].get(k, 0)}) for name in after}


@dataclass
class Outcome:
    reason: Any
    decapped: bool
    behaviour: tuple[Any, ...]  # what the program did, as far as its counters tell


def check_xdp(h: Harness, setup: Setup, pkt: bytes) -> Outcome | None:
    """Runs pkt and asserts every property; None when the kernel refused a runt frame."""
    x = xdp_expected(pkt, setup)
    before = h.snapshot()
    try:
        r = h.dp.run_xdp(pkt)
    except OSError as err:
        assert err.errno == errno.EINVAL and len(pkt) < ETH_HLEN, f"test run failed: {err}"
        assert h.snapshot() == before, "a refused run moved a counter"
        return None
    d = _deltas(before, h.snapshot())
    problems = _problems(x, r, d, setup)
    assert not problems, "\n".join(problems)
    behaviour = (x.reason, x.decapped, tuple(sorted(x.events)), x.acl_rule, x.cls_rule, x.policy_event, x.vni)
    return Outcome(x.reason, x.decapped, behaviour)


def _problems(x: Expected, r: Any, d: dict[str, Counter[Any]], setup: Setup) -> list[str]:
    out = []
    if r.action == XDP_ABORTED or r.action not in (XDP_DROP, XDP_PASS, XDP_TX):
        out.append(f"action {r.action}")
    if d["reason"] != Counter({x.reason: 1}):
        out.append(f"reasons moved {dict(d['reason'])}, expected {x.reason.name}")
    want_action = XDP_TX if x.answer else XDP_DROP if abi.is_drop(x.reason) else XDP_PASS
    if r.action != want_action:
        out.append(f"action {r.action} for {x.reason.name}")
    out += _counter_problems(x, d)
    if r.action == XDP_PASS:
        out += _output_problems(x, r, setup)
    if r.action == XDP_TX and r.data != x.answer:
        out.append(f"reject answer:\n  got  {r.data.hex()}\n  want {x.answer.hex() if x.answer else None}")
    return out


def _counter_problems(x: Expected, d: dict[str, Counter[Any]]) -> list[str]:
    out = []
    events = Counter({e: n for e, n in d["event"].items() if e not in (*POLICY_EVENTS, *FLOW_EVENTS)})
    if events != x.events:
        out.append(f"events {dict(events)}, expected {dict(x.events)}")
    flow = sum(d["event"][e] for e in FLOW_EVENTS)
    if flow != int(x.acl_judged):
        out.append(f"{flow} flow cache hits and misses counted, expected {int(x.acl_judged)}")
    policy = sum(d["event"][e] for e in POLICY_EVENTS)
    if policy != int(x.policy_event):
        out.append(f"{policy} policy events counted, expected {int(x.policy_event)}")
    want_tunnel = Counter({x.vni: 1}) if x.decapped else Counter()
    if d["tunnel"] != want_tunnel:
        out.append(f"tunnel counters {dict(d['tunnel'])}, expected {dict(want_tunnel)}")
    if x.decapped and d["tunnel_bytes"][x.vni] != x.tunnel_bytes:
        out.append(f"tunnel bytes {d['tunnel_bytes'][x.vni]}, expected {x.tunnel_bytes}")
    want_acl = Counter({x.acl_rule: 1}) if x.acl_rule is not None else Counter()
    if d["acl"] != want_acl:
        out.append(f"ACL rule counters {dict(d['acl'])}, expected {dict(want_acl)}")
    want_cls = Counter({x.cls_rule: 1}) if x.cls_rule is not None else Counter()
    if d["cls"] != want_cls:
        out.append(f"classifier counters {dict(d['cls'])}, expected {dict(want_cls)}")
    return out


def _output_problems(x: Expected, r: Any, setup: Setup) -> list[str]:
    out = []
    if r.data != x.data:
        what = "the inner frame of the input" if x.decapped else "the input"
        out.append(f"output is not {what}:\n  got  {r.data.hex()}\n  want {x.data.hex()}")
    if x.decapped and (bad := check_well_formed(r.data)):
        out.append(f"decapsulated frame is not well formed: {bad}")
    if not (x.meta and xdp_meta_supported()):  # kernels that refuse the helper give XDP none
        if r.meta:
            out.append(f"unexpected metadata {r.meta.hex()}")
        return out
    if len(r.meta) != META_LEN:
        return [*out, f"metadata of {len(r.meta)} bytes"]
    meta = abi.Meta.from_buffer_copy(r.meta)
    magic, mark, vni, flags = meta.magic, meta.mark, meta.vni, meta.flags
    want = (abi.META_MAGIC, x.mark, x.vni, meta_flags(x))
    if (magic, mark, vni, flags) != want:
        out.append(f"metadata {(magic, mark, vni, flags)}, expected {want}")
    return out


def _describe(pkt: bytes, how: str, setup: Setup) -> str:
    return f"{how}; {setup.default_action=} {setup.unknown_vni_action=} {setup.rewrite_inner_dmac=} " \
           f"{setup.decap=} {setup.strict_tunnel_ports=} {setup.allow_established=} {setup.fragments=} " \
           f"{setup.ct=}\n" \
           f"packet {pkt.hex()}"


def fuzz_one(h: Harness, src: Source, packet: tuple[bytes, str] | None = None) -> Outcome | None:
    setup = h.configure(src)
    pkt, how = packet or hostile_packet(src)
    h.dp.maps.clear_conntrack()
    if setup.allow_established and src.chance(0.5):
        setup = h.record_reply_of(setup, pkt)  # the packet is a reply to a flow that left
    try:
        return check_xdp(h, setup, pkt)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{_describe(pkt, how, setup)}") from None


@FUZZ_SETTINGS
@given(data=st.data())
def test_xdp_hostile_packets(fuzz_dp, data):
    fuzz_one(fuzz_dp, HypothesisSource(data))


def test_xdp_seeded_random_packets_reach_every_verdict(fuzz_dp):
    """Same properties on seeded random packets; also checks the generators reach every reason
    they can (all but DECAP_FAILED, which needs bpf_xdp_adjust_head to refuse) and decap."""
    src = RandomSource(SEED)
    seen: Counter[Any] = Counter()
    for _ in range(4 * EXAMPLES):
        outcome = fuzz_one(fuzz_dp, src)
        if outcome is not None:
            seen[outcome.reason] += 1
            seen["decapped"] += outcome.decapped
    unreachable = {abi.Reason.UNSPECIFIED, abi.Reason.DROP_DECAP_FAILED}
    missing = [r.name for r in abi.Reason if r not in unreachable and not seen[r]]
    if EXAMPLES >= 250:  # a smaller budget may miss a rare verdict by chance
        assert not missing and seen["decapped"], f"never reached: {missing}; seen {dict(seen)}"


def test_xdp_coverage_guided(fuzz_dp):
    """Mutates what was interesting: a mutant that made the program behave in a way not seen
    before (reason, events, rule, classifier, VNI: read from the counters, which check_xdp has
    matched against the reference) joins the corpus and is mutated further, so mutations stack
    up on packets that reached deep into the parsers. BPF has no edge coverage; the counters are
    the cheap stand-in."""
    src = RandomSource(SEED + 1)
    corpus: list[Seed] = []
    seen: set[tuple[Any, ...]] = set()
    for _ in range(4 * EXAMPLES):
        parent = Seed.of(valid_frame(src)) if not corpus or src.chance(0.2) else src.choice(corpus)
        pkt, how = mutate(src, parent)
        outcome = fuzz_one(fuzz_dp, src, (pkt, how))
        if outcome is not None and outcome.behaviour not in seen:
            seen.add(outcome.behaviour)
            corpus.append(Seed(pkt, parent.boundaries, parent.fields))
    print(f"coverage-guided: {len(seen)} behaviours from {4 * EXAMPLES} packets")  # shown with -s
    assert len(seen) >= min(50, EXAMPLES // 4), f"only {len(seen)} behaviours"


@FUZZ_SETTINGS
@given(data=st.data())
def test_xdp_repeated_runs_count_every_packet(fuzz_dp, data):
    """In repeat mode the kernel reruns the program on the same buffer (a decap in one run leaves
    the next run the inner frame), so only the totals are predictable: the reason counters move
    by exactly the number of runs, and the last verdict is a drop, a pass or a reject's reply
    (XDP_TX: whether the reject's rate limit still has a token after the earlier runs depends on
    how many of them rejected)."""
    src = HypothesisSource(data)
    fuzz_dp.configure(src)
    pkt, how = hostile_packet(src)
    repeat = src.integer(2, 16)
    before = fuzz_dp.dp.maps.reason_counts()
    try:
        r = fuzz_dp.dp.run_xdp(pkt, repeat=repeat)
    except OSError as err:
        assert err.errno == errno.EINVAL and len(pkt) < ETH_HLEN, f"{err}; {how}; {pkt.hex()}"
        return
    after = fuzz_dp.dp.maps.reason_counts()
    moved = sum(after[k].packets - before[k].packets for k in after)
    assert moved == repeat, f"{moved} reasons counted for {repeat} runs; {how}; {pkt.hex()}"
    assert r.action in (XDP_DROP, XDP_PASS, XDP_TX), f"action {r.action}; {how}; {pkt.hex()}"


# --- TC ------------------------------------------------------------------------------------------


def check_tc(h: Harness, pkt: bytes, mark_in: int) -> None:
    assert h.setup is not None
    want_mark, want_cls = tc_expected_mark(pkt, h.setup, mark_in)
    before = h.snapshot()
    try:
        r = h.dp.run_tc(pkt, mark=mark_in)
    except OSError as err:
        assert err.errno == errno.EINVAL and tc_may_refuse(pkt), f"test run failed: {err}"
        assert h.snapshot() == before, "a refused run moved a counter"
        return
    d = _deltas(before, h.snapshot())
    assert r.retval == TC_ACT_OK, f"TC verdict {r.retval}"
    assert r.data == pkt, "TC changed the packet"
    assert r.mark == want_mark, f"mark {r.mark:#x}, expected {want_mark:#x}"
    assert d["cls"] == (Counter({want_cls: 1}) if want_cls is not None else Counter())
    assert d["event"] == Counter({abi.Event.TC_FALLBACK: 1}), dict(d["event"])
    assert not d["reason"], "TC counted a verdict"


def tc_may_refuse(pkt: bytes) -> bool:
    """The kernel runs TC only on frames holding Ethernet and the whole IPv4/IPv6 header
    (bpf_prog_test_run_skb): shorter ones are refused with EINVAL before the program runs."""
    if len(pkt) < ETH_HLEN:
        return True
    ethertype = int.from_bytes(pkt[12:14], "big")
    need = {ETH_P_IP: IPV4_HLEN, ETH_P_IPV6: IPV6_HLEN}.get(ethertype, 0)
    return len(pkt) < ETH_HLEN + need


def _fake_meta(src: Source) -> bytes:
    """What XDP metadata looks like, as packet bytes: TC must not take it for metadata."""
    return bytes(abi.Meta(magic=abi.META_MAGIC, mark=src.integer(1, 0xFFFFFFFF), vni=src.integer(0, 1 << 24),
                          flags=3))


@FUZZ_SETTINGS
@given(data=st.data())
def test_tc_hostile_packets_marked_only_by_a_classifier(fuzz_dp, data):
    src = HypothesisSource(data)
    fuzz_dp.configure(src)
    pkt, how = hostile_packet(src)
    if src.chance(0.1):
        pkt = _fake_meta(src) + pkt
    mark_in = src.choice((0, 0x55, src.integer(0, 0xFFFFFFFF)))
    try:
        check_tc(fuzz_dp, pkt, mark_in)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{how}; mark in {mark_in:#x}\npacket {pkt.hex()}") from None


@FUZZ_SETTINGS
@given(data=st.data())
def test_tc_egress_records_exactly_the_leaving_flow(fuzz_dp, data):
    """allow_established's recorder on hostile packets leaving: never drops or changes one, and
    records the flow the reference says (its replies' key), or nothing."""
    src = HypothesisSource(data)
    setup = fuzz_dp.configure(src)
    pkt, how = hostile_packet(src)
    fuzz_dp.dp.maps.clear_conntrack()
    want = tc_egress_expected(pkt, setup)
    try:
        r = fuzz_dp.dp.run_tc_egress(pkt)
    except OSError as err:
        assert err.errno == errno.EINVAL and tc_may_refuse(pkt), f"test run failed: {err}"
        return
    got = {(k.family, k.src, k.dst, k.proto, k.sport, k.dport) for k in fuzz_dp.dp.maps.conntrack()}
    assert (r.retval, r.data) == (TC_ACT_OK, pkt), f"{how}; {pkt.hex()}"
    assert got == ({want} if want else set()), f"recorded {got}, expected {want}; {how}; {pkt.hex()}"


# --- what the fuzzing found: IP length fields were not checked ---------------------------------
# A frame holding less than its IP header announces was judged (and, in a tunnel, decapsulated and
# passed) as if it were whole. The fuzzer's first find: a VxLAN packet decapped and passed with an
# inner IPv6 header announcing 6 payload bytes, none of them delivered.

BASE = Setup(if_mac=IF_MAC, tunnels=TUNNELS, acl=ACL, classifiers=CLASSIFIERS, xdp_meta=xdp_meta_supported())
ETH = bytes.fromhex("020000000102" "020000000002")


def _ipv4(payload: bytes, proto: int = UDP, tot_len: int | None = None) -> bytes:
    length = 20 + len(payload) if tot_len is None else tot_len
    return ETH + b"\x08\x00" + struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, 1, 0, 64, proto, 0,
                                            bytes([10, 3, 0, 2]), bytes([10, 2, 0, 1])) + payload


def _ipv6(payload: bytes, nexthdr: int = UDP, payload_len: int | None = None) -> bytes:
    length = len(payload) if payload_len is None else payload_len
    return ETH + b"\x86\xdd" + struct.pack("!IHBB16s16s", 6 << 28, length, nexthdr, 64, bytes(15) + b"\x02",
                                            bytes(15) + b"\x01") + payload


UDP_5000 = struct.pack("!HHHH", 40000, 5000, 8, 0)
TCP_443 = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 5 << 4, 0x02, 1024, 0, 0)


def _vxlan(inner: bytes, tot_len: int | None = None, udp_len: int | None = None, junk: bytes = b"") -> bytes:
    """Ethernet/IPv4/UDP/VxLAN (VNI 100) around `inner`; `junk` after the UDP payload but inside
    the IP datagram."""
    tunnel = struct.pack("!B3xI", 0x08, 100 << 8) + inner
    ulen = 8 + len(tunnel) if udp_len is None else udp_len
    return _ipv4(struct.pack("!HHHH", 49152, 4789, ulen, 0) + tunnel + junk, tot_len=tot_len)


LENGTH_CASES = [
    ("IPv4 total length beyond the frame", _ipv4(UDP_5000, tot_len=29), abi.Reason.DROP_TRUNCATED),
    ("IPv4 total length below its header", _ipv4(UDP_5000, tot_len=19), abi.Reason.DROP_MALFORMED),
    ("IPv4 with Ethernet padding past the datagram", _ipv4(UDP_5000) + bytes(18), abi.Reason.PASS_DEFAULT),
    ("IPv6 payload length beyond the frame", _ipv6(UDP_5000, payload_len=9), abi.Reason.DROP_TRUNCATED),
    ("IPv6 payload length 0", _ipv6(UDP_5000, payload_len=0), abi.Reason.PASS_DEFAULT),
    ("outer IPv4 total length beyond the frame", _vxlan(_ipv4(UDP_5000), tot_len=200),
     abi.Reason.DROP_TRUNCATED),
    ("inner IPv4 total length beyond the delivered frame", _vxlan(_ipv4(UDP_5000, tot_len=40)),
     abi.Reason.DROP_TRUNCATED),
    ("inner IPv6 payload length beyond the delivered frame", _vxlan(_ipv6(b"", nexthdr=GRE, payload_len=6)),
     abi.Reason.DROP_TRUNCATED),
    ("a whole tunnelled frame", _vxlan(_ipv4(UDP_5000)), abi.Reason.PASS_DEFAULT),
    # The UDP length bounds the tunnel payload (the second find: a VxLAN packet whose UDP length
    # left no room for the tunnel was decapped, though a VTEP's socket receives nothing).
    ("outer UDP length ending inside the inner Ethernet header", _vxlan(_ipv4(UDP_5000), udp_len=16 + 13),
     abi.Reason.DROP_TRUNCATED),
    ("bytes past the UDP payload are cut from the inner frame", _vxlan(_ipv4(UDP_5000), junk=b"junk" * 3),
     abi.Reason.PASS_DEFAULT),
    ("inner datagram reaching into bytes past the UDP payload",
     _vxlan(_ipv4(UDP_5000, tot_len=40), junk=bytes(12)), abi.Reason.DROP_TRUNCATED),
    # The inner headers end with the UDP payload too, not with the outer frame: the fuzzer's third
    # find was an inner IPv6 header cut short by the UDP length, whose last bytes fell in the outer
    # frame's Ethernet padding; the program read them and judged the header malformed.
    ("inner IPv6 header cut by the UDP payload, the rest in the outer frame's padding",
     _vxlan(ETH + b"\x86\xdd" + _ipv4(UDP_5000)[14:40]) + bytes(14), abi.Reason.DROP_TRUNCATED),
    ("inner UDP header only in the outer frame's padding, not read as ports",
     _vxlan(_ipv4(b"", tot_len=20)) + UDP_5000 + bytes(6), abi.Reason.DROP_TRUNCATED),
    ("inner IPv4 options only in the outer frame's padding",
     _vxlan(ETH + b"\x08\x00\x46" + _ipv4(b"", tot_len=20)[15:]) + bytes(12), abi.Reason.DROP_TRUNCATED),
]


@pytest.mark.parametrize("desc,pkt,reason", LENGTH_CASES, ids=[c[0] for c in LENGTH_CASES])
def test_ip_length_fields_are_checked(fuzz_dp, desc, pkt, reason):
    fuzz_dp.apply(BASE)
    assert xdp_expected(pkt, BASE).reason == reason, f"{desc}: the reference disagrees with the table"
    outcome = check_xdp(fuzz_dp, BASE, pkt)  # also: a passed frame is exactly the predicted one
    assert outcome is not None and outcome.reason == reason, desc


# A UDP length that leaves no tunnel packet at all: the plain UDP it is (the stack drops a
# datagram whose UDP length is wrong itself), or dropped under strict tunnel ports.
STRICT = dataclasses.replace(BASE, strict_tunnel_ports=True)
UDP_LENGTH_CASES = [
    ("outer UDP length leaving no room for the VxLAN header", _vxlan(_ipv4(UDP_5000), udp_len=8),
     abi.Reason.DROP_TRUNCATED),
    ("outer UDP length below its header", _vxlan(_ipv4(UDP_5000), udp_len=7), abi.Reason.DROP_MALFORMED),
    ("outer UDP length past the IP datagram", _vxlan(_ipv4(UDP_5000), udp_len=200),
     abi.Reason.DROP_TRUNCATED),
    ("outer IP datagram ending inside the VxLAN header", _vxlan(_ipv4(UDP_5000), tot_len=20 + 8 + 4),
     abi.Reason.DROP_TRUNCATED),
    ("outer IP datagram ending inside the tunnel", _vxlan(_ipv4(UDP_5000), tot_len=20 + 8 + 8 + 10),
     abi.Reason.DROP_TRUNCATED),
]


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
@pytest.mark.parametrize("desc,pkt,strict_reason", UDP_LENGTH_CASES, ids=[c[0] for c in UDP_LENGTH_CASES])
def test_udp_lengths_on_a_tunnel_port(fuzz_dp, desc, pkt, strict_reason, strict):
    setup = STRICT if strict else BASE
    reason = strict_reason if strict else abi.Reason.PASS_DEFAULT
    fuzz_dp.apply(setup)
    assert xdp_expected(pkt, setup).reason == reason, f"{desc}: the reference disagrees with the table"
    outcome = check_xdp(fuzz_dp, setup, pkt)
    assert outcome is not None and outcome.reason == reason, desc


# IPv6 extension header chains: the walk stopped after 4 headers and handed the ACL whatever came
# next as the protocol, with no ports, so a port rule could be bypassed by padding headers the
# stack walks through; and after a non-first fragment's Fragment header it read fragment data as
# headers. HOP, DST, RT, FRAG: the IPv6 extension headers walked.
HOP, RT, FRAG, DST, AH = 0, 43, 44, 60, 51
TCP_23 = struct.pack("!HHIIBBHHH", 40000, 23, 1, 0, 5 << 4, 0x02, 1024, 0, 0)


def _ext_chain(kinds: list[int], last: int, frag_off: int = 0) -> bytes:
    """Extension headers of the smallest size (8 bytes each; AH 24: its fixed 12 and a 12-byte
    ICV, Payload Len 4), then the protocol `last`."""
    out = b""
    for kind, nxt in zip(kinds, [*kinds[1:], last], strict=True):
        if kind == FRAG:
            out += struct.pack("!BBHI", nxt, 0, frag_off, 7)
        elif kind == AH:
            out += struct.pack("!BBHII", nxt, 4, 0, 0x100, 1) + bytes(12)
        else:
            out += struct.pack("!BB6x", nxt, 0)
    return out


EXT_CASES = [
    ("TCP/23 behind the longest RFC 8200 chain is judged as TCP/23",
     _ipv6(_ext_chain([HOP, DST, RT, FRAG, DST], TCP) + TCP_23, nexthdr=HOP), abi.Reason.DROP_DENIED),
    ("TCP/23 behind 7 destination options headers is not passed unjudged",
     _ipv6(_ext_chain([DST] * 7, TCP) + TCP_23, nexthdr=DST), abi.Reason.DROP_MALFORMED),
    ("TCP/23 behind an Authentication Header is judged as TCP/23",
     _ipv6(_ext_chain([AH], TCP) + TCP_23, nexthdr=AH), abi.Reason.DROP_DENIED),
    ("TCP/23 behind the longest RFC 8200 chain with AH is judged as TCP/23",
     _ipv6(_ext_chain([HOP, DST, RT, FRAG, AH, DST], TCP) + TCP_23, nexthdr=HOP), abi.Reason.DROP_DENIED),
    ("an Authentication Header cut by the end of the datagram",
     _ipv6(_ext_chain([AH], TCP)[:20], nexthdr=AH), abi.Reason.DROP_TRUNCATED),
    ("a non-first fragment's data is not read as headers",
     _ipv6(_ext_chain([FRAG], DST, frag_off=0x100) + b"\x06\xff" + bytes(14), nexthdr=FRAG),
     abi.Reason.PASS_DEFAULT),
]


@pytest.mark.parametrize("desc,pkt,reason", EXT_CASES, ids=[c[0] for c in EXT_CASES])
def test_ipv6_extension_header_chains(fuzz_dp, desc, pkt, reason):
    fuzz_dp.apply(BASE)
    assert xdp_expected(pkt, BASE).reason == reason, f"{desc}: the reference disagrees with the table"
    outcome = check_xdp(fuzz_dp, BASE, pkt)
    assert outcome is not None and outcome.reason == reason, desc


# fragments: first. A later fragment passes before the ACL wherever it is found (behind extension
# headers, inside a tunnel); a first fragment and an atomic one are still judged.
FIRST = dataclasses.replace(BASE, fragments="first", default_action="deny")
FRAGMENT_CASES = [
    ("a later IPv6 fragment behind hop-by-hop and routing headers",
     _ipv6(_ext_chain([HOP, RT, FRAG], TCP, frag_off=0x100) + TCP_23, nexthdr=HOP),
     abi.Reason.PASS_LATER_FRAGMENT),
    ("the first IPv6 fragment of TCP/23 behind the same chain",
     _ipv6(_ext_chain([HOP, RT, FRAG], TCP, frag_off=0x1) + TCP_23, nexthdr=HOP), abi.Reason.DROP_DENIED),
    ("an atomic IPv6 fragment of TCP/23", _ipv6(_ext_chain([FRAG], TCP) + TCP_23, nexthdr=FRAG),
     abi.Reason.DROP_DENIED),
    ("the last IPv4 fragment (MF clear, offset set)",
     _ipv4(UDP_5000)[:20] + b"\x00\x40" + _ipv4(UDP_5000)[22:], abi.Reason.PASS_LATER_FRAGMENT),
    ("a later IPv4 fragment inside VxLAN, decapsulated first",
     _vxlan(_ipv4(UDP_5000)[:20] + b"\x20\x10" + _ipv4(UDP_5000)[22:]), abi.Reason.PASS_LATER_FRAGMENT),
]


@pytest.mark.parametrize("desc,pkt,reason", FRAGMENT_CASES, ids=[c[0] for c in FRAGMENT_CASES])
def test_later_fragments_pass_under_fragments_first(fuzz_dp, desc, pkt, reason):
    fuzz_dp.apply(FIRST)
    assert xdp_expected(pkt, FIRST).reason == reason, f"{desc}: the reference disagrees with the table"
    outcome = check_xdp(fuzz_dp, FIRST, pkt)
    assert outcome is not None and outcome.reason == reason, desc


# TCP options: the header is doff * 4 bytes, all inside the IP datagram (before: only 20 were read,
# so a header whose options ran past the datagram was judged as if whole).
def _tcp(doff: int, options: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", 40000, 23, 1, 0, doff << 4, 0x02, 1024, 0, 0) + options


TCP_OPTION_CASES = [
    ("options inside the datagram", _ipv4(_tcp(8, b"\x01" * 12), proto=TCP), abi.Reason.DROP_DENIED),
    ("doff 15, 40 bytes of options", _ipv6(_tcp(15, b"\x01" * 40), nexthdr=TCP), abi.Reason.DROP_DENIED),
    ("options past the end of the datagram", _ipv4(_tcp(8, b"\x01" * 8), proto=TCP),
     abi.Reason.DROP_TRUNCATED),
    ("options past the IPv4 total length, padding behind", _ipv4(_tcp(8, b"\x01" * 12), proto=TCP,
                                                                 tot_len=20 + 24), abi.Reason.DROP_TRUNCATED),
    ("doff 4", _ipv4(_tcp(4), proto=TCP), abi.Reason.DROP_MALFORMED),
]


@pytest.mark.parametrize("desc,pkt,reason", TCP_OPTION_CASES, ids=[c[0] for c in TCP_OPTION_CASES])
def test_tcp_options_are_bounded_by_doff(fuzz_dp, desc, pkt, reason):
    fuzz_dp.apply(BASE)
    assert xdp_expected(pkt, BASE).reason == reason, f"{desc}: the reference disagrees with the table"
    outcome = check_xdp(fuzz_dp, BASE, pkt)
    assert outcome is not None and outcome.reason == reason, desc


def test_junk_past_the_udp_payload_is_not_delivered(fuzz_dp):
    fuzz_dp.apply(BASE)
    inner = _ipv4(UDP_5000)
    v = fuzz_dp.dp.run_xdp(_vxlan(inner, junk=b"junk"))
    assert v.data == IF_MAC + inner[6:]


def test_tc_does_not_classify_a_datagram_longer_than_its_frame(fuzz_dp):
    fuzz_dp.apply(BASE)
    whole, lying = _ipv4(TCP_443, proto=TCP), _ipv4(TCP_443, proto=TCP, tot_len=41)
    assert tc_expected_mark(whole, BASE, 0) == (0x77, 1)
    assert tc_expected_mark(lying, BASE, 0) == (0, None)
    check_tc(fuzz_dp, whole, 0)
    check_tc(fuzz_dp, lying, 0)
