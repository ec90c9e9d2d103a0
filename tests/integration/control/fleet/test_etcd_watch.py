"""The etcd client, watcher and status writer against a real etcd (Debian's etcd-server).

A TcpProxy between client and etcd stands in for the network: cutting it is a partition
during which other clients (this test, straight to etcd) keep writing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping

import pytest

from control.fleet.etcd import Compacted, EtcdClient, EtcdUnavailable, Kv, epb, prefix_end
from control.fleet.keys import NodeStatus
from control.fleet.status import StatusWriter
from control.fleet.watcher import Backoff, Watcher
from testbed.etcd import EtcdCluster, free_port
from testbed.netns import unique_name
from testbed.tcp_proxy import TcpProxy

WAIT = 15.0


def wait_for(what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Recorder:
    """The watcher's callbacks: every copy it handed over, and its connection states."""

    def __init__(self) -> None:
        self.syncs: list[tuple[dict[bytes, bytes], int, str]] = []
        self.states: list[bool] = []
        self.lock = threading.Lock()

    def on_sync(self, view: Mapping[bytes, Kv], revision: int, why: str) -> None:
        with self.lock:
            self.syncs.append(({k: v.value for k, v in view.items()}, revision, why))

    def on_state(self, up: bool, error: str | None) -> None:
        self.states.append(up)

    @property
    def copy(self) -> dict[bytes, bytes]:
        with self.lock:
            return self.syncs[-1][0] if self.syncs else {}


@pytest.fixture
def prefix() -> bytes:
    return f"/test-{unique_name('w')}/".encode()


@pytest.fixture
def direct(etcd: EtcdCluster) -> Iterator[EtcdClient]:
    client = EtcdClient(etcd.endpoints())
    yield client
    client.close()


@pytest.fixture
def proxy(etcd: EtcdCluster) -> Iterator[TcpProxy]:
    host, port = etcd.members[0].endpoint().rsplit(":", 1)
    with TcpProxy(host, int(port)) as p:
        yield p


def watching(proxy: TcpProxy, prefix: bytes, rec: Recorder) -> Watcher:
    client = EtcdClient([proxy.endpoint], timeout=2.0)
    watcher = Watcher(client, prefix, prefix_end(prefix), rec.on_sync, rec.on_state,
                      backoff=Backoff(0.05, 0.5))
    watcher.start()
    return watcher


def truth(direct: EtcdClient, prefix: bytes) -> dict[bytes, bytes]:
    kvs, _ = direct.range_prefix(prefix)
    return {kv.key: kv.value for kv in kvs}


def test_list_then_events_in_order(direct: EtcdClient, proxy: TcpProxy, prefix: bytes) -> None:
    direct.put(prefix + b"a", b"1")
    rec = Recorder()
    watcher = watching(proxy, prefix, rec)
    try:
        wait_for("the first list", lambda: bool(rec.syncs))
        assert rec.syncs[0][0] == {prefix + b"a": b"1"} and rec.syncs[0][2] == "list"
        direct.put(prefix + b"b", b"2")
        direct.put(prefix + b"a", b"3")
        direct.delete(prefix + b"b")
        wait_for("three events", lambda: rec.copy == {prefix + b"a": b"3"}, timeout=5.0)
        assert [why for _, _, why in rec.syncs][1:] == ["events"] * (len(rec.syncs) - 1)
        revisions = [r for _, r, _ in rec.syncs]  # etcd may send several events in one answer
        assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
        assert watcher.stats.lists == 1
    finally:
        watcher.stop()


def test_one_transaction_moves_every_key(direct: EtcdClient, proxy: TcpProxy, prefix: bytes) -> None:
    """A transaction's events share one revision: none of them may be taken as already seen."""
    rec = Recorder()
    watcher = watching(proxy, prefix, rec)
    try:
        wait_for("the first list", lambda: bool(rec.syncs))
        keys = [prefix + f"n{i}".encode() for i in range(5)]
        ops = [epb.RequestOp(request_put=epb.PutRequest(key=k, value=b"web")) for k in keys]
        assert direct.txn(epb.TxnRequest(success=ops)).succeeded
        wait_for("all five keys", lambda: rec.copy == dict.fromkeys(keys, b"web"))
    finally:
        watcher.stop()


def test_resume_after_a_cut_replays_what_was_missed(direct: EtcdClient, proxy: TcpProxy,
                                                    prefix: bytes) -> None:
    """Resumed from the last revision seen: every change made while cut off arrives, without a
    second list (the watcher resumes, it does not start over)."""
    direct.put(prefix + b"keep", b"1")
    direct.put(prefix + b"gone", b"1")
    rec = Recorder()
    watcher = watching(proxy, prefix, rec)
    try:
        wait_for("connected", lambda: watcher.stats.connected)
        proxy.cut()
        wait_for("the cut noticed", lambda: not watcher.stats.connected)
        direct.put(prefix + b"keep", b"2")
        direct.delete(prefix + b"gone")
        direct.put(prefix + b"new", b"1")
        proxy.mend()
        wait_for("the copy caught up", lambda: rec.copy == truth(direct, prefix))
        assert watcher.stats.lists == 1 and watcher.stats.compactions == 0
        assert watcher.stats.reconnects >= 1
        assert rec.copy == {prefix + b"keep": b"2", prefix + b"new": b"1"}
    finally:
        watcher.stop()


def test_compacted_resume_lists_again_and_sweeps(etcd: EtcdCluster, direct: EtcdClient, proxy: TcpProxy,
                                                 prefix: bytes) -> None:
    """Cut off across a compaction: the resume is refused, the watcher lists again, and what
    was deleted meanwhile (whose delete event is gone with the history) does not survive."""
    for name in (b"a", b"b", b"c"):
        direct.put(prefix + name, b"1")
    rec = Recorder()
    watcher = watching(proxy, prefix, rec)
    try:
        wait_for("connected", lambda: watcher.stats.connected)
        proxy.cut()
        wait_for("the cut noticed", lambda: not watcher.stats.connected)
        direct.delete(prefix + b"b")
        direct.put(prefix + b"c", b"2")
        direct.put(prefix + b"d", b"1")
        etcd.compact()
        proxy.mend()
        wait_for("the copy caught up", lambda: rec.copy == truth(direct, prefix))
        assert watcher.stats.compactions == 1 and watcher.stats.lists == 2
        assert rec.copy == {prefix + b"a": b"1", prefix + b"c": b"2", prefix + b"d": b"1"}
        assert rec.syncs[-1][2] == "list"
    finally:
        watcher.stop()


def test_compacted_watch_is_an_error_not_a_silent_restart(etcd: EtcdCluster, direct: EtcdClient,
                                                          prefix: bytes) -> None:
    old = direct.put(prefix + b"x", b"1")
    direct.put(prefix + b"x", b"2")
    etcd.compact()
    stream = direct.watch(prefix, prefix_end(prefix), old)
    with pytest.raises(Compacted):
        for answer in stream:
            if answer.canceled and answer.compact_revision:
                raise Compacted(answer.compact_revision)
            assert not answer.events, "events from a compacted revision"
    stream.cancel()


def test_unreachable_endpoint_fails_over_to_the_next(etcd: EtcdCluster, prefix: bytes) -> None:
    dead = f"127.0.0.1:{free_port()}"  # bound and closed again: nothing listens there
    client = EtcdClient([dead, etcd.endpoints()[0]], timeout=2.0)
    try:
        _, revision = client.range_prefix(prefix)  # a read: retried on the next endpoint at once
        assert revision > 0 and client.endpoint == etcd.endpoints()[0]
    finally:
        client.close()
    writer = EtcdClient([dead, etcd.endpoints()[0]], timeout=2.0)
    try:  # a write that found no connection was never sent: it goes to the next endpoint too
        assert writer.put(prefix + b"w", b"1") > 0 and writer.get(prefix + b"w") is not None
    finally:
        writer.close()
    lone = EtcdClient([dead], timeout=1.0)
    with pytest.raises(EtcdUnavailable, match=dead):
        lone.range_prefix(prefix)
    lone.close()


def _status(node: str) -> NodeStatus:
    return NodeStatus(node=node, policy="web", revision=7, assigned="web", generation=3, health="ok",
                      time=time.time())


def test_status_key_lives_with_its_lease(direct: EtcdClient, prefix: bytes) -> None:
    """Written at once, kept while refreshed, gone when the writer stops refreshing (a dead
    node), gone at once when it stops cleanly (revoked)."""
    key = prefix + b"status/n1"
    writer = StatusWriter(EtcdClient(direct.endpoints), key, ttl=2)
    writer.start()
    writer.publish(_status("n1"))
    wait_for("the status key", lambda: direct.get(key) is not None)
    assert NodeStatus.decode(direct.get(key).value).revision == 7  # type: ignore[union-attr]
    time.sleep(3.5)  # past the TTL: only the keepalives keep it
    assert direct.get(key) is not None
    writer.stop(revoke=False)  # as if the node died: no more keepalives
    wait_for("the key to expire", lambda: direct.get(key) is None, timeout=10.0)

    writer = StatusWriter(EtcdClient(direct.endpoints), key, ttl=30)
    writer.start()
    writer.publish(_status("n1"))
    wait_for("the status key", lambda: direct.get(key) is not None)
    writer.stop(revoke=True)
    assert direct.get(key) is None


def test_status_written_again_after_the_lease_expired(direct: EtcdClient, proxy: TcpProxy,
                                                      prefix: bytes) -> None:
    """Cut off for longer than the TTL: etcd drops the key; once back the writer grants a new
    lease and writes the latest status."""
    key = prefix + b"status/n2"
    writer = StatusWriter(EtcdClient([proxy.endpoint], timeout=1.0), key, ttl=2, backoff=Backoff(0.05, 0.5))
    writer.start()
    try:
        writer.publish(_status("n2"))
        wait_for("the status key", lambda: direct.get(key) is not None)
        first_lease = direct.get(key).lease  # type: ignore[union-attr]
        proxy.cut()
        wait_for("the key to expire", lambda: direct.get(key) is None, timeout=15.0)
        writer.publish(_status("n2"))
        proxy.mend()
        wait_for("the key back", lambda: direct.get(key) is not None, timeout=15.0)
        assert direct.get(key).lease != first_lease  # type: ignore[union-attr]
    finally:
        writer.stop()
