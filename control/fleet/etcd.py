"""A small synchronous etcd v3 client: grpcio over the project's own stubs of etcd's API.

    client = EtcdClient(["10.0.0.1:2379", "10.0.0.2:2379"], tls=EtcdTls(ca=..., cert=..., key=...))
    kvs, revision = client.range_prefix(b"/tidegate/policies/")
    stream = client.watch(b"/tidegate/policies/", prefix_end(b"/tidegate/policies/"), revision + 1)
    for answer in stream: ...            # etcdserverpb.WatchResponse; stream.cancel() ends it

Why not a client library: `etcd3` 0.12 no longer imports under protobuf 7, `aetcd` is asyncio
only (the daemon is threaded), `etcd-sdk-python` is a 0.0.x fork of etcd3 with no endpoint
failover, and `etcd3aio` restarts a compacted watch silently. What fleet mode needs from etcd is
five calls and two streams; proto/etcd/v3/etcd.proto describes them and control/protogen.py
generates them with the project's own grpc_tools, so they always match its grpcio/protobuf.
That also puts the parts that decide correctness here, in view: compaction is an error
(Compacted), never a silent restart; streams carry etcd's `hasleader` metadata so a member cut
off from its cluster's leader ends the stream (etcd 3.4 would otherwise keep a stale one open);
HTTP/2 keepalive pings find a connection that a partition left hanging.

Endpoints are tried in turn: a call that cannot reach one (UNAVAILABLE, or no answer within
the timeout) moves the client to the next. A read is then retried there at once; so is a write
that found no connection to go out on, but not one that may have reached etcd (its outcome is
unknown: the caller decides).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from control.fleet.keys import parse_endpoint
from control.rpc.protogen import ensure_generated

ensure_generated()

from control.rpc.gen import etcd_pb2 as epb  # noqa: E402
from control.rpc.gen import etcd_pb2_grpc as epb_grpc  # noqa: E402

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0
MAX_MESSAGE_BYTES = 256 << 20  # a watch answer carries whole policies
# etcd refuses pings more often than its --grpc-keepalive-min-time (5 s) with GOAWAY, and pings
# on a connection without a call: ping every 6 s while a call (a watch) is open.
KEEPALIVE_MS = 6000
KEEPALIVE_TIMEOUT_MS = 5000
_COMPACTED = "required revision has been compacted"
# gRPC's words for a call that found no connection to send on
_NOT_SENT = ("failed to connect to all addresses", "Connection refused")
_BAD_TOKEN = ("invalid auth token", "user name is empty", "authentication failed, invalid user ID")


class EtcdError(Exception):
    """etcd could not be used: the message says which endpoint and what to do."""


class EtcdUnavailable(EtcdError):
    """No answer: nothing listens, the network is cut, TLS failed, or no leader."""


class EtcdRefused(EtcdError):
    """etcd answered with an error (permission, auth, request too large, ...)."""


class Compacted(EtcdError):
    """The revision asked for is older than etcd's compaction: list again."""

    def __init__(self, compact_revision: int, message: str = "") -> None:
        super().__init__(message or f"revision compacted (history starts at {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class EtcdTls:
    """PEM contents: the CA of etcd's certificate and this client's certificate and key."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None  # the name to expect in etcd's certificate, if not the host


@dataclass(frozen=True)
class Kv:
    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int = 0
    version: int = 0
    lease: int = 0

    @classmethod
    def of(cls, kv: Any) -> Kv:
        return cls(bytes(kv.key), bytes(kv.value), kv.mod_revision, kv.create_revision, kv.version, kv.lease)


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes [prefix, end) every key starting with `prefix`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"  # all keys from `prefix` on
    return stripped[:-1] + bytes([stripped[-1] + 1])


def describe(exc: grpc.RpcError) -> str:
    code = exc.code()  # type: ignore[attr-defined]
    return f"{code.name if code else 'UNKNOWN'}: {exc.details()}"  # type: ignore[attr-defined]


class EtcdClient:
    """Thread-safe: calls may come from several threads (a watch, a keepalive, status writes)."""

    def __init__(self, endpoints: Sequence[str], *, tls: EtcdTls | None = None, user: str | None = None,
                 password: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        parsed = [parse_endpoint(e) for e in endpoints]
        schemes = {https for _, https in parsed if https is not None}
        if tls is not None and False in schemes:
            raise ValueError("http:// endpoints with TLS settings: write https:// (or HOST:PORT)")
        self.secure = tls is not None or True in schemes
        self.endpoints = [target for target, _ in parsed]
        self.tls = tls or EtcdTls()
        self.user, self.password, self.timeout = user, password, timeout
        self._lock = threading.Lock()
        self._index = 0
        self._channel: grpc.Channel | None = None
        self._token: str | None = None

    # --- the connection -------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return self.endpoints[self._index]

    def _open(self) -> grpc.Channel:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
            # a dead endpoint is left for the next one, not retried here for minutes
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if not self.secure:
            return grpc.insecure_channel(self.endpoint, options=options)
        if self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        credentials = grpc.ssl_channel_credentials(root_certificates=self.tls.ca, private_key=self.tls.key,
                                                   certificate_chain=self.tls.cert)
        return grpc.secure_channel(self.endpoint, credentials, options=options)

    def channel(self) -> grpc.Channel:
        with self._lock:
            if self._channel is None:
                self._channel = self._open()
            return self._channel

    def failover(self, channel: grpc.Channel | None = None) -> None:
        """Leave the current endpoint for the next (unless another thread already has)."""
        with self._lock:
            if channel is not None and channel is not self._channel:
                return
            if self._channel is not None:
                self._channel.close()
            self._channel = None
            self._index = (self._index + 1) % len(self.endpoints)
            self._token = None

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = None

    def metadata(self, *, stream: bool = False) -> list[tuple[str, str]]:
        md = [("hasleader", "true")] if stream else []
        if self.user is not None:
            md.append(("token", self._authenticate()))
        return md

    def _authenticate(self) -> str:
        token = self._token
        if token is None:
            stub = epb_grpc.AuthStub(self.channel())
            request = epb.AuthenticateRequest(name=self.user or "", password=self.password or "")
            try:
                token = stub.Authenticate(request, timeout=self.timeout).token
            except grpc.RpcError as exc:
                raise self._error(exc, "authenticate") from None
            self._token = token
        return token

    # --- calls ----------------------------------------------------------------------------------
    def _error(self, exc: grpc.RpcError, what: str) -> EtcdError:
        code, details = exc.code(), exc.details() or ""  # type: ignore[attr-defined]
        where = f"etcd {self.endpoint}: {what}"
        if code == grpc.StatusCode.OUT_OF_RANGE and _COMPACTED in details:
            return Compacted(0, f"{where}: {details}")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            hint = (" (is etcd running there? With TLS: the CA, client certificate and key must be the "
                    "ones etcd trusts)") if self.secure else " (is etcd running there?)"
            return EtcdUnavailable(f"{where}: {code.name}: {details}{hint}")
        return EtcdRefused(f"{where}: {code.name}: {details}")

    def _call(self, what: str, fn: Callable[[grpc.Channel, list[tuple[str, str]]], T], *,
              retry: bool) -> T:
        """fn(channel, metadata); when the endpoint is UNAVAILABLE the next one is tried: for a
        read always, for a write only if it could not have been sent (no connection)."""
        for attempt in range(len(self.endpoints)):
            channel = self.channel()
            try:
                return fn(channel, self.metadata())
            except grpc.RpcError as exc:
                details = exc.details() or ""  # type: ignore[attr-defined]
                if self.user is not None and any(t in details for t in _BAD_TOKEN):
                    self._token = None  # expired (etcd's simple tokens last 5 minutes): once more
                    try:
                        return fn(channel, self.metadata())
                    except grpc.RpcError as again:
                        exc = again
                error = self._error(exc, what)
                if not isinstance(error, EtcdUnavailable):
                    raise error from None
                self.failover(channel)
                unsent = any(text in details for text in _NOT_SENT)
                if attempt == len(self.endpoints) - 1 or not (retry or unsent):
                    raise error from None
                log.info("etcd endpoint unavailable, trying the next", extra={"error": str(error)})
        raise AssertionError("unreachable")

    def range(self, key: bytes, range_end: bytes = b"", *, keys_only: bool = False,
              revision: int = 0) -> tuple[list[Kv], int]:
        """(key-values, the store's revision); linearizable."""
        request = epb.RangeRequest(key=key, range_end=range_end, keys_only=keys_only, revision=revision)

        def call(ch: grpc.Channel, md: list[tuple[str, str]]) -> Any:
            return epb_grpc.KVStub(ch).Range(request, timeout=self.timeout, metadata=md)

        answer = self._call("range", call, retry=True)
        return [Kv.of(kv) for kv in answer.kvs], answer.header.revision

    def range_prefix(self, prefix: bytes, *, keys_only: bool = False) -> tuple[list[Kv], int]:
        return self.range(prefix, prefix_end(prefix), keys_only=keys_only)

    def get(self, key: bytes) -> Kv | None:
        kvs, _ = self.range(key)
        return kvs[0] if kvs else None

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Returns the revision of the write."""
        request = epb.PutRequest(key=key, value=value, lease=lease)

        def call(ch: grpc.Channel, md: list[tuple[str, str]]) -> Any:
            return epb_grpc.KVStub(ch).Put(request, timeout=self.timeout, metadata=md)

        return int(self._call("put", call, retry=False).header.revision)

    def delete(self, key: bytes, range_end: bytes = b"") -> int:
        request = epb.DeleteRangeRequest(key=key, range_end=range_end)

        def call(ch: grpc.Channel, md: list[tuple[str, str]]) -> Any:
            return epb_grpc.KVStub(ch).DeleteRange(request, timeout=self.timeout, metadata=md)

        return int(self._call("delete", call, retry=False).header.revision)

    def txn(self, request: Any) -> Any:
        """An etcdserverpb.TxnRequest; returns the TxnResponse (succeeded, responses, header)."""
        def call(ch: grpc.Channel, md: list[tuple[str, str]]) -> Any:
            return epb_grpc.KVStub(ch).Txn(request, timeout=self.timeout, metadata=md)

        return self._call("transaction", call, retry=False)

    def compact(self, revision: int) -> None:
        request = epb.CompactionRequest(revision=revision, physical=True)

        def call(ch: grpc.Channel, md: list[tuple[str, str]]) -> Any:
            return epb_grpc.KVStub(ch).Compact(request, timeout=self.timeout, metadata=md)

        self._call("compact", call, retry=False)

    def status(self) -> Any:
        """The current endpoint's etcdserverpb.StatusResponse (version, leader, raft term)."""
        def call(ch: grpc.Channel, md: list[tuple[str, str]]) -> Any:
            return epb_grpc.MaintenanceStub(ch).Status(epb.StatusRequest(), timeout=self.timeout, metadata=md)

        return self._call("status", call, retry=True)

    def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (id, ttl granted)."""
        def call(ch: grpc.Channel, md: list[tuple[str, str]]) -> Any:
            return epb_grpc.LeaseStub(ch).LeaseGrant(epb.LeaseGrantRequest(TTL=ttl), timeout=self.timeout,
                                                     metadata=md)

        answer = self._call("lease grant", call, retry=False)
        if answer.error:
            raise EtcdRefused(f"etcd {self.endpoint}: lease grant: {answer.error}")
        return int(answer.ID), int(answer.TTL)

    def revoke(self, lease: int, timeout: float | None = None) -> None:
        def call(ch: grpc.Channel, md: list[tuple[str, str]]) -> Any:
            return epb_grpc.LeaseStub(ch).LeaseRevoke(epb.LeaseRevokeRequest(ID=lease),
                                                      timeout=timeout or self.timeout, metadata=md)

        self._call("lease revoke", call, retry=False)

    # --- streams --------------------------------------------------------------------------------
    def watch(self, key: bytes, range_end: bytes, start_revision: int) -> Stream:
        """A watch from `start_revision` (inclusive) on the current endpoint."""
        create = epb.WatchCreateRequest(key=key, range_end=range_end, start_revision=start_revision)
        return Stream(self, "watch", lambda ch: epb_grpc.WatchStub(ch).Watch,
                      epb.WatchRequest(create_request=create))

    def keepalive(self, lease: int) -> Stream:
        """A lease keepalive stream; `send()` one LeaseKeepAliveRequest per refresh."""
        return Stream(self, "lease keepalive", lambda ch: epb_grpc.LeaseStub(ch).LeaseKeepAlive,
                      epb.LeaseKeepAliveRequest(ID=lease))


class Stream:
    """A bidirectional stream: iterate it for answers; `send` more requests; `cancel` to end.

    Errors while iterating are raised as EtcdError (and an unreachable endpoint is left for the
    next); a stream that ends without error raises EtcdUnavailable (the server went away)."""

    def __init__(self, client: EtcdClient, what: str, method: Callable[[grpc.Channel], Any],
                 first: Any) -> None:
        self.client, self.what = client, what
        self.endpoint = client.endpoint
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._requests.put(first)
        self._channel = client.channel()
        try:
            md = client.metadata(stream=True)
        except EtcdUnavailable:
            client.failover(self._channel)
            raise
        self._call = method(self._channel)(iter(self._requests.get, None), metadata=md)
        self.cancelled = False

    def send(self, request: Any) -> None:
        self._requests.put(request)

    def cancel(self) -> None:
        self.cancelled = True
        self._requests.put(None)
        self._call.cancel()

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._call
        except grpc.RpcError as exc:
            if self.cancelled:
                return
            error = self.client._error(exc, self.what)
            if isinstance(error, EtcdUnavailable):
                self.client.failover(self._channel)
            raise error from None
        if not self.cancelled:
            raise EtcdUnavailable(f"etcd {self.endpoint}: {self.what}: the stream ended")
