"""Policy events out of the kernel: one reader thread per interface, and the JSON lines exporter.

    pump = EventPump(fanout, default_reader_factory())   # an EventReader per interface
    reconciler.observers.append(pump)        # readers follow the interfaces the reconciler loads
    exporter = EventExporter("/var/log/tidegate/events.jsonl", fanout).start()

A reader thread polls its interface's ring buffer (EventReader.poll, POLL_MS at a time) and hands
what it read to the fan-out, which never blocks it: a slow consumer loses events in its own queue,
the reader goes on. The reconciler tells the pump before it unloads a data plane, and the pump
joins the thread there, so no poll runs on a closed BPF object.

dataplane/kernel/events.py may be missing (an older data plane): the pump then says so once in the log
and reads nothing; the daemon works as before.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from control.observe import event_format
from control.observe.fanout import EventFilter, Fanout, Subscription
from control.rpc import convert

log = logging.getLogger(__name__)

POLL_MS = 100              # how long one poll waits for the ring buffer: also the stop latency
ERROR_BACKOFF_S = 1.0      # after a failed poll, before the next
JOIN_TIMEOUT_S = 5.0
EXPORT_CAPACITY = 65536    # events queued for the exporter before it loses them
KERNEL_COUNTS = ("sent", "rate_limited", "ringbuf_full")  # what EventReader.counts() holds

ReaderFactory = Callable[[Any], Any]  # Dataplane -> dataplane.kernel.events.EventReader


def default_reader_factory() -> ReaderFactory | None:
    """dataplane.kernel.events.EventReader, or None when this checkout has no dataplane/kernel/events.py."""
    try:
        from dataplane.kernel.events import EventReader
    except ImportError:
        return None
    return EventReader  # type: ignore[no-any-return]


def _count(counts: Any, key: str) -> int:
    """One number of EventReader.counts(): dataplane.kernel.events.EventCounts, or a dict."""
    value = counts.get(key, 0) if isinstance(counts, dict) else getattr(counts, key, 0)
    return int(value)


class _Reader:
    """One interface's reader thread."""

    def __init__(self, name: str, reader: Any, fanout: Fanout) -> None:
        self.name = name
        self.reader = reader
        self.fanout = fanout
        self.read = 0  # events read from the ring buffer (only this thread writes it)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"events-{name}", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                events = self.reader.poll(POLL_MS)
            except Exception:  # noqa: BLE001 - a reader must outlive one bad poll
                log.exception("reading policy events failed", extra={"ifname": self.name})
                self._stop.wait(ERROR_BACKOFF_S)
                continue
            if events:
                self.read += len(events)
                self.fanout.publish_many(self.name, events)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(JOIN_TIMEOUT_S)
        if self.thread.is_alive():
            log.error("policy event reader did not stop", extra={"ifname": self.name})
        close = getattr(self.reader, "close", None)
        if callable(close):
            close()


class EventPump:
    """The reader threads, one per loaded interface (a control.apply.reconcile.PlaneObserver)."""

    def __init__(self, fanout: Fanout, factory: ReaderFactory | None) -> None:
        """`factory` opens a reader on a data plane (default_reader_factory()); None: no events."""
        self.fanout = fanout
        self.factory = factory
        self._lock = threading.Lock()
        self._readers: dict[str, _Reader] = {}
        self._read_gone: dict[str, int] = {}
        self._warned = False

    @property
    def available(self) -> bool:
        return self.factory is not None

    def plane_added(self, name: str, plane: Any) -> None:
        if self.factory is None:
            if not self._warned:
                log.warning("policy events are off: this data plane has no dataplane/kernel/events.py")
                self._warned = True
            return
        try:
            reader = self.factory(plane)
        except Exception as exc:  # noqa: BLE001 - enforcement goes on without events
            log.warning("no policy events from this interface: its reader did not open",
                        extra={"ifname": name, "error": str(exc)})
            return
        r = _Reader(name, reader, self.fanout)
        with self._lock:
            old = self._readers.pop(name, None)
            self._readers[name] = r
        if old is not None:
            old.stop()
        r.thread.start()
        log.info("policy event reader started", extra={"ifname": name})

    def plane_removing(self, name: str, plane: Any) -> None:
        with self._lock:  # after this, no kernel_counts() call can reach the reader
            r = self._readers.pop(name, None)
            if r is not None:
                self._read_gone[name] = self._read_gone.get(name, 0) + r.read
        if r is not None:
            r.stop()
            log.info("policy event reader stopped", extra={"ifname": name, "read": r.read})

    def interfaces(self) -> list[str]:
        with self._lock:
            return sorted(self._readers)

    def kernel_counts(self, names: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
        """EventReader.counts() of each reading interface (or of those named that read)."""
        wanted = None if names is None else set(names)
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for name, r in self._readers.items():
                if wanted is not None and name not in wanted:
                    continue
                try:
                    counts = r.reader.counts()
                except Exception as exc:  # noqa: BLE001 - a count is not worth failing a scrape
                    log.warning("policy event counters unreadable", extra={"ifname": name, "error": str(exc)})
                    continue
                out[name] = {k: _count(counts, k) for k in KERNEL_COUNTS}
        return out

    def read_counts(self) -> dict[str, int]:
        """Events read per interface since the daemon started (interfaces gone included)."""
        with self._lock:
            out = dict(self._read_gone)
            for name, r in self._readers.items():
                out[name] = out.get(name, 0) + r.read
        return out

    def close(self) -> None:
        with self._lock:
            names = list(self._readers)
        for name in names:
            self.plane_removing(name, None)


class EventExporter:
    """events.export: every policy event as one JSON line (as `tidegate events -j` prints it).

    A subscriber like any other, with a large queue: when the file cannot keep up, events are
    dropped (PolicyEventDelivery.export_dropped) and a `{"type": "loss", ...}` line says how many
    before the next event line. "-" writes to stdout. The file is opened for appending; a
    rotated file is not reopened (rotate with copytruncate).
    """

    def __init__(self, path: str, fanout: Fanout, capacity: int = EXPORT_CAPACITY) -> None:
        self.path = path
        self.fanout = fanout
        self.capacity = capacity
        self.written = 0
        self._out: TextIO | None = None
        self._sub: Subscription | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> EventExporter:
        """Opens the file (OSError if it cannot) and starts writing."""
        if self.path == "-":
            self._out = sys.stdout
        else:
            target = Path(self.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            self._out = target.open("a", encoding="utf-8")
        self._sub = self.fanout.subscribe(EventFilter(), self.capacity, kind="export")
        self._thread = threading.Thread(target=self._run, name="events-export", daemon=True)
        self._thread.start()
        log.info("exporting policy events", extra={"path": self.path})
        return self

    def _run(self) -> None:
        assert self._sub is not None and self._out is not None
        reported = 0
        while True:
            batch = self._sub.get(timeout=1.0)
            if not batch and self._sub.closed:
                break
            lines = []
            if self._sub.dropped != reported:
                lines.append(json.dumps({"type": "loss", "dropped": self._sub.dropped - reported}))
                reported = self._sub.dropped
            offset = convert.wall_offset_ns()
            for interface, event in batch:
                msg = convert.policy_event_to_proto(interface, event, offset)
                lines.append(json.dumps(event_format.policy_event_data(msg)))
            if lines:
                try:
                    self._out.write("\n".join(lines) + "\n")
                    self._out.flush()
                except OSError as exc:
                    log.error("writing policy events failed", extra={"path": self.path, "error": str(exc)})
                self.written += len(batch)

    def close(self) -> None:
        """Writes what is queued, then closes the file."""
        if self._sub is not None:
            self.fanout.unsubscribe(self._sub)
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT_S)
        if self._out is not None and self._out is not sys.stdout:
            self._out.close()
        self._out = None
