"""A node's status key: the latest NodeStatus written under a lease this node keeps alive.

    writer = StatusWriter(client, layout.status("edge-1"), ttl=10)
    writer.start()
    writer.publish(status)   # written at once (or as soon as etcd answers again)
    writer.stop()            # revokes the lease: the key vanishes at once

The lease is refreshed every ttl/3 seconds over one keepalive stream. A node that dies (or
stays cut off from etcd) stops refreshing it, etcd deletes the key when the TTL runs out, and
the node drops out of `tidegate fleet status`. When etcd is back the node grants a new lease
and writes its status again: a partition shows as a gap in the key's history, never as a
stale report.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from control.fleet.etcd import EtcdClient, EtcdError, EtcdRefused, EtcdUnavailable, Stream, epb
from control.fleet.keys import NodeStatus
from control.fleet.watcher import Backoff

log = logging.getLogger(__name__)

REVOKE_TIMEOUT_S = 2.0


class StatusWriter:
    def __init__(self, client: EtcdClient, key: bytes, ttl: int, backoff: Backoff | None = None) -> None:
        self.client, self.key, self.ttl = client, key, ttl
        self.backoff = backoff or Backoff()
        self.lease = 0
        self.granted_ttl = ttl
        self.online = False   # the last write or refresh reached etcd
        self.written = 0      # status writes that reached etcd
        self._latest: NodeStatus | None = None
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._stream: Stream | None = None
        self._answers: Any = None
        self._thread: threading.Thread | None = None

    def publish(self, status: NodeStatus) -> None:
        self._latest = status
        self._dirty.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fleet-status", daemon=True)
        self._thread.start()

    def stop(self, revoke: bool = True) -> None:
        self._stop.set()
        self._dirty.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()  # a refresh waiting on a cut connection returns now
        if self._thread is not None:
            self._thread.join(5.0)
        self._close_stream()
        if revoke and self.lease and self.online:
            try:  # best effort: if etcd is away, the TTL removes the key
                self.client.revoke(self.lease, timeout=REVOKE_TIMEOUT_S)
            except EtcdError as exc:
                log.info("fleet status: lease not revoked", extra={"error": str(exc)})

    def _run(self) -> None:
        next_refresh = 0.0
        while not self._stop.is_set():
            try:
                if not self.lease:
                    self._grant()
                    next_refresh = time.monotonic() + self.granted_ttl / 3
                if self._dirty.is_set():
                    self._dirty.clear()
                    self._write()
                if time.monotonic() >= next_refresh:
                    self._refresh()
                    next_refresh = time.monotonic() + self.granted_ttl / 3
                self.online = True
                self.backoff.reset()
                self._dirty.wait(max(0.0, next_refresh - time.monotonic()))
            except EtcdError as exc:
                if self.online:
                    log.warning("fleet status: etcd lost", extra={"error": str(exc)})
                self.online = False
                self._close_stream()
                self._dirty.set()  # write again once back
                self._stop.wait(self.backoff.next())

    def _grant(self) -> None:
        self._close_stream()
        self.lease, self.granted_ttl = self.client.grant(self.ttl)
        log.info("fleet status: lease granted", extra={"lease": self.lease, "ttl": self.granted_ttl})
        self._dirty.set()

    def _write(self) -> None:
        status = self._latest
        if status is None:
            return
        try:
            self.client.put(self.key, status.encode(), lease=self.lease)
        except EtcdRefused as exc:
            if "lease not found" in str(exc):  # expired while we were away
                self.lease = 0
            raise
        self.written += 1

    def _refresh(self) -> None:
        if self._stream is None:
            self._stream = self.client.keepalive(self.lease)
            self._answers = iter(self._stream)
        else:
            self._stream.send(epb.LeaseKeepAliveRequest(ID=self.lease))
        answer = next(self._answers, None)
        if answer is None:
            raise EtcdUnavailable(f"etcd {self.client.endpoint}: lease keepalive: the stream ended")
        if answer.TTL <= 0:  # expired: etcd has deleted the key already
            log.warning("fleet status: lease expired, granting a new one", extra={"lease": self.lease})
            self.lease = 0
            self._close_stream()

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
        self._stream, self._answers = None, None
