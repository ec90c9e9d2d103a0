"""The streaming servicers (EventService, TraceService) and `tidegate events/top/trace`, over a real
gRPC server on a Unix socket, with fakes for the kernel: no root, no BPF."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from control.apply.controller import Controller
from control.apply.reconcile import Stats
from control.apply.state import StateStore
from control.cli import client, main
from control.observe.fanout import Fanout
from control.observe.tracing import Backend, TraceManager
from control.policy.models import DesiredState
from control.rpc import stream_service
from control.rpc.api import pb2, pb2_grpc
from control.rpc.service import add_services
from dataplane.kernel.maps import Counter
from tests.unit.control.events_fixture import Ev
from tests.unit.control.observe.test_tracing import Spec

REPO = Path(__file__).resolve().parents[4]
WAIT = 10.0




class Tracer:
    """Shaped as dataplane.trace.tracer.Tracer: one TraceEvent per poll."""

    live: list[Tracer] = []

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.stopped = threading.Event()
        self.expired = False
        Tracer.live.append(self)

    @staticmethod
    def capabilities() -> dict[str, bool]:
        return {"tracepoint:skb:kfree_skb": True, "fentry:ip_rcv": False}

    def start(self) -> list[str]:
        return ["kfree_skb"]

    def poll(self, timeout_ms: int) -> list[Any]:
        time.sleep(min(timeout_ms, 50) / 1000)
        return [SimpleNamespace(ts_ns=5, hook="kfree_skb", ifindex=2, ifname="eth0", family=2, src="10.0.0.2",
                                dst="10.0.1.1", proto=17, sport=5000, dport=9, detail="kfree_skb",
                                drop_reason="NETFILTER_DROP")]

    def stop(self) -> None:
        self.stopped.set()


class Pump:
    def kernel_counts(self, names: Any = None) -> dict[str, dict[str, int]]:
        counts = {"eth0": {"sent": 10, "rate_limited": 3, "ringbuf_full": 1}}
        return {n: c for n, c in counts.items() if names is None or n in names}

    def read_counts(self) -> dict[str, int]:
        return {"eth0": 9}


class Reconciler:
    def __init__(self) -> None:
        self.applied = DesiredState()
        self.planes: dict[str, Any] = {}
        self.mismatches: dict[str, str] = {}
        self.rule_packets = 0

    def index_ahead(self) -> None: ...

    def restore(self, state: DesiredState) -> None:
        self.applied = state

    def stats(self, names: list[str] | None = None) -> Stats:
        self.rule_packets += 100
        c = Counter(self.rule_packets, self.rule_packets * 60)
        return Stats(rules={42: c}, reasons={"DROP_DENIED": c}, interfaces={"eth0": c})


@dataclass
class Daemon:
    sock: str
    channel: grpc.Channel
    fanout: Fanout
    traces: TraceManager
    stopping: threading.Event

    def watchers(self) -> int:
        return self.fanout.count("watch")

    def until(self, check: Any, what: str) -> None:
        deadline = time.monotonic() + WAIT
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(f"not within {WAIT:g} s: {what}")
            time.sleep(0.02)

    def cli(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "control.cli", "-s", self.sock, *args], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    monkeypatch.setattr(stream_service, "REPORT_INTERVAL_S", 0.1)
    Tracer.live = []
    directory = tempfile.mkdtemp(prefix="tgstream")
    sock = f"{directory}/t.sock"
    controller = Controller(StateStore(Path(directory) / "state"), Reconciler())  # type: ignore[arg-type]
    controller.start()
    fanout, pump, stopping = Fanout(), Pump(), threading.Event()
    traces = TraceManager(Backend(Spec, Tracer), max_active=1)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    add_services(server, controller, lambda names: stream_service.delivery(fanout, pump, names))  # type: ignore[arg-type]
    pb2_grpc.add_EventServiceServicer_to_server(
        stream_service.EventService(fanout, pump, stopping, max_watchers=2, capacity=2), server)  # type: ignore[arg-type]
    pb2_grpc.add_TraceServiceServicer_to_server(stream_service.TraceService(traces), server)
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    channel = grpc.insecure_channel(f"unix:{sock}")
    try:
        yield Daemon(sock, channel, fanout, traces, stopping)
    finally:
        channel.close()
        traces.stop_all()
        fanout.close()
        server.stop(0).wait()
        traces.join_all()
        shutil.rmtree(directory, ignore_errors=True)


def events_stub(d: Daemon) -> Any:
    return pb2_grpc.EventServiceStub(d.channel)


def trace_stub(d: Daemon) -> Any:
    return pb2_grpc.TraceServiceStub(d.channel)


# --- WatchEvents ------------------------------------------------------------------------------------

def test_watch_starts_with_a_loss_report_then_streams_matching_events(daemon: Daemon) -> None:
    stream = events_stub(daemon).WatchEvents(pb2.WatchEventsRequest(rule_ids=[42]), timeout=WAIT)
    first = next(stream)
    assert first.loss == pb2.EventLoss()  # nothing lost yet: counted from the start of the stream
    daemon.fanout.publish("eth0", Ev(rule_id=7))  # filtered out
    daemon.fanout.publish("eth0", Ev(vni=100))
    msg = next(stream)
    assert msg.event.rule_id == 42 and msg.event.interface == "eth0" and msg.event.vni == 100
    stream.cancel()
    daemon.until(lambda: daemon.watchers() == 0, "the cancelled stream's subscription went")


def test_a_slow_stream_is_told_what_it_lost(daemon: Daemon) -> None:
    stream = events_stub(daemon).WatchEvents(pb2.WatchEventsRequest(), timeout=WAIT)
    next(stream)
    (sub,) = daemon.fanout._subs
    with sub._cond:  # the stream's thread cannot take anything while the queue (2) overflows
        for rule in range(1, 11):
            daemon.fanout.publish("eth0", Ev(rule_id=rule))
    got = [next(stream) for _ in range(3)]
    stream.cancel()
    assert [m.event.rule_id for m in got[:2]] == [1, 2]
    assert got[2].loss.dropped == 8
    stats = pb2_grpc.StatsServiceStub(daemon.channel).GetStats(pb2.GetStatsRequest(), timeout=WAIT)
    assert stats.policy_events.watch_dropped == 8 and stats.policy_events.sent == 10
    assert stats.policy_events.rate_limited == 3 and stats.policy_events.read == 9


def test_daemon_stop_ends_the_stream_with_ok(daemon: Daemon) -> None:
    stream = events_stub(daemon).WatchEvents(pb2.WatchEventsRequest(), timeout=WAIT)
    next(stream)
    daemon.fanout.close(kind="watch")
    assert list(stream) == []
    assert stream.code() == grpc.StatusCode.OK


@pytest.mark.parametrize(("request_", "code", "details"), [
    (pb2.WatchEventsRequest(src="10.0.0.1/8"), grpc.StatusCode.INVALID_ARGUMENT, "src: "),
    (pb2.WatchEventsRequest(reasons=[0]), grpc.StatusCode.INVALID_ARGUMENT, "reasons[0]: "),
])
def test_watch_refusals(daemon: Daemon, request_: Any, code: grpc.StatusCode, details: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        next(events_stub(daemon).WatchEvents(request_, timeout=WAIT))
    assert info.value.code() == code and info.value.details().startswith(details)


def test_too_many_streams_is_resource_exhausted(daemon: Daemon) -> None:
    open_ = [events_stub(daemon).WatchEvents(pb2.WatchEventsRequest(), timeout=WAIT) for _ in range(2)]
    for s in open_:
        next(s)
    with pytest.raises(grpc.RpcError) as info:
        next(events_stub(daemon).WatchEvents(pb2.WatchEventsRequest(), timeout=WAIT))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for s in open_:
        s.cancel()


# --- Trace ------------------------------------------------------------------------------------------

def test_trace_streams_started_events_ended(daemon: Daemon) -> None:
    messages = list(trace_stub(daemon).Trace(pb2.TraceRequest(duration_s=0.3), timeout=WAIT))
    kinds = [m.WhichOneof("kind") for m in messages]
    assert kinds[0] == "started" and kinds[-1] == "ended" and set(kinds[1:-1]) == {"event"}
    started = messages[0].started
    assert list(started.hooks) == ["kfree_skb"] and started.duration_s == 0.3 and started.max_events == 10_000
    assert {c.hook: c.supported for c in started.capabilities} == Tracer.capabilities()
    event = messages[1].event
    assert (event.hook, event.interface, event.drop_reason, event.protocol) == ("kfree_skb", "eth0",
                                                                               "NETFILTER_DROP", 17)
    ended = messages[-1].ended
    assert ended.reason == pb2.TRACE_END_REASON_TIME_LIMIT and ended.events == len(messages) - 2
    assert Tracer.live[0].stopped.is_set()


def test_a_cancelled_trace_unloads_its_tracer(daemon: Daemon) -> None:
    stream = trace_stub(daemon).Trace(pb2.TraceRequest(duration_s=60), timeout=WAIT)
    assert next(stream).WhichOneof("kind") == "started"
    caps = trace_stub(daemon).TraceCapabilities(pb2.TraceCapabilitiesRequest(), timeout=WAIT)
    assert caps.active_traces == 1
    with pytest.raises(grpc.RpcError) as busy:  # max_active=1
        next(trace_stub(daemon).Trace(pb2.TraceRequest(), timeout=WAIT))
    assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    stream.cancel()
    assert Tracer.live[0].stopped.wait(WAIT)
    daemon.until(lambda: daemon.traces.active() == 0, "the trace was let go")


def test_trace_refusals(daemon: Daemon) -> None:
    with pytest.raises(grpc.RpcError) as info:
        next(trace_stub(daemon).Trace(pb2.TraceRequest(port=70000), timeout=WAIT))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and info.value.details().startswith("port: ")
    daemon.traces.backend = None
    with pytest.raises(grpc.RpcError) as info:
        next(trace_stub(daemon).Trace(pb2.TraceRequest(), timeout=WAIT))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "dataplane/trace/tracer.py" in info.value.details()


def test_daemon_stop_ends_a_trace_saying_so(daemon: Daemon) -> None:
    stream = trace_stub(daemon).Trace(pb2.TraceRequest(duration_s=60), timeout=WAIT)
    next(stream)
    daemon.traces.stop_all()
    last = list(stream)[-1]
    assert last.ended.reason == pb2.TRACE_END_REASON_DAEMON_STOPPING


# --- the CLI ----------------------------------------------------------------------------------------

def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def publish_when_watched(daemon: Daemon, *events: Ev) -> threading.Thread:
    def go() -> None:
        daemon.until(lambda: daemon.watchers() == 1, "the CLI subscribed")
        for e in events:
            daemon.fanout.publish("eth0", e)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_cli_events_json_and_text(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    publish_when_watched(daemon, Ev(rule_id=7), Ev())
    code, out, err = run(capsys, "-s", daemon.sock, "-j", "events", "--rule", "42", "--count", "1")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["type"] for line in lines] == ["loss", "event"]
    assert lines[1]["rule_id"] == 42 and lines[1]["reason"] == "DROP_DENIED" and lines[1]["src"] == "10.0.0.2"

    daemon.until(lambda: daemon.watchers() == 0, "the first CLI let go")
    publish_when_watched(daemon, Ev())
    code, out, err = run(capsys, "-s", daemon.sock, "events", "--reason", "drop_denied",
                         "--src", "10.0.0.0/24", "--count", "1")
    assert code == 0 and err == ""
    assert out.strip().endswith("eth0 DROP_DENIED rule 42 deny udp 10.0.0.2:5000 -> 10.0.1.1:9 len 60")


def test_cli_events_exits_3_when_the_daemon_ends_the_stream(daemon: Daemon,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    def stop() -> None:
        daemon.until(lambda: daemon.watchers() == 1, "the CLI subscribed")
        daemon.fanout.close(kind="watch")  # what a stopping daemon does

    threading.Thread(target=stop, daemon=True).start()
    code, out, err = run(capsys, "-s", daemon.sock, "events")
    assert code == client.EXIT_UNREACHABLE and out == ""
    assert err == "tidegate: UNAVAILABLE: the daemon ended the event stream: it is stopping\n"


def test_cli_events_usage_and_refusals(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "-s", daemon.sock, "events", "--reason", "denied")
    assert code == client.EXIT_USAGE and "is not a verdict reason: one of PASS_NOT_IP" in err
    code, out, err = run(capsys, "-s", daemon.sock, "events", "--dst", "10.0.0.1/8")
    assert code == client.EXIT_REFUSED and out == "" and err.startswith("tidegate: INVALID_ARGUMENT: dst: ")


def test_cli_events_ctrl_c_exits_0(daemon: Daemon) -> None:
    proc = daemon.cli("events")
    daemon.until(lambda: daemon.watchers() == 1, "the CLI subscribed")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0 and out == "" and err == ""
    daemon.until(lambda: daemon.watchers() == 0, "the daemon let go of the stream")


def test_cli_trace_ctrl_c_unloads_the_tracer(daemon: Daemon) -> None:
    proc = daemon.cli("trace", "--duration", "60")
    daemon.until(lambda: daemon.traces.active() == 1, "the trace started")
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert err.startswith("tracing at kfree_skb for up to 60 s")
    assert "kfree_skb eth0 udp 10.0.0.2:5000 -> 10.0.1.1:9 kfree_skb drop: NETFILTER_DROP" in out
    assert Tracer.live[0].stopped.wait(WAIT)
    daemon.until(lambda: daemon.traces.active() == 0, "the daemon unloaded the tracer")


def test_cli_trace_until_its_time_limit(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "-s", daemon.sock, "trace", "--host", "10.0.0.2", "--protocol", "udp",
                         "--port", "9", "--duration", "0.3")
    assert code == 0
    assert err.splitlines()[-1].startswith("trace ended: time limit reached; ")
    assert Tracer.live[0].spec == Spec(host="10.0.0.2", protocol="udp", port=9, duration_s=0.3)
    code, out, _ = run(capsys, "-s", daemon.sock, "-j", "trace", "--max-events", "2")
    assert code == 0
    assert [json.loads(line)["type"] for line in out.splitlines()] == ["started", "event", "event", "ended"]
    assert json.loads(out.splitlines()[-1])["reason"] == "max_events"
    code, out, _ = run(capsys, "-s", daemon.sock, "trace", "--capabilities")
    assert code == 0 and "tracepoint:skb:kfree_skb" in out and "active traces: 0" in out


def test_cli_top_once_and_count(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "-s", daemon.sock, "top", "--once", "--interval", "0.1")
    assert code == 0, err
    assert out.startswith("tidegate top  generation 0  every 0.1") and "\x1b[" not in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["DROP_DENIED"][3] == "200" and rows["42"][3] == "200"  # totals of the second sample
    assert rows["42"][1] != "0"  # 100 packets in about 0.1 s (how long exactly is the machine's to say)
    code, out, _ = run(capsys, "-s", daemon.sock, "-j", "top", "--count", "2", "--interval", "0.1")
    frames = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(frames) == 2
    rule = [f["acl_rules"]["42"] for f in frames]
    assert rule[1]["packets"] - rule[0]["packets"] == 100 and rule[1]["pps"] > 0
