"""List, then watch, one key range of etcd, keeping a complete local copy of it.

The protocol (as Kubernetes' reflector and Calico's syncer do it):

1. List the range (one linearizable read): the copy becomes exactly what was listed, at the
   store revision R of the answer. Keys the copy had and the list lacks are dropped: mark and
   sweep, so nothing deleted while this node was away survives.
2. Watch from R + 1. Each event moves the copy and R (to the event's mod revision).
3. The stream breaks (etcd restarted, a partition, no leader): wait (backoff), then watch again
   from R + 1 on the next endpoint. etcd replays every event since: no relist, no gap.
4. etcd answers that R + 1 is compacted (history before it is gone): go to 1. Never a silent
   restart from "now", which would lose the changes in between.

R advances only by events and lists, never by a response header or a progress notification
(etcd 3.4 sends progress notifications only on a timer and has no way to ask for one), so
resuming is always from a revision whose events this copy holds.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from control.fleet.etcd import Compacted, EtcdClient, EtcdError, Kv

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 10.0

EVENT_PUT, EVENT_DELETE = 0, 1  # etcdserverpb.Event.EventType


class Backoff:
    """Exponential waits with jitter: 0.2 s, 0.4 s, ... up to `maximum`; reset on success."""

    def __init__(self, start: float = BACKOFF_START_S, maximum: float = BACKOFF_MAX_S) -> None:
        self.start, self.maximum = start, maximum
        self.current = start

    def next(self) -> float:
        wait = self.current * random.uniform(0.8, 1.2)
        self.current = min(self.current * 2, self.maximum)
        return wait

    def reset(self) -> None:
        self.current = self.start


@dataclass
class Mirror:
    """The keys of one range as of `revision` (pure: no I/O)."""

    kvs: dict[bytes, Kv] = field(default_factory=dict)
    revision: int = 0

    def reset(self, kvs: Iterable[Kv], revision: int) -> list[bytes]:
        """Becomes exactly the listed keys; returns the keys swept (held before, not listed)."""
        new = {kv.key: kv for kv in kvs}
        swept = sorted(set(self.kvs) - set(new))
        self.kvs, self.revision = new, revision
        return swept

    def apply(self, events: Iterable[Any]) -> bool:
        """etcdserverpb.Event messages in order; True if the copy changed."""
        changed = False
        for event in events:
            kv = event.kv
            if kv.mod_revision < self.revision:  # one transaction's events share a revision
                log.error("fleet watch: an event older than the copy, ignored",
                          extra={"event_revision": kv.mod_revision, "revision": self.revision})
                continue
            if event.type == EVENT_DELETE:
                changed |= self.kvs.pop(bytes(kv.key), None) is not None
            else:
                self.kvs[bytes(kv.key)] = Kv.of(kv)
                changed = True
            self.revision = kv.mod_revision
        return changed

    def get(self, key: bytes) -> Kv | None:
        return self.kvs.get(key)

    def view(self) -> Mapping[bytes, Kv]:
        return dict(self.kvs)


@dataclass
class WatchStats:
    lists: int = 0        # full lists (the first, and after each compaction)
    compactions: int = 0  # resumes refused because the revision was compacted
    reconnects: int = 0   # watch streams opened again after one broke
    connected: bool = False
    last_error: str | None = None


# on_sync(copy, revision, why): why is "list" or "events"; called from the watcher's thread
SyncCallback = Callable[[Mapping[bytes, Kv], int, str], None]
# on_state(connected, error): the stream is up (None) or down (the error)
StateCallback = Callable[[bool, str | None], None]


class Watcher:
    def __init__(self, client: EtcdClient, key: bytes, range_end: bytes, on_sync: SyncCallback,
                 on_state: StateCallback | None = None, backoff: Backoff | None = None) -> None:
        self.client, self.key, self.range_end = client, key, range_end
        self.on_sync, self.on_state = on_sync, on_state or (lambda up, err: None)
        self.backoff = backoff or Backoff()
        self.mirror = Mirror()
        self.stats = WatchStats()
        self._stop = threading.Event()
        self._stream: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="fleet-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                self._watch()
            except Compacted as exc:
                self.stats.compactions += 1
                log.warning("fleet watch: revision compacted, listing everything again",
                            extra={"resume_from": self.mirror.revision + 1, "error": str(exc)})
                need_list = True
            except EtcdError as exc:
                self._down(str(exc))
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive a bug in a callback
                log.exception("fleet watch: unexpected error")
                self._down(f"internal error: {exc}")

    def _down(self, error: str) -> None:
        was_up = self.stats.connected
        self.stats.connected, self.stats.last_error = False, error
        if was_up or self.stats.reconnects == 0:
            log.warning("fleet watch: etcd lost", extra={"error": error})
        self.on_state(False, error)
        self._stop.wait(self.backoff.next())
        self.stats.reconnects += 1

    def _list(self) -> None:
        kvs, revision = self.client.range(self.key, self.range_end)
        swept = self.mirror.reset(kvs, revision)
        self.stats.lists += 1
        log.info("fleet watch: listed", extra={"keys": len(kvs), "revision": revision,
                                               "swept": [k.decode(errors="replace") for k in swept]})
        self.on_sync(self.mirror.view(), revision, "list")

    def _watch(self) -> None:
        self._stream = stream = self.client.watch(self.key, self.range_end, self.mirror.revision + 1)
        if self._stop.is_set():
            stream.cancel()
        for answer in stream:
            if answer.canceled:
                if answer.compact_revision:
                    raise Compacted(answer.compact_revision)
                raise EtcdError(f"etcd {stream.endpoint}: watch cancelled: {answer.cancel_reason or '?'}")
            if answer.created:
                self.backoff.reset()
                self.stats.connected, self.stats.last_error = True, None
                self.on_state(True, None)
            if answer.events and self.mirror.apply(answer.events):
                self.on_sync(self.mirror.view(), self.mirror.revision, "events")
