"""Observability of a real daemon in a namespace: policy events (WatchEvents, `tidegate events`,
the JSON lines exporter), the Prometheus endpoint, `tidegate top`, and packet traces that leave
nothing loaded once their stream ends.

The daemon (testbed.daemon.DaemonProcess) manages one end of a veth pair; the other end sits in a
peer namespace whose UDP datagrams to port 9 a deny rule drops at XDP. The metrics endpoint
listens inside the daemon's namespace, so it is scraped from a thread switched into it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from control.rpc.api import pb2
from dataplane.kernel.build_settings import Capacities
from testbed.daemon import DaemonProcess
from testbed.netns import Link, linked_namespaces

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

IFNAME, PEER_IFNAME = "tgo0", "tgo1"
ADDR, PEER_ADDR = "10.66.0.1", "10.66.0.2"
DENY_RULE = 42
UDP_PORT = 9
METRICS = "127.0.0.1:9150"  # inside the daemon's own namespace: no clash with the host
WAIT = 10.0

needs_events = pytest.mark.skipif(importlib.util.find_spec("dataplane.kernel.events") is None,
                                  reason="dataplane/kernel/events.py (ring-buffer policy events) is not in "
                                         "this checkout yet")
needs_trace = pytest.mark.skipif(importlib.util.find_spec("dataplane.trace.tracer") is None,
                                 reason="dataplane/trace/tracer.py (packet tracers) is not in this checkout "
                                        "yet")


@pytest.fixture(scope="module")
def link() -> Iterator[Link]:
    with linked_namespaces("tgobs", IFNAME, PEER_IFNAME, ADDR, PEER_ADDR) as made:
        yield made


def policy(**settings: Any) -> pb2.Policy:
    """The module's policy: rule DENY_RULE drops UDP to UDP_PORT."""
    rule = pb2.AclRule(id=DENY_RULE, action=pb2.ACTION_DENY, metrics=True, match=pb2.Match(
        protocol=pb2.PROTOCOL_UDP, dport=pb2.PortRange(low=UDP_PORT, high=UDP_PORT)))
    return pb2.Policy(acl=[rule], settings=pb2.Settings(**settings))


@pytest.fixture(scope="module")
def daemon(link: Link, daemon_on_veth: Any,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    export = tmp_path_factory.mktemp("export") / "events.jsonl"
    with daemon_on_veth(link.ns, IFNAME, metrics_listen=METRICS, events_export=export) as d:
        d.policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=policy()))
        yield d


def send_denied(link: Link, count: int = 3) -> None:
    """UDP datagrams from the peer that rule DENY_RULE drops at XDP."""
    with link.peer.enter():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        for _ in range(count):
            s.sendto(b"tidegate", (ADDR, UDP_PORT))


def scrape(d: DaemonProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the endpoint, keyed by (name, labels)."""
    with d.ns.enter():  # the listener is in the daemon's namespace; this thread goes there
        with urllib.request.urlopen(f"http://{METRICS}/metrics", timeout=WAIT) as answer:
            assert answer.status == 200
            text = answer.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def until(check: Any, what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"not within {timeout:g} s: {what}")


# --- metrics and top (no events module needed) ------------------------------------------------------

def test_metrics_endpoint_counters_move_with_traffic(daemon: DaemonProcess, link: Link) -> None:
    before = scrape(daemon)
    assert sample(before, "tidegate_scrape_complete") == 1
    assert sample(before, "tidegate_last_apply_success") == 1
    assert sample(before, "tidegate_policy_generation") >= 2
    assert sample(before, "tidegate_interface_attached", interface=IFNAME) == 1
    assert sample(before, "tidegate_map_entries", interface=IFNAME, map="acl_rules") == 1
    assert sample(before, "tidegate_map_capacity", interface=IFNAME, map="acl_rules") > 1

    send_denied(link, 5)

    def moved() -> bool:
        after = scrape(daemon)
        rule = ("tidegate_acl_rule_packets_total", dict(interface=IFNAME, rule_id=str(DENY_RULE)))
        denied = ("tidegate_reason_packets_total",
                  dict(interface=IFNAME, reason="DROP_DENIED", verdict="drop"))
        return all(sample(after, n, **lb) - sample(before, n, **lb) >= 5 for n, lb in (rule, denied))

    until(moved, "the rule's and DROP_DENIED's packet counters grew by 5")


def test_map_entries_count_the_flows_conntrack_holds(daemon: DaemonProcess, link: Link) -> None:
    """conntrack is the programs' table, not the daemon's: its entries are their count of flows."""
    flows = 3
    daemon.policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=policy(allow_established=True)))
    try:
        before = scrape(daemon)
        assert sample(before, "tidegate_map_capacity", interface=IFNAME, map="conntrack") == \
            Capacities().conntrack
        with link.ns.enter():
            senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]
        for s in senders:  # a flow each: their own source ports
            with s:
                s.sendto(b"out", (PEER_ADDR, UDP_PORT))

        def grown() -> bool:
            entries = [sample(s, "tidegate_map_entries", interface=IFNAME, map="conntrack")
                       for s in (before, scrape(daemon))]
            return entries[1] - entries[0] >= flows

        until(grown, f"conntrack's entries grew by the {flows} flows sent out")
    finally:
        daemon.policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=policy()))


def test_top_once_prints_rates(daemon: DaemonProcess) -> None:
    done = daemon.cli("top", "--once", "--interval", "0.5")
    assert done.returncode == 0, done.stderr
    assert "tidegate top" in done.stdout and "REASON" in done.stdout and "RULE" in done.stdout
    assert IFNAME in done.stdout and "\x1b[" not in done.stdout  # not a terminal: no redraw codes
    frames = daemon.cli("top", "--count", "2", "--interval", "0.3", as_json=True)
    assert frames.returncode == 0, frames.stderr
    lines = [json.loads(line) for line in frames.stdout.splitlines()]
    assert [f["type"] for f in lines] == ["top", "top"]
    assert str(DENY_RULE) in lines[0]["acl_rules"] and IFNAME in lines[0]["interfaces"]


# --- policy events ----------------------------------------------------------------------------------

@needs_events
def test_a_denied_packet_shows_up_in_watch_events(daemon: DaemonProcess, link: Link) -> None:
    stream = daemon.events.WatchEvents(pb2.WatchEventsRequest(rule_ids=[DENY_RULE], interfaces=[IFNAME]),
                                       timeout=30)
    try:
        first = next(stream)
        assert first.WhichOneof("kind") == "loss"  # the subscription is in place
        send_denied(link)
        event = next(m.event for m in stream if m.WhichOneof("kind") == "event")
    finally:
        stream.cancel()
    assert (event.rule_id, event.reason, event.action) == (DENY_RULE, pb2.REASON_DROP_DENIED, pb2.ACTION_DENY)
    assert (event.src, event.dst, event.protocol, event.dport) == (PEER_ADDR, ADDR, 17, UDP_PORT)
    assert event.interface == IFNAME and not event.HasField("vni")
    assert abs(event.time_unix_nano / 1e9 - time.time()) < 60


@needs_events
def test_cli_events_json_prints_the_event(daemon: DaemonProcess, link: Link) -> None:
    proc = daemon.cli_popen("events", "--rule", str(DENY_RULE), "--reason", "drop_denied", "--count", "1",
                            as_json=True)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["type"] == "loss"
        send_denied(link)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines() if json.loads(line)["type"] == "event"]
    assert len(events) == 1
    e = events[0]
    assert (e["rule_id"], e["reason"], e["action"], e["protocol"], e["dport"]) == \
        (DENY_RULE, "DROP_DENIED", "deny", "udp", UDP_PORT)
    assert (e["src"], e["dst"], e["interface"]) == (PEER_ADDR, ADDR, IFNAME)


@needs_events
def test_cli_events_ends_cleanly_on_ctrl_c(daemon: DaemonProcess) -> None:
    proc = daemon.cli_popen("events", as_json=True)
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["type"] == "loss"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0 and "Traceback" not in err, err
    until(lambda: daemon.stats.GetStats(pb2.GetStatsRequest()).policy_events.watchers == 0,
          "the daemon let go of the cancelled stream")


@needs_events
def test_the_exporter_writes_json_lines_and_stats_count_delivery(daemon: DaemonProcess, link: Link) -> None:
    send_denied(link)
    assert daemon.events_export is not None
    path = Path(daemon.events_export)

    def exported() -> list[dict[str, Any]]:
        if not path.exists():
            return []
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        return [e for e in lines if e["type"] == "event" and e["rule_id"] == DENY_RULE]

    event = until(exported, f"an event of rule {DENY_RULE} in {path}")[0]
    assert event["src"] == PEER_ADDR and event["reason"] == "DROP_DENIED"
    delivery = daemon.stats.GetStats(pb2.GetStatsRequest(interfaces=[IFNAME])).policy_events
    assert delivery.sent >= 1 and delivery.read >= 1 and delivery.export_dropped == 0
    samples = scrape(daemon)
    assert sample(samples, "tidegate_policy_events_read_total", interface=IFNAME) >= 1
    assert sample(samples, "tidegate_policy_events_dropped_total", consumer="export") == 0


# --- traces -----------------------------------------------------------------------------------------

def bpf_program_fds(pid: int) -> int:
    """BPF programs the daemon process holds open (a loaded tracer holds some)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:bpf-prog":
                count += 1
        except OSError:
            pass  # closed while we looked
    return count


@needs_trace
def test_a_cancelled_trace_leaves_no_tracer_loaded(daemon: DaemonProcess) -> None:
    caps = daemon.trace.TraceCapabilities(pb2.TraceCapabilitiesRequest(), timeout=60)
    if not any(c.supported for c in caps.capabilities):
        pytest.skip(f"this kernel supports none of the tracer's hooks: {caps}")
    assert caps.active_traces == 0
    assert daemon.proc is not None
    pid = daemon.proc.pid
    before = bpf_program_fds(pid)

    stream = daemon.trace.Trace(pb2.TraceRequest(host=PEER_ADDR, duration_s=60), timeout=120)
    first = next(stream)
    assert first.WhichOneof("kind") == "started" and first.started.hooks
    assert bpf_program_fds(pid) > before  # loaded while the stream runs
    active = daemon.trace.TraceCapabilities(pb2.TraceCapabilitiesRequest(), timeout=60).active_traces
    assert active == 1
    stream.cancel()
    with pytest.raises(grpc.RpcError) as ended:
        next(stream)
    assert ended.value.code() == grpc.StatusCode.CANCELLED

    def active() -> int:
        return int(daemon.trace.TraceCapabilities(pb2.TraceCapabilitiesRequest(), timeout=60).active_traces)

    until(lambda: active() == 0, "the daemon ended the cancelled trace")
    until(lambda: bpf_program_fds(pid) == before, "the tracer's programs unloaded")
    assert sample(scrape(daemon), "tidegate_traces_active") == 0
    assert daemon.serving()


@needs_trace
def test_cli_trace_runs_for_its_duration(daemon: DaemonProcess, link: Link) -> None:
    caps = daemon.trace.TraceCapabilities(pb2.TraceCapabilitiesRequest(), timeout=60)
    if not any(c.supported for c in caps.capabilities):
        pytest.skip("this kernel supports none of the tracer's hooks")
    stop = threading.Event()

    def traffic() -> None:
        while not stop.wait(0.2):
            send_denied(link, 1)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        done = daemon.cli("trace", "--host", PEER_ADDR, "--protocol", "udp", "--duration", "3", as_json=True)
    finally:
        stop.set()
        sender.join()
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["type"] == "started" and lines[0]["hooks"]
    assert lines[-1] == {"type": "ended", "reason": "time_limit", "events": len(lines) - 2,
                         "dropped": lines[-1]["dropped"]}
    assert all(e["type"] == "event" and PEER_ADDR in (e["src"], e["dst"]) for e in lines[1:-1])
    text = daemon.cli("trace", "--capabilities")
    assert text.returncode == 0 and "HOOK" in text.stdout and "active traces: 0" in text.stdout


def test_a_metrics_port_in_use_stops_the_start_saying_so(daemon: DaemonProcess) -> None:
    with daemon.ns.enter():
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        # a second daemon in the same namespace: it fails before touching the kernel, and the
        # routing its cleanup scrubs is none here (this module has no chains)
        second = DaemonProcess(daemon.ns, metrics_listen=f"127.0.0.1:{port}")
        try:
            with pytest.raises(Exception, match=f"metrics.listen 127.0.0.1:{port}: Address already in use"):
                second.start(timeout=30)
        finally:
            second.close()
    assert daemon.serving()
