"""Trace sessions with a fake tracer: the tracer is unloaded however the trace ends (cancel, time
limit, max_events, daemon stop, failed start), in the session's own thread, and the limits hold."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from control.errors import Exhausted, InvalidArgument, Unavailable
from control.observe.tracing import CANCELLED, DAEMON_STOPPING, MAX_EVENTS, TIME_LIMIT, Backend, TraceManager
from control.rpc import convert
from control.rpc.api import pb2

WAIT = 5.0


@dataclass(frozen=True)
class Spec:
    host: str | None = None
    protocol: str | None = None
    port: int | None = None
    duration_s: float = 30.0
    max_events: int = 10_000

    def __post_init__(self) -> None:
        if self.port is not None and not 1 <= self.port <= 65535:
            error = ValueError(f"port: {self.port} is outside 1..65535")
            error.field = "port"  # type: ignore[attr-defined]  # as dataplane.trace.spec.TraceSpecError
            raise error


class FakeTracer:
    """Shaped as dataplane.trace.tracer.Tracer; records which thread did what."""

    instances: list[FakeTracer] = []
    fail_start = False
    per_poll = 1

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.threads: set[int] = set()
        self.started = False
        self.stopped = threading.Event()
        self.polls = 0
        self.expired = False
        FakeTracer.instances.append(self)

    @staticmethod
    def capabilities() -> dict[str, bool]:
        return {"tracepoint:skb:kfree_skb": True, "fentry:ip_rcv": False}

    def start(self) -> list[str]:
        self.threads.add(threading.get_ident())
        if FakeTracer.fail_start:
            raise RuntimeError("no hook is available on this kernel")
        self.started = True
        return ["kfree_skb"]

    def poll(self, timeout_ms: int) -> list[Any]:
        self.threads.add(threading.get_ident())
        assert not self.stopped.is_set(), "polled after stop"
        time.sleep(min(timeout_ms, 10) / 1000)
        self.polls += 1
        return [f"event-{self.polls}-{i}" for i in range(FakeTracer.per_poll)]

    def stop(self) -> None:
        self.threads.add(threading.get_ident())
        self.stopped.set()


@pytest.fixture(autouse=True)
def fresh_fake() -> None:
    FakeTracer.instances = []
    FakeTracer.fail_start = False
    FakeTracer.per_poll = 1


def manager(max_active: int = 2) -> TraceManager:
    return TraceManager(Backend(Spec, FakeTracer), max_active=max_active)


def spec(**kw: Any) -> dict[str, Any]:
    return {"host": None, "protocol": None, "port": None, "duration_s": 30.0, "max_events": 10_000, **kw}


def drain(session: Any, timeout: float = WAIT) -> tuple[list[Any], str]:
    events: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, ended = session.get(0.2)
        events += got
        if ended is not None:
            return events, ended
    pytest.fail("the trace did not end")


def test_cancel_unloads_the_tracer_in_its_own_thread() -> None:
    traces = manager()
    session = traces.open(spec())
    assert session.hooks == ["kfree_skb"] and traces.active() == 1
    tracer = FakeTracer.instances[0]
    time.sleep(0.05)
    session.stop(CANCELLED)
    assert tracer.stopped.wait(WAIT)
    _, ended = drain(session)
    assert ended == CANCELLED
    assert len(tracer.threads) == 1 and threading.get_ident() not in tracer.threads  # one owner thread
    traces.release(session)
    assert traces.active() == 0


def test_time_limit_ends_the_trace_and_delivers_what_was_left() -> None:
    traces = manager()
    session = traces.open(spec(duration_s=0.3))
    events, ended = drain(session)
    assert ended == TIME_LIMIT and events and FakeTracer.instances[0].stopped.is_set()
    assert session.sent == len(events) == session.seen
    until_inactive(traces)


def test_the_tracer_saying_expired_ends_it_too() -> None:
    traces = manager()
    session = traces.open(spec())
    FakeTracer.instances[0].expired = True
    _, ended = drain(session)
    assert ended == TIME_LIMIT


def test_max_events_is_exact() -> None:
    FakeTracer.per_poll = 7
    traces = manager()
    session = traces.open(spec(max_events=20))
    events, ended = drain(session)
    assert ended == MAX_EVENTS and len(events) == 20
    assert FakeTracer.instances[0].stopped.is_set()


def test_a_slow_reader_loses_events_counted() -> None:
    FakeTracer.per_poll = 50
    traces = manager()
    session = traces.open(spec(max_events=1000))
    session.capacity = 10
    time.sleep(0.5)  # nobody reads
    events, ended = drain(session)
    assert ended == MAX_EVENTS
    assert session.dropped > 0 and len(events) + session.dropped == 1000


def test_daemon_stop_ends_every_trace_and_refuses_new_ones() -> None:
    traces = manager()
    sessions = [traces.open(spec()), traces.open(spec())]
    traces.stop_all()
    for s in sessions:
        _, ended = drain(s)
        assert ended == DAEMON_STOPPING
    traces.join_all()
    assert traces.active() == 0 and all(t.stopped.is_set() for t in FakeTracer.instances)
    with pytest.raises(Unavailable, match="stopping"):
        traces.open(spec())


def test_at_most_max_active_traces() -> None:
    traces = manager(max_active=1)
    first = traces.open(spec())
    with pytest.raises(Exhausted, match="retry when one ends"):
        traces.open(spec())
    traces.release(first)
    traces.release(traces.open(spec()))
    assert traces.active() == 0


def test_a_tracer_that_does_not_start_is_unloaded_and_refused() -> None:
    FakeTracer.fail_start = True
    traces = manager()
    with pytest.raises(Unavailable, match="no hook is available"):
        traces.open(spec())
    assert FakeTracer.instances[0].stopped.is_set() and traces.active() == 0


def test_without_a_trace_module_tracing_is_unavailable() -> None:
    traces = TraceManager(None)
    assert traces.capabilities() == {}
    with pytest.raises(Unavailable, match="dataplane/trace/tracer.py"):
        traces.open(spec())


def test_spec_errors_name_the_field() -> None:
    with pytest.raises(InvalidArgument) as info:
        manager().open(spec(port=70000))
    assert info.value.errors == [("port", "70000 is outside 1..65535")]


def test_capabilities_are_asked_once_and_sorted() -> None:
    traces = manager()
    assert list(traces.capabilities()) == ["fentry:ip_rcv", "tracepoint:skb:kfree_skb"]


def test_request_defaults() -> None:
    assert convert.trace_spec_from_proto(pb2.TraceRequest()) == spec(duration_s=30.0, max_events=10_000)
    got = convert.trace_spec_from_proto(pb2.TraceRequest(host=" 10.0.0.1 ", protocol=pb2.PROTOCOL_UDP,
                                                         port=53, duration_s=2.5, max_events=9))
    assert got == spec(host="10.0.0.1", protocol="udp", port=53, duration_s=2.5, max_events=9)
    with pytest.raises(InvalidArgument) as info:
        convert.trace_spec_from_proto(pb2.TraceRequest(protocol=99))  # type: ignore[arg-type]
    assert info.value.paths == ["protocol"]


def test_real_trace_spec_errors_name_the_field() -> None:
    trace_spec = pytest.importorskip("dataplane.trace.spec", reason="dataplane/trace/spec.py is not here yet")
    traces = TraceManager(Backend(trace_spec.TraceSpec, FakeTracer))
    for request, field in ((pb2.TraceRequest(host="10.0.0.1/8"), "host"),
                           (pb2.TraceRequest(duration_s=-1), "duration_s"),
                           (pb2.TraceRequest(port=70000), "port"),
                           (pb2.TraceRequest(protocol=pb2.PROTOCOL_ICMP, port=53), "port")):
        with pytest.raises(InvalidArgument) as info:
            traces.open(convert.trace_spec_from_proto(request))
        assert info.value.paths == [field], info.value


def until_inactive(traces: TraceManager) -> None:
    deadline = time.monotonic() + WAIT
    while traces.active() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert traces.active() == 0
