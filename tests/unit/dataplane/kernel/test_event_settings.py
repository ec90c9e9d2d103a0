"""Policy event settings and record decoding (pure Python: no BPF)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address

import pytest
from pydantic import ValidationError

from dataplane import abi
from dataplane.kernel.build_settings import Capacities
from dataplane.kernel.events import EventCounts, decode
from dataplane.map_config import EVENT_BURST_MAX, EVENT_RATE_MAX, RuntimeConfig


def test_event_defaults_come_from_the_header():
    cfg = RuntimeConfig()
    assert (cfg.event_rate, cfg.event_burst) == (abi.define("TG_EVENT_RATE_DEFAULT"),
                                                 abi.define("TG_EVENT_BURST_DEFAULT"))
    assert Capacities().event_ring_pages == abi.define("TG_EVENT_RING_PAGES")
    assert "-DTG_EVENT_RING_PAGES=64" in Capacities().cflags()


@pytest.mark.parametrize("field,value", [
    ("event_rate", -1), ("event_rate", EVENT_RATE_MAX + 1),
    ("event_burst", 0), ("event_burst", EVENT_BURST_MAX + 1),
])
def test_event_settings_out_of_range_are_refused(field, value):
    with pytest.raises(ValidationError, match=field):
        RuntimeConfig(**{field: value})


def test_event_rate_zero_is_allowed():
    assert RuntimeConfig(event_rate=0).event_rate == 0


@pytest.mark.parametrize("pages,hint", [(3, "use 4"), (100, "use 128")])
def test_ring_pages_must_be_a_power_of_two(pages, hint):
    with pytest.raises(ValidationError, match=hint):
        Capacities(event_ring_pages=pages)


@dataclass
class FakeRecord:
    """Field names of struct tg_event_record, as BCC's generated type has them."""

    family: int
    src: bytes
    dst: bytes
    flags: int = 0
    vni: int = 0
    ts_ns: int = 1
    ifindex: int = 2
    rule_id: int = 3
    reason: int = int(abi.Reason.DROP_DENIED)
    action: int = int(abi.Action.DENY)
    proto: int = 17
    sport: int = 1000
    dport: int = 53
    length: int = 60


def test_decode_takes_ipv4_from_the_first_four_bytes():
    raw = bytes([10, 0, 0, 1]) + b"\xff" * 12  # bytes past the fourth are not part of an IPv4 address
    ev = decode(FakeRecord(family=4, src=raw, dst=bytes([10, 0, 0, 2]) + bytes(12)))
    assert (ev.src, ev.dst) == (ip_address("10.0.0.1"), ip_address("10.0.0.2"))
    assert ev.vni is None and ev.reason == abi.Reason.DROP_DENIED and ev.action == abi.Action.DENY


def test_decode_ipv6_and_the_vni_only_when_decapped():
    v6 = ip_address("fd00::1").packed
    flagged = FakeRecord(family=6, src=v6, dst=v6, vni=4242, flags=abi.define("TG_EVENT_RECORD_F_DECAPPED"))
    assert decode(flagged).vni == 4242 and decode(flagged).src == ip_address("fd00::1")
    assert decode(FakeRecord(family=6, src=v6, dst=v6, vni=4242)).vni is None


def test_event_counts_subtract_and_total():
    moved = EventCounts(10, 5, 1) - EventCounts(4, 5, 0)
    assert (moved, moved.total) == (EventCounts(6, 0, 1), 7)
