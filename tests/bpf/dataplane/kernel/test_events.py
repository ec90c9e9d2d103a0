"""Policy events through the real XDP program (BPF_PROG_TEST_RUN) and the ring buffer.

What is reported (docs/dataplane.md, "Policy events"): every packet denied by a rule or by the default
action, and every packet allowed by a rule with `log`; nothing else. Each event is counted exactly
once as sent, rate limited (per-CPU token bucket) or ring buffer full.
"""

from __future__ import annotations

import math
import mmap
import os
import socket
import time
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from dataplane import abi
from dataplane.acl import acl_rule
from dataplane.kernel.build_settings import DataplaneSettings
from dataplane.kernel.events import EventReader, PolicyEvent
from dataplane.kernel.interface import Dataplane
from dataplane.kernel.program import unpin
from dataplane.map_config import EVENT_RATE_MAX, RuntimeConfig, TunnelEntry
from testbed.packets import SOURCE_PORT, VXLAN_PORT, geneve, vxlan
from testbed.topology import pin_root_owned

from ..conftest import IF_MAC
from ..verdicts import XDP_DROP, XDP_PASS

pytestmark = pytest.mark.root

VNI = 4242
UNKNOWN_VNI = 999
UDP_NUM, TCP_NUM, ICMP_NUM = 17, 6, 1
ETH = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:99")
INNER_V4 = ETH / IP(src="10.1.0.2", dst="10.2.0.1") / UDP(sport=40000, dport=5000) / b"payload-v4"
INNER_V6 = ETH / IPv6(src="fd00:1::2", dst="fd00:2::1") / TCP(sport=40001, dport=443) / b"payload-v6"
ICMP_V4 = ETH / IP(src="10.1.0.2", dst="10.2.0.1") / ICMP() / b"ping"
# Explicit MACs: without a dst, scapy tries to resolve one and takes seconds per packet.
OUTER_ETH = Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02")
OUTER_V4 = OUTER_ETH / IP(src="192.0.2.1", dst="192.0.2.2")
OUTER_V6 = OUTER_ETH / IPv6(src="2001:db8::1", dst="2001:db8::2")
RECORD_IN_RING = 72 + 8  # struct tg_event_record + the ring's 8-byte record header
FLOOD = 2000


@pytest.fixture
def reader(dp):
    """A reader on the session's data plane, the ring drained and every CPU's bucket full."""
    dp.maps.put_tunnel(TunnelEntry(vni=VNI))
    r = EventReader(dp)
    r.poll(0)  # what earlier tests' packets left in the ring
    dp.maps.reset_event_budget()
    return r


def configure(dp: Any, **settings: Any) -> RuntimeConfig:
    cfg = RuntimeConfig(**settings)
    dp.configure(cfg, if_mac=IF_MAC)
    dp.maps.reset_event_budget()
    return cfg


def events_for(dp: Any, reader: EventReader, packet: bytes) -> tuple[int, list[PolicyEvent]]:
    """(XDP action, the events that one packet produced); each was sent, none was lost."""
    before = reader.counts()
    action = dp.run_xdp(packet).action
    got = reader.poll(0)
    moved = reader.counts() - before
    assert (moved.sent, moved.rate_limited, moved.ringbuf_full) == (len(got), 0, 0)
    return action, got


# --- what a packet reports -----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    desc: str
    packet: bytes
    rules: tuple = ()
    default: str = "allow"
    event: dict | None = None  # PolicyEvent fields expected; None: no event


def _tuple(frame: Ether, vni: int | None = None) -> dict:
    ip, l4 = frame[1], frame[2]
    family = 4 if ip.version == 4 else 6
    ports = (l4.sport, l4.dport) if isinstance(l4, TCP | UDP) else (0, 0)
    return {"family": family, "src": ip_address(ip.src), "dst": ip_address(ip.dst),
            "proto": ip.proto if family == 4 else ip.nh, "sport": ports[0], "dport": ports[1],
            "length": len(frame), "vni": vni}


DENIED = {"reason": abi.Reason.DROP_DENIED, "action": abi.Action.DENY}
DEFAULT_DENIED = {"reason": abi.Reason.DROP_DEFAULT, "action": abi.Action.DENY, "rule_id": 0}
LOGGED = {"reason": abi.Reason.PASS_ALLOWED, "action": abi.Action.ALLOW}
OUTER_UNKNOWN_VNI = vxlan(OUTER_V4, UNKNOWN_VNI, INNER_V4)

_WHOLE = bytes(INNER_V4)
IHL_4 = _WHOLE[:14] + bytes([0x44]) + _WHOLE[15:]  # an IPv4 header length of 16 bytes: impossible
CASES = [
    Case("deny rule, IPv4 UDP", bytes(INNER_V4),
         (acl_rule(7, 10, "deny", src="10.1.0.0/16", proto=UDP_NUM, dport=(5000, 5000)),),
         event={**DENIED, "rule_id": 7, **_tuple(INNER_V4)}),
    Case("deny rule, IPv6 TCP", bytes(INNER_V6),
         (acl_rule(8, 10, "deny", dst="fd00:2::/32", proto=TCP_NUM),),
         event={**DENIED, "rule_id": 8, **_tuple(INNER_V6)}),
    Case("deny rule, ICMP has no ports", bytes(ICMP_V4),
         (acl_rule(9, 10, "deny", proto=ICMP_NUM),),
         event={**DENIED, "rule_id": 9, **_tuple(ICMP_V4)}),
    Case("default deny: rule id 0", bytes(INNER_V4), default="deny",
         event={**DEFAULT_DENIED, **_tuple(INNER_V4)}),
    Case("allow rule with log", bytes(INNER_V4),
         (acl_rule(11, 10, "allow", dst="10.2.0.0/16", log=True),),
         event={**LOGGED, "rule_id": 11, **_tuple(INNER_V4)}),
    Case("allow rule without log: no event", bytes(INNER_V4),
         (acl_rule(12, 10, "allow", dst="10.2.0.0/16"),)),
    Case("default allow: no event", bytes(INNER_V4)),
    Case("deny after VxLAN decap: the VNI and the inner tuple", vxlan(OUTER_V4, VNI, INNER_V4),
         (acl_rule(13, 10, "deny", src="10.1.0.0/16"),),
         event={**DENIED, "rule_id": 13, **_tuple(INNER_V4, VNI)}),
    Case("deny after Geneve decap, outer IPv6: the VNI and the inner tuple", geneve(OUTER_V6, VNI, INNER_V6),
         (acl_rule(14, 10, "deny", dst="fd00:2::/32"),),
         event={**DENIED, "rule_id": 14, **_tuple(INNER_V6, VNI)}),
    Case("logged allow after decap", vxlan(OUTER_V6, VNI, INNER_V4),
         (acl_rule(15, 10, "allow", log=True),),
         event={**LOGGED, "rule_id": 15, **_tuple(INNER_V4, VNI)}),
    Case("unknown VNI, left encapsulated: the outer tuple, no VNI", OUTER_UNKNOWN_VNI, default="deny",
         event={**DEFAULT_DENIED, "family": 4, "src": ip_address("192.0.2.1"), "dst": ip_address("192.0.2.2"),
                "proto": UDP_NUM, "sport": SOURCE_PORT, "dport": VXLAN_PORT, "length": len(OUTER_UNKNOWN_VNI),
                "vni": None}),
    Case("malformed (IPv4 IHL 4): counted by reason only, no event", IHL_4, default="deny"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.desc for c in CASES])
def test_a_packet_reports_exactly_its_policy_event(dp, reader, case):
    configure(dp, default_action=case.default)
    dp.acl.replace(list(case.rules))
    start = time.monotonic_ns()  # bpf_ktime_get_ns is CLOCK_MONOTONIC too
    action, got = events_for(dp, reader, case.packet)
    end = time.monotonic_ns()
    if case.event is None:
        assert got == []
        return
    (ev,) = got
    assert {k: getattr(ev, k) for k in case.event} == case.event
    assert action == (XDP_DROP if ev.action == abi.Action.DENY else XDP_PASS)
    assert ev.ifindex == socket.if_nametoindex("lo")  # a test run without an ifindex runs on lo
    assert start <= ev.ts_ns <= end


def test_every_denied_packet_is_one_event(dp, reader):
    configure(dp)
    dp.acl.replace([acl_rule(7, 10, "deny", src="10.1.0.0/16")])
    packets = [bytes(INNER_V4), bytes(ICMP_V4), vxlan(OUTER_V4, VNI, INNER_V4)]
    for p in packets:
        dp.run_xdp(p)
    got = reader.poll(0)
    assert [(e.rule_id, e.proto, e.vni) for e in got] == [(7, UDP_NUM, None), (7, ICMP_NUM, None),
                                                          (7, UDP_NUM, VNI)]


# --- pacing and loss accounting ------------------------------------------------------------------


def _flood(dp: Any, reader: EventReader, n: int) -> tuple[Any, list[PolicyEvent], float]:
    before = reader.counts()
    start = time.monotonic()
    dp.run_xdp(bytes(INNER_V4), repeat=n)
    elapsed = time.monotonic() - start
    moved = reader.counts() - before
    got = reader.poll(0)
    assert moved.total == n, "every denied packet is sent, rate limited or refused by a full ring"
    assert len(got) == moved.sent
    return moved, got, elapsed


@pytest.mark.parametrize("rate,burst", [(None, None), (1, 5), (50, 1)],
                         ids=["defaults", "1/s burst 5", "50/s burst 1"])
def test_a_flood_sends_about_a_burst_and_counts_the_rest_as_rate_limited(dp, reader, rate, burst):
    overrides = {k: v for k, v in (("event_rate", rate), ("event_burst", burst)) if v is not None}
    cfg = configure(dp, default_action="deny", **overrides)
    moved, got, elapsed = _flood(dp, reader, FLOOD)
    # Repeat mode runs on one CPU but may migrate: each CPU has its own bucket, all full at start.
    refill = math.ceil(cfg.event_rate * elapsed)
    assert cfg.event_burst <= moved.sent <= (os.cpu_count() or 1) * (cfg.event_burst + refill)
    assert moved.rate_limited == FLOOD - moved.sent and moved.ringbuf_full == 0
    assert all(e.reason == abi.Reason.DROP_DEFAULT for e in got)


def test_a_bucket_refused_in_one_tick_refills_in_the_next(dp, reader):
    """A refused bucket answers the rest of its tick without reading the clock (bpf_jiffies64:
    events.h), and asks it again once the tick moves: floods every 20 ms for half a second at 100
    events/s, burst 10, send the burst and about one per 10 ms after it, not just the burst."""
    cfg = configure(dp, default_action="deny", event_rate=100, event_burst=10)
    sent, start = 0, time.monotonic()
    while time.monotonic() - start < 0.5:
        moved, _, _ = _flood(dp, reader, 2_000)
        sent += moved.sent
        time.sleep(0.02)
    elapsed = time.monotonic() - start
    expected = cfg.event_rate * elapsed
    most = (os.cpu_count() or 1) * (cfg.event_burst + math.ceil(expected))
    assert cfg.event_burst + expected / 2 <= sent <= most


def test_event_rate_zero_sends_nothing_and_counts_every_event(dp, reader):
    configure(dp, default_action="deny", event_rate=0)
    moved, got, _ = _flood(dp, reader, 10)
    assert (moved.sent, moved.rate_limited, got) == (0, 10, [])


def test_a_full_ring_is_counted_and_keeps_what_it_holds(dp, reader):
    configure(dp, default_action="deny", event_rate=EVENT_RATE_MAX, event_burst=10**6)  # no pacing
    ring_bytes = dp.settings.capacities.event_ring_pages * mmap.PAGESIZE
    n = ring_bytes // RECORD_IN_RING + 500
    moved, got, _ = _flood(dp, reader, n)
    assert moved.rate_limited == 0
    assert moved.ringbuf_full >= 500 and moved.sent == ring_bytes // RECORD_IN_RING
    assert {(e.reason, e.src) for e in got} == {(abi.Reason.DROP_DEFAULT, ip_address("10.1.0.2"))}
    _, after = events_for(dp, reader, bytes(INNER_V4))  # read out, the ring takes events again
    assert len(after) == 1


# --- readers ---------------------------------------------------------------------------------------


def test_a_new_reader_takes_the_ring_over(dp, reader):
    configure(dp, default_action="deny")
    newer = EventReader(dp)
    dp.run_xdp(bytes(INNER_V4))
    assert len(newer.poll(0)) == 1
    with pytest.raises(RuntimeError, match="another EventReader"):
        reader.poll(0)


def test_poll_waits_at_most_its_timeout(dp, reader):
    start = time.monotonic()
    assert reader.poll(50) == []
    assert 0.04 <= time.monotonic() - start < 1.0


def test_config_round_trips_the_event_settings(dp):
    cfg = configure(dp, event_rate=12345, event_burst=678)
    assert dp.maps.read_config() == (cfg, IF_MAC)


def test_events_written_before_a_restart_are_read_after_it(bpf_available):
    """The ring buffer is pinned with the other maps: a restarted daemon reads the backlog."""
    ifname = "lo"  # only names the pin directory (under a root of its own): nothing is attached
    with pin_root_owned() as root:
        settings = DataplaneSettings(pin_root=root)
        first = Dataplane.load(ifname, settings)
        try:
            first.configure(RuntimeConfig(default_action="deny"), if_mac=IF_MAC)
            first.run_xdp(bytes(INNER_V4))
        finally:
            first.close()
        second = Dataplane.load(ifname, settings)
        try:
            assert second.adopted
            got = EventReader(second).poll(0)
            assert [(e.reason, e.src, e.dport) for e in got] == [(abi.Reason.DROP_DEFAULT,
                                                                  ip_address("10.1.0.2"), 5000)]
            assert EventReader(second).counts().sent == 1
        finally:
            second.close()
            unpin(settings, second.key)
