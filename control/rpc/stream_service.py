"""The streaming servicers: EventService (policy events) and TraceService (packet tracers).

A streaming RPC holds one of the server's worker threads for as long as it runs, so both are
capped (MAX_WATCHERS, tracing.MAX_ACTIVE) and the daemon sizes its pool for them on top of the
unary calls. Everything that can be refused is checked before the stream starts, inside the
`rpc` wrapper, so a refusal is a status code and not a broken stream. What a stream holds (a
subscription, a tracer) is released by the RPC's termination callback, which gRPC runs whether
the client cancelled, went away or the stream completed, and by the stream's own `finally`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc

from control.errors import Exhausted, Unavailable
from control.observe.event_readers import EventPump
from control.observe.fanout import EventFilter, Fanout, Subscription
from control.observe.tracing import CANCELLED, TraceManager, TraceSession
from control.rpc import convert
from control.rpc.api import pb2, pb2_grpc
from control.rpc.service import rpc

log = logging.getLogger(__name__)

MAX_WATCHERS = 64          # WatchEvents streams at once (each holds a server thread)
WATCH_CAPACITY = 4096      # events queued per stream before it loses them
REPORT_INTERVAL_S = 1.0    # how often a stream checks whether its losses changed
TRACE_WAIT_S = 0.5


def _counts_since(now: dict[str, dict[str, int]], baseline: dict[str, dict[str, int]], key: str) -> int:
    return sum(max(0, c[key] - baseline.get(name, {}).get(key, 0)) for name, c in now.items())


class EventService(pb2_grpc.EventServiceServicer):
    def __init__(self, fanout: Fanout, pump: EventPump, stopping: threading.Event,
                 max_watchers: int = MAX_WATCHERS, capacity: int = WATCH_CAPACITY) -> None:
        self.fanout = fanout
        self.pump = pump
        self.stopping = stopping
        self.max_watchers = max_watchers
        self.capacity = capacity
        self._lock = threading.Lock()

    @rpc
    def WatchEvents(self, request: Any, context: grpc.ServicerContext) -> Any:
        flt = convert.event_filter_from_proto(request)
        with self._lock:
            if self.stopping.is_set():
                raise Unavailable("the daemon is stopping")
            if self.fanout.count("watch") >= self.max_watchers:
                raise Exhausted(f"{self.max_watchers} event streams are open, the most this daemon allows: "
                                "close one, or read the exporter's file (config events.export)")
            sub = self.fanout.subscribe(flt, self.capacity, kind="watch")
        context.add_callback(lambda: self.fanout.unsubscribe(sub))
        return self._follow(sub, flt)

    def _kernel(self, flt: EventFilter) -> dict[str, dict[str, int]]:
        return self.pump.kernel_counts(flt.interfaces or None)

    def _follow(self, sub: Subscription, flt: EventFilter) -> Iterator[Any]:
        baseline = self._kernel(flt)

        def loss() -> Any:
            now = self._kernel(flt)
            return pb2.EventLoss(dropped=sub.dropped,
                                 rate_limited=_counts_since(now, baseline, "rate_limited"),
                                 ringbuf_full=_counts_since(now, baseline, "ringbuf_full"))

        try:
            last = loss()
            yield pb2.WatchEventsResponse(loss=last)
            next_report = time.monotonic() + REPORT_INTERVAL_S
            while True:
                batch = sub.get(timeout=max(0.0, next_report - time.monotonic()))
                if not batch and sub.closed:
                    return  # the client went away, or the daemon is stopping: end with OK
                yield from self._messages(batch)
                if time.monotonic() >= next_report:
                    now = loss()
                    if now != last:
                        yield pb2.WatchEventsResponse(loss=now)
                        last = now
                    next_report = time.monotonic() + REPORT_INTERVAL_S
        finally:
            self.fanout.unsubscribe(sub)

    @staticmethod
    def _messages(batch: list[tuple[str, Any]]) -> Iterator[Any]:
        offset = convert.wall_offset_ns()
        for interface, event in batch:
            try:
                msg = convert.policy_event_to_proto(interface, event, offset)
            except Exception:  # noqa: BLE001 - one odd event must not end the stream
                log.exception("a policy event could not be converted", extra={"ifname": interface})
                continue
            yield pb2.WatchEventsResponse(event=msg)


def _capabilities(found: dict[str, bool]) -> list[Any]:
    return [pb2.HookCapability(hook=h, supported=s) for h, s in found.items()]


class TraceService(pb2_grpc.TraceServiceServicer):
    def __init__(self, traces: TraceManager) -> None:
        self.traces = traces

    @rpc
    def TraceCapabilities(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb2.TraceCapabilitiesResponse(capabilities=_capabilities(self.traces.capabilities()),
                                             active_traces=self.traces.active())

    @rpc
    def Trace(self, request: Any, context: grpc.ServicerContext) -> Any:
        spec = convert.trace_spec_from_proto(request)
        session = self.traces.open(spec)  # loaded when this returns; refusals are status codes
        context.add_callback(lambda: session.stop(CANCELLED))
        return self._stream(session)

    def _stream(self, session: TraceSession) -> Iterator[Any]:
        try:
            yield pb2.TraceResponse(started=pb2.TraceStarted(
                hooks=session.hooks, capabilities=_capabilities(self.traces.capabilities()),
                duration_s=session.duration_s, max_events=session.max_events))
            while True:
                events, ended = session.get(TRACE_WAIT_S)
                yield from self._events(events)
                if ended is not None:
                    if ended != CANCELLED:  # a cancelled stream has nobody to tell
                        reason = pb2.TraceEndReason.Value(f"TRACE_END_REASON_{ended.upper()}")
                        yield pb2.TraceResponse(ended=pb2.TraceEnded(reason=reason, events=session.sent,
                                                                     dropped=session.dropped))
                    return
        finally:
            self.traces.release(session)  # the tracer is unloaded when the stream ends

    @staticmethod
    def _events(events: list[Any]) -> Iterator[Any]:
        offset = convert.wall_offset_ns()
        for event in events:
            try:
                msg = convert.trace_event_to_proto(event, offset)
            except Exception:  # noqa: BLE001 - one odd event must not end the trace
                log.exception("a trace event could not be converted")
                continue
            yield pb2.TraceResponse(event=msg)


def delivery(fanout: Fanout, pump: EventPump, names: list[str] | None) -> Any:
    """PolicyEventDelivery of the named interfaces (None = all) and of the daemon's consumers."""
    kernel = pump.kernel_counts(names)
    read = pump.read_counts()
    dropped = fanout.dropped()
    return pb2.PolicyEventDelivery(
        sent=sum(c["sent"] for c in kernel.values()),
        rate_limited=sum(c["rate_limited"] for c in kernel.values()),
        ringbuf_full=sum(c["ringbuf_full"] for c in kernel.values()),
        read=sum(n for name, n in read.items() if names is None or name in names),
        watch_dropped=dropped.get("watch", 0), export_dropped=dropped.get("export", 0),
        watchers=fanout.count("watch"))


def add_stream_services(server: grpc.Server, fanout: Fanout, pump: EventPump, traces: TraceManager,
                        stopping: threading.Event) -> list[str]:
    """Registers EventService and TraceService; returns their full names."""
    pb2_grpc.add_EventServiceServicer_to_server(EventService(fanout, pump, stopping), server)
    pb2_grpc.add_TraceServiceServicer_to_server(TraceService(traces), server)
    return [pb2.DESCRIPTOR.services_by_name[n].full_name for n in ("EventService", "TraceService")]
