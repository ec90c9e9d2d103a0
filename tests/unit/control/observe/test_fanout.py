"""The policy event fan-out, pure: filters, bounded per-subscriber queues, drop counting, and the
reader threads and exporter driven by fake readers (no BPF)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from control.cli.stream_format import policy_event_text
from control.errors import InvalidArgument
from control.observe.event_format import policy_event_data
from control.observe.event_readers import EventExporter, EventPump
from control.observe.fanout import EventFilter, Fanout
from control.rpc import convert
from control.rpc.api import pb2
from dataplane import abi
from tests.unit.control.events_fixture import Ev

# --- filters ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("flt", "event", "interface", "expected"), [
    (EventFilter(), Ev(), "eth0", True),
    (EventFilter(rule_ids=frozenset({42, 7})), Ev(rule_id=7), "eth0", True),
    (EventFilter(rule_ids=frozenset({42})), Ev(rule_id=7), "eth0", False),
    (EventFilter(rule_ids=frozenset({0})), Ev(rule_id=0, reason=abi.Reason.DROP_DEFAULT), "eth0", True),
    (EventFilter(reasons=frozenset({int(abi.Reason.PASS_ALLOWED)})), Ev(), "eth0", False),
    (EventFilter(reasons=frozenset({int(abi.Reason.DROP_DENIED)})), Ev(), "eth0", True),
    (EventFilter(interfaces=frozenset({"eth1"})), Ev(), "eth0", False),
    (EventFilter(interfaces=frozenset({"eth0", "eth1"})), Ev(), "eth0", True),
    (EventFilter.build(src="10.0.0.0/24"), Ev(), "eth0", True),
    (EventFilter.build(src="10.0.1.0/24"), Ev(), "eth0", False),
    (EventFilter.build(dst="10.0.1.1"), Ev(), "eth0", True),
    (EventFilter.build(src="2001:db8::/32"), Ev(), "eth0", False),  # another family never matches
    (EventFilter.build(src="2001:db8::/32"), Ev(src=ip_address("2001:db8::1"), dst=ip_address("2001:db8::2")),
     "eth0", True),
    # fields combine with AND
    (EventFilter.build(rule_ids=[42], src="10.9.0.0/16"), Ev(), "eth0", False),
    (EventFilter.build(rule_ids=[42], reasons=[6], interfaces=["eth0"], src="10.0.0.0/8", dst="10.0.0.0/8"),
     Ev(), "eth0", True),
])
def test_filter(flt: EventFilter, event: Ev, interface: str, expected: bool) -> None:
    assert flt.matches(interface, event) is expected


def test_filter_refuses_a_bad_prefix_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"^dst: .*host bits set"):
        EventFilter.build(dst="10.0.0.1/8")
    with pytest.raises(ValueError, match=r"^src: "):
        EventFilter.build(src="ten")


def test_request_to_filter_names_every_bad_field() -> None:
    request = pb2.WatchEventsRequest(src="10.0.0.1/8", dst="nope", reasons=[pb2.REASON_DROP_DENIED, 0, 99])
    with pytest.raises(InvalidArgument) as info:
        convert.event_filter_from_proto(request)
    assert info.value.paths == ["reasons[1]", "reasons[2]", "src", "dst"]
    flt = convert.event_filter_from_proto(pb2.WatchEventsRequest(rule_ids=[1, 2], interfaces=["eth0"],
                                                                 reasons=[pb2.REASON_DROP_DENIED],
                                                                 src=" 10.0.0.0/8 "))
    assert flt == EventFilter.build(rule_ids=[1, 2], reasons=[6], interfaces=["eth0"], src="10.0.0.0/8")


# --- bounded queues ---------------------------------------------------------------------------------

def test_a_full_queue_drops_the_newest_for_that_subscriber_and_counts_it() -> None:
    fanout = Fanout()
    sub = fanout.subscribe(EventFilter(), capacity=3)
    for rule in range(1, 6):
        fanout.publish("eth0", Ev(rule_id=rule))
    assert sub.dropped == 2
    assert [e.rule_id for _, e in sub.get(timeout=0)] == [1, 2, 3]  # what it had, in order
    fanout.publish("eth0", Ev(rule_id=6))  # room again
    assert [e.rule_id for _, e in sub.get(timeout=0)] == [6]
    assert fanout.dropped() == {"watch": 2}


def test_a_slow_subscriber_blocks_neither_the_reader_nor_the_others() -> None:
    fanout = Fanout()
    slow = fanout.subscribe(EventFilter(), capacity=10)  # never read
    fast = fanout.subscribe(EventFilter(), capacity=10_000)
    unrelated = fanout.subscribe(EventFilter(rule_ids=frozenset({1})), capacity=1)  # filter: not counted
    started = time.monotonic()
    for _ in range(5000):
        fanout.publish("eth0", Ev())
    assert time.monotonic() - started < 2.0  # a full queue costs a counter, never a wait
    assert len(fast.get(timeout=0, max_batch=10_000)) == 5000 and fast.dropped == 0
    assert slow.queued() == 10 and slow.dropped == 4990
    assert unrelated.dropped == 0 and unrelated.queued() == 0


def test_a_blocked_consumer_thread_does_not_hold_the_publisher() -> None:
    fanout = Fanout()
    sub = fanout.subscribe(EventFilter(), capacity=2)
    got: list[Any] = []
    release = threading.Event()

    def consumer() -> None:
        got.extend(sub.get(timeout=5))
        release.wait(5)  # stuck, as a client that stopped reading

    t = threading.Thread(target=consumer)
    t.start()
    fanout.publish("eth0", Ev(rule_id=1))
    time.sleep(0.05)
    for rule in range(2, 100):
        fanout.publish("eth0", Ev(rule_id=rule))
    assert sub.dropped == 96 and sub.queued() == 2
    release.set()
    t.join()
    assert [e.rule_id for _, e in got] == [1]


def test_unsubscribe_keeps_the_drop_count_and_close_wakes_a_waiting_get() -> None:
    fanout = Fanout()
    sub = fanout.subscribe(EventFilter(), capacity=1, kind="watch")
    export = fanout.subscribe(EventFilter(), capacity=1, kind="export")
    for _ in range(4):
        fanout.publish("eth0", Ev())
    fanout.unsubscribe(sub)
    fanout.unsubscribe(sub)  # idempotent: counted once
    assert fanout.dropped() == {"watch": 3, "export": 3}
    assert fanout.count("watch") == 0 and fanout.count() == 1

    waiting = fanout.subscribe(EventFilter(), kind="watch")
    woke: list[float] = []

    def wait() -> None:
        started = time.monotonic()
        waiting.get(timeout=10)
        woke.append(time.monotonic() - started)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.1)
    fanout.close(kind="watch")
    t.join(5)
    assert woke and woke[0] < 5 and waiting.closed
    assert not export.closed  # only the kind asked for
    fanout.publish("eth0", Ev())  # a closed subscription takes nothing
    assert waiting.queued() == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Fanout().subscribe(EventFilter(), capacity=0)


# --- reader threads (fake readers) ------------------------------------------------------------------

class FakeReader:
    def __init__(self, plane: Any) -> None:
        self.plane = plane
        self.pending: list[Ev] = []
        self.lock = threading.Lock()
        self.polling = False
        self.closed = False

    def poll(self, timeout_ms: int) -> list[Ev]:
        assert not self.closed, "polled after the data plane went"
        self.polling = True
        time.sleep(timeout_ms / 1000 / 10)
        with self.lock:
            out, self.pending = self.pending, []
        self.polling = False
        return out

    def counts(self) -> Any:
        return {"sent": 5, "rate_limited": 2, "ringbuf_full": 1}

    def close(self) -> None:
        self.closed = True


def test_pump_reads_each_interface_into_the_fanout_and_stops_before_the_plane_goes() -> None:
    fanout = Fanout()
    readers: dict[str, FakeReader] = {}

    def factory(plane: Any) -> FakeReader:
        readers[plane] = FakeReader(plane)
        return readers[plane]

    pump = EventPump(fanout, factory)
    sub = fanout.subscribe(EventFilter())
    pump.plane_added("eth0", "eth0")
    pump.plane_added("eth1", "eth1")
    assert pump.interfaces() == ["eth0", "eth1"]
    with readers["eth0"].lock:
        readers["eth0"].pending += [Ev(rule_id=1), Ev(rule_id=2)]
    with readers["eth1"].lock:
        readers["eth1"].pending += [Ev(rule_id=3)]
    got: list[tuple[str, Any]] = []
    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        got += sub.get(timeout=0.5)
    assert sorted((i, e.rule_id) for i, e in got) == [("eth0", 1), ("eth0", 2), ("eth1", 3)]
    assert pump.kernel_counts(["eth0"]) == {"eth0": {"sent": 5, "rate_limited": 2, "ringbuf_full": 1}}

    pump.plane_removing("eth0", "eth0")
    assert readers["eth0"].closed and not readers["eth0"].polling  # joined: no poll runs any more
    assert pump.interfaces() == ["eth1"] and set(pump.kernel_counts()) == {"eth1"}
    assert pump.read_counts() == {"eth0": 2, "eth1": 1}  # an interface gone keeps its count
    pump.close()
    assert readers["eth1"].closed and pump.interfaces() == []


def test_pump_without_an_events_module_or_with_a_failing_reader_reads_nothing() -> None:
    fanout = Fanout()
    off = EventPump(fanout, None)
    off.plane_added("eth0", object())
    assert not off.available and off.interfaces() == [] and off.kernel_counts() == {}

    def broken(plane: Any) -> Any:
        raise RuntimeError("no ring buffer in this program")

    failing = EventPump(fanout, broken)
    failing.plane_added("eth0", object())  # logged, not raised: enforcement goes on
    assert failing.interfaces() == []


def test_pump_counts_from_an_event_counts_object() -> None:
    @dataclass
    class Counts:
        sent: int = 9
        rate_limited: int = 0
        ringbuf_full: int = 3

    class Reader(FakeReader):
        def counts(self) -> Any:
            return Counts()

    pump = EventPump(Fanout(), Reader)
    pump.plane_added("eth0", "eth0")
    try:
        assert pump.kernel_counts() == {"eth0": {"sent": 9, "rate_limited": 0, "ringbuf_full": 3}}
    finally:
        pump.close()


# --- conversion and the exporter --------------------------------------------------------------------

def test_event_to_proto_and_its_json_and_text() -> None:
    msg = convert.policy_event_to_proto("eth0", Ev(vni=100), offset_ns=1_700_000_000 * 10**9)
    assert (msg.rule_id, msg.reason, msg.action, msg.vni) == \
        (42, pb2.REASON_DROP_DENIED, pb2.ACTION_DENY, 100)
    assert (msg.src, msg.dst, msg.protocol, msg.sport, msg.dport, msg.length) == \
        ("10.0.0.2", "10.0.1.1", 17, 5000, 9, 60)
    data = policy_event_data(msg)
    assert data["time"] == "2023-11-14T22:13:20.000001Z" and data["protocol"] == "udp"
    assert (data["action"], data["reason"], data["vni"]) == ("deny", "DROP_DENIED", 100)
    assert policy_event_text(data) == ("22:13:20.000001 eth0 DROP_DENIED rule 42 deny udp "
                                       "10.0.0.2:5000 -> 10.0.1.1:9 len 60 vni 100")
    allowed = convert.policy_event_to_proto("eth0", Ev(rule_id=0, action=abi.Action.ALLOW, proto=1,
                                                       reason=abi.Reason.PASS_ALLOWED, vni=None))
    text = policy_event_text(policy_event_data(allowed))
    assert not allowed.HasField("vni") and " default allow icmp 10.0.0.2 -> 10.0.1.1 len 60" in text
    v6 = policy_event_data(convert.policy_event_to_proto(
        "eth0", Ev(src=ip_address("2001:db8::1"), dst=ip_address("2001:db8::2"), proto=6)))
    assert "tcp [2001:db8::1]:5000 -> [2001:db8::2]:9" in policy_event_text(v6)


def test_exporter_writes_json_lines_and_says_what_it_lost(tmp_path: Path) -> None:
    fanout = Fanout()
    path = tmp_path / "log" / "events.jsonl"
    exporter = EventExporter(str(path), fanout, capacity=2)
    exporter.start()
    assert path.parent.is_dir()
    assert exporter._sub is not None
    with exporter._sub._cond:  # hold the writer off so the queue fills
        for rule in range(1, 5):
            fanout.publish("eth0", Ev(rule_id=rule))
    exporter.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"type": "loss", "dropped": 2}
    assert [(e["type"], e["rule_id"], e["interface"]) for e in lines[1:]] == [("event", 1, "eth0"),
                                                                             ("event", 2, "eth0")]
    assert fanout.dropped() == {"export": 2}
    assert lines[1] == policy_event_data(convert.policy_event_to_proto("eth0", Ev(rule_id=1))) | \
        {"time": lines[1]["time"]}
