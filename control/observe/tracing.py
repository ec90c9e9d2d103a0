"""Packet traces on demand: a tracer loaded for one Trace call and unloaded when it ends.

    traces = TraceManager(default_backend())
    session = traces.open(spec_kwargs)       # the tracer is loaded when this returns
    events, ended = session.get(timeout=0.5) # ended: None while it runs, then why it stopped
    session.stop(CANCELLED)                  # the client went away
    traces.release(session)                  # joins its thread: the tracer is unloaded

Each session owns one thread that does everything with its tracer: start (load and attach),
poll, stop (detach and unload). Nothing else touches the tracer, so a stop asked from anywhere
(the gRPC termination callback, the daemon stopping) is safe, and the tracer is unloaded within
one poll (POLL_MS) whatever the stream is doing: blocked on a slow client, already abandoned by
gRPC, or waiting for events. The thread ends the trace itself at the time limit or after
max_events. Events go to the stream through a bounded queue: a slow client loses events, counted.

The tracer is dataplane.trace.tracer (TraceSpec, Tracer); without that module every call is refused
with Unavailable (FAILED_PRECONDITION), and capabilities() is empty.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from control.errors import Exhausted, InvalidArgument, Unavailable

log = logging.getLogger(__name__)

POLL_MS = 100
QUEUE_CAPACITY = 4096
START_TIMEOUT_S = 60.0   # loading BPF tracers compiles with BCC: seconds
JOIN_TIMEOUT_S = 10.0
MAX_ACTIVE = 2           # each trace holds BPF programs on hot kernel paths: keep them few

# why a session ended (names of TraceEndReason without the prefix; CANCELLED has no message)
TIME_LIMIT, MAX_EVENTS = "time_limit", "max_events"
DAEMON_STOPPING, CANCELLED = "daemon_stopping", "cancelled"


@dataclass(frozen=True)
class Backend:
    """What a tracer is made of: dataplane.trace.tracer's TraceSpec and Tracer, or fakes in tests."""

    spec: Callable[..., Any]
    tracer: Any  # the class: tracer(spec) -> Tracer; tracer.capabilities() -> dict[str, bool]


def default_backend() -> Backend | None:
    try:
        from dataplane.trace.tracer import Tracer, TraceSpec
    except ImportError:
        return None
    return Backend(TraceSpec, Tracer)


class TraceSession:
    """One tracer, from load to unload, in its own thread."""

    def __init__(self, backend: Backend, spec: Any, duration_s: float, max_events: int,
                 capacity: int = QUEUE_CAPACITY,
                 on_end: Callable[[TraceSession], None] | None = None) -> None:
        self.backend = backend
        self.on_end = on_end  # called from the thread once the tracer is unloaded (or never loaded)
        self.spec = spec
        self.duration_s = duration_s
        self.max_events = max_events
        self.capacity = capacity
        self.hooks: list[str] = []
        self.seen = 0       # events the tracer produced, up to max_events
        self.dropped = 0    # ... of which the queue had no room for
        self.sent = 0       # ... handed to the stream
        self.loaded = False
        self._queue: deque[Any] = deque()
        self._cond = threading.Condition()
        self._stop_reason: str | None = None
        self._ended: str | None = None  # set by the thread once the tracer is unloaded
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="trace", daemon=True)

    # --- the owner thread -----------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT_S) -> list[str]:
        """Loads the tracer (in the session's thread); Unavailable if it does not load."""
        self._thread.start()
        if not self._started.wait(timeout):
            self.stop(CANCELLED)
            raise Unavailable(f"the tracer did not load within {timeout:g} s")
        if self._error is not None:
            raise Unavailable(f"the tracer did not load: {self._error}")
        return self.hooks

    def _run(self) -> None:
        tracer = None
        try:
            tracer = self.backend.tracer(self.spec)
            self.hooks = list(tracer.start())
        except BaseException as exc:  # noqa: BLE001 - reported to the caller of start()
            self._error = exc
            if tracer is not None:
                self._stop_quietly(tracer)  # whatever start() attached before it failed
            self._finish(None)
            self._started.set()
            return
        self.loaded = True
        self._started.set()
        reason = CANCELLED
        try:
            reason = self._loop(tracer)
        except Exception:  # noqa: BLE001 - the trace ends, the daemon goes on
            log.exception("tracing failed")
        finally:
            try:
                tracer.stop()
            finally:
                self.loaded = False
                self._finish(reason)
        log.info("trace ended", extra={"reason": reason, "events": self.seen, "dropped": self.dropped})

    @staticmethod
    def _stop_quietly(tracer: Any) -> None:
        try:
            tracer.stop()
        except Exception:  # noqa: BLE001 - the load already failed; that is the error to report
            log.exception("unloading a tracer that failed to start failed too")

    def _loop(self, tracer: Any) -> str:
        deadline = time.monotonic() + self.duration_s
        while True:
            with self._cond:
                if self._stop_reason is not None:
                    return self._stop_reason
            if self.seen >= self.max_events:
                return MAX_EVENTS
            if tracer.expired or time.monotonic() >= deadline:
                self._take(tracer.poll(0))  # what the tracer still buffered when its time ran out
                return MAX_EVENTS if self.seen >= self.max_events else TIME_LIMIT
            self._take(tracer.poll(POLL_MS))

    def _take(self, events: list[Any]) -> None:
        for event in events:
            if self.seen >= self.max_events:
                return
            self._offer(event)

    def _offer(self, event: Any) -> None:
        with self._cond:
            self.seen += 1
            if len(self._queue) >= self.capacity:
                self.dropped += 1
                return
            self._queue.append(event)
            self._cond.notify_all()

    def _finish(self, reason: str | None) -> None:
        with self._cond:
            self._ended = reason or CANCELLED
            self._cond.notify_all()
        if self.on_end is not None:
            self.on_end(self)

    # --- anyone ---------------------------------------------------------------------------------
    def stop(self, reason: str = CANCELLED) -> None:
        """Asks the thread to end the trace (the first reason given wins)."""
        with self._cond:
            if self._stop_reason is None:
                self._stop_reason = reason
            self._cond.notify_all()

    def get(self, timeout: float, max_batch: int = 256) -> tuple[list[Any], str | None]:
        """(queued events, None) while the trace runs; ([], why it ended) once it has ended and
        everything queued was taken."""
        with self._cond:
            if not self._queue and self._ended is None:
                self._cond.wait(timeout)
            out: list[Any] = []
            while self._queue and len(out) < max_batch:
                out.append(self._queue.popleft())
            self.sent += len(out)
            ended = self._ended if not self._queue and not out else None
            return out, ended

    def join(self, timeout: float = JOIN_TIMEOUT_S) -> bool:
        """Waits for the tracer to be unloaded; False if it was not within `timeout`."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()


class TraceManager:
    """The traces running now, at most `max_active` of them."""

    def __init__(self, backend: Backend | None, max_active: int = MAX_ACTIVE) -> None:
        self.backend = backend
        self.max_active = max_active
        self._lock = threading.Lock()
        self._sessions: list[TraceSession] = []
        self._stopping = False
        self._capabilities: dict[str, bool] | None = None

    def capabilities(self) -> dict[str, bool]:
        """Hook -> supported by this kernel (asked once: the kernel does not change under us)."""
        if self.backend is None:
            return {}
        if self._capabilities is None:
            found = self.backend.tracer.capabilities()
            self._capabilities = {str(k): bool(v) for k, v in sorted(found.items())}
        return dict(self._capabilities)

    def active(self) -> int:
        with self._lock:
            return len(self._sessions)

    def open(self, spec: dict[str, Any]) -> TraceSession:
        """Loads a tracer for `spec` (convert.trace_spec_from_proto's keywords)."""
        if self.backend is None:
            raise Unavailable("packet tracing is not available: this data plane has no "
                              "dataplane/trace/tracer.py")
        try:
            built = self.backend.spec(**spec)
        except (TypeError, ValueError) as exc:  # TraceSpecError names its field
            field = getattr(exc, "field", None)
            reason = str(exc).removeprefix(f"{field}: ") if field else str(exc)
            raise InvalidArgument([(field or "(request)", reason)]) from exc
        session = TraceSession(self.backend, built, spec["duration_s"], spec["max_events"],
                               on_end=self._forget)
        with self._lock:
            if self._stopping:
                raise Unavailable("the daemon is stopping")
            if len(self._sessions) >= self.max_active:
                raise Exhausted(f"{len(self._sessions)} traces are running, the most this daemon allows: "
                                "retry when one ends")
            self._sessions.append(session)
        try:
            session.start()
        except BaseException:
            self.release(session)
            raise
        log.info("trace started", extra={"hooks": session.hooks, "spec": spec})
        return session

    def release(self, session: TraceSession) -> None:
        """Stops the session (if it still runs) and waits until its tracer is unloaded."""
        session.stop(CANCELLED)
        if not session.join():
            log.error("a tracer did not unload in time")
        self._forget(session)

    def _forget(self, session: TraceSession) -> None:
        """The session's tracer is unloaded: it no longer counts against max_active."""
        with self._lock:
            self._sessions = [s for s in self._sessions if s is not session]

    def stop_all(self, reason: str = DAEMON_STOPPING) -> None:
        """Refuses new traces and asks every running one to end (its stream says why)."""
        with self._lock:
            self._stopping = True
            sessions = list(self._sessions)
        for s in sessions:
            s.stop(reason)

    def join_all(self) -> None:
        with self._lock:
            sessions = list(self._sessions)
        for s in sessions:
            self.release(s)
