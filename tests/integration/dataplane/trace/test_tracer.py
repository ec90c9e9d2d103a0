"""The packet tracer.

Unit (no root): TraceSpec validation names the field, the filter's -D defines, the hook names
shared with the C header, tracefs format parsing. Kernel (root, namespaces): two namespaces
joined by a veth (`a0` in A, `b0` in B) with a random 198.18.R.0/24 link; A routes 198.19.R.0/24
to B, which has no route for it. Tracepoints are global, so every test filters on addresses and
a port of its own.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from dataplane.trace import kernel_support
from dataplane.trace.spec import MAX_DURATION_S, TraceEvent, TraceSpecError, filter_cflags
from dataplane.trace.tracer import HOOK_NAMES, Tracer, TraceSpec, compile_tracer
from testbed.netns import (
    Namespace,
    add_address,
    add_neighbour,
    add_route,
    created_namespaces,
    ifindex,
    link_mac,
    list_namespaces,
    sysctl,
    veth_pair,
)
from testbed.traffic import receive_udp, send_udp, udp_socket

UDP = 17
SETTLE_S = 0.3    # quiet time after the last expected event, for "nothing else shows up"
ARRIVAL_S = 3.0   # upper bound for an expected event (they take well under a millisecond)
UNLOAD_S = 3.0    # programs are freed after their last file descriptor closes (RCU)

# --- unit: the spec -------------------------------------------------------------------------------------


def test_spec_defaults_and_normalisation() -> None:
    spec = TraceSpec()
    assert (spec.host, spec.protocol, spec.port, spec.duration_s, spec.max_events) == (None, None, None, 30.0,
                                                                                      10000)
    assert not spec.has_criteria and filter_cflags(spec) == []
    spec = TraceSpec(host="2001:db8::/32", protocol="TCP", port=443)
    assert spec.protocol == "tcp" and spec.family == socket.AF_INET6


INVALID_SPECS = [
    ({"host": "10.0.0.256"}, "host"),
    ({"host": "10.1.2.3/8"}, "host"),  # host bits set: say 10.0.0.0/8
    ({"host": 167772161}, "host"),
    ({"protocol": "gre"}, "protocol"),
    ({"port": 0}, "port"),
    ({"port": 70000}, "port"),
    ({"port": True}, "port"),
    ({"port": "80"}, "port"),
    ({"protocol": "icmp", "port": 7}, "port"),
    ({"protocol": "icmp", "host": "2001:db8::1"}, "protocol"),
    ({"protocol": "icmpv6", "host": "192.0.2.1"}, "protocol"),
    ({"duration_s": 0}, "duration_s"),
    ({"duration_s": -1}, "duration_s"),
    ({"duration_s": MAX_DURATION_S + 1}, "duration_s"),
    ({"duration_s": float("nan")}, "duration_s"),
    ({"duration_s": float("inf")}, "duration_s"),
    ({"duration_s": "5"}, "duration_s"),
    ({"max_events": 0}, "max_events"),
    ({"max_events": 2.5}, "max_events"),
    ({"max_events": 10**7}, "max_events"),
]


@pytest.mark.parametrize("kwargs, field", INVALID_SPECS,
                         ids=[f"{f}-{i}" for i, (_, f) in enumerate(INVALID_SPECS)])
def test_invalid_spec_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(TraceSpecError) as info:
        TraceSpec(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_filter_defines_compare_masked_words_as_the_cpu_loads_them() -> None:
    flags = filter_cflags(TraceSpec(host="10.1.2.0/24", protocol="udp", port=53))
    assert "-DTT_FILTER_FAMILY=2" in flags and "-DTT_FILTER_PROTO=17" in flags
    assert "-DTT_FILTER_PORT=53" in flags and "-DTT_FILTER_HOST=1" in flags
    defines = dict(f.removeprefix("-D").split("=") for f in flags if "=" in f)
    w0, m0 = int(defines["TT_HOST_W0"].rstrip("U"), 16), int(defines["TT_HOST_M0"].rstrip("U"), 16)
    packet_addr = socket.inet_aton("10.1.2.77")  # what the program memcpy()s into a u32
    assert int.from_bytes(packet_addr, sys.byteorder) & m0 == w0
    assert defines["TT_HOST_M1"] == defines["TT_HOST_W1"] == "0x00000000U"


def test_hook_names_match_the_c_enum() -> None:
    assert sorted(kernel_support.hook_ids().values()) == sorted(HOOK_NAMES)
    assert len(set(HOOK_NAMES)) == len(HOOK_NAMES)


FIB6_FORMAT = """name: fib6_table_lookup
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:__u8 src[16];\toffset:31;\tsize:16;\tsigned:0;
\tfield:__data_loc char[] name;\toffset:20;\tsize:4;\tsigned:0;
\tfield:int err;\toffset:12;\tsize:4;\tsigned:1;

print fmt: "x", __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" })
"""


def test_tracepoint_format_parsing() -> None:
    fields = kernel_support.parse_format(FIB6_FORMAT)
    assert fields["src"] == kernel_support.TpField("src", 31, 16, False)  # unaligned: read with probe_read
    assert fields["name"].offset == 20 and fields["err"].signed


# --- kernel: fixtures and helpers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    a: Namespace
    b: Namespace
    a_ip: str
    b_ip: str
    unrouted: str         # routed by A to B; B has no route
    unrouted_other: str   # the same, a different address
    port: int

    def send(self, dst: str, port: int, count: int = 1) -> None:
        with udp_socket(self.a, self.a_ip) as sock:
            send_udp(sock, dst, port, [b"tidegate-trace"] * count)


@pytest.fixture(scope="module")
def trace_ready(bpf_available: None) -> Iterator[None]:
    support = {s.hook.name: s for s in kernel_support.probe_hooks()}
    for needed in ("kfree_skb", "netif_receive_skb", "fib"):
        if not support[needed].supported:
            pytest.skip(f"this kernel lacks the {needed} hook: {support[needed].reason}")
    yield
    left = [n for n in created_namespaces() if n in set(list_namespaces())]
    assert not left, f"namespaces left behind: {left}"


@pytest.fixture
def pair(trace_ready: None) -> Iterator[Pair]:
    r = secrets.randbelow(256)
    with Namespace(prefix="tgtra") as a, Namespace(prefix="tgtrb") as b:
        p = Pair(a, b, f"198.18.{r}.1", f"198.18.{r}.2", f"198.19.{r}.5", f"198.19.{r}.6",
                 20000 + secrets.randbelow(40000))
        veth_pair(a, "a0", b, "b0")
        add_address(a, "a0", f"{p.a_ip}/24")
        add_address(b, "b0", f"{p.b_ip}/24")
        add_neighbour(a, "a0", p.b_ip, link_mac(b, "b0"))
        add_neighbour(b, "b0", p.a_ip, link_mac(a, "a0"))
        add_route(a, f"198.19.{r}.0/24", via=p.b_ip, dev="a0")
        yield p


def collect(tracer: Tracer, until: Callable[[list[TraceEvent]], bool],
            timeout: float = ARRIVAL_S) -> list[TraceEvent]:
    """Poll until `until(events)` holds (or `timeout`), then for SETTLE_S more."""
    events: list[TraceEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(events):
        events += tracer.poll(50)
    settle = time.monotonic() + SETTLE_S
    while time.monotonic() < settle:
        events += tracer.poll(50)
    return events


def hooks_of(events: list[TraceEvent]) -> list[str]:
    return [e.hook for e in events]


def bpf_fds() -> int:
    """This process' open BPF objects: programs, maps, links and perf events (tracepoints)."""
    kinds = ("anon_inode:bpf-prog", "anon_inode:bpf-map", "anon_inode:bpf_link", "anon_inode:[perf_event]")
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(kinds)
        except OSError:
            pass
    return count


def assert_unloaded(ids: list[int]) -> None:
    deadline = time.monotonic() + UNLOAD_S
    while any(kernel_support.prog_loaded(i) for i in ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [i for i in ids if kernel_support.prog_loaded(i)] == []


# --- kernel: the tests -----------------------------------------------------------------------------------


@pytest.mark.root
def test_capabilities_are_detected(trace_ready: None) -> None:
    caps = Tracer.capabilities()
    assert set(caps) == {h.key for h in kernel_support.HOOKS}
    for hook in kernel_support.HOOKS:
        if hook.kind == "tracepoint":
            category, event = hook.target.split(":")
            present = (kernel_support.TRACEFS / "events" / category / event / "format").exists()
            assert caps[hook.key] == present, hook.key
    reasons = {s.hook.name: s.reason for s in Tracer.hook_support() if not s.supported}
    assert all(reasons.values())


@pytest.mark.root
def test_every_hook_compiles_and_the_record_is_the_abi(trace_ready: None) -> None:
    """Also the fentry/fexit programs a kernel without trampolines never loads."""
    everything = [kernel_support.HookSupport(s.hook, True, "", s.cflags)
                  for s in kernel_support.probe_hooks()]
    bpf = compile_tracer(TraceSpec(host="2001:db8::/32", protocol="tcp", port=80), everything)
    try:
        leaf = bpf[b"tt_events"].Leaf
        assert ctypes.sizeof(leaf) == 128
        assert [f[0] for f in leaf._fields_] == [
            "ts_ns", "location", "value", "aux", "aux2", "mark", "ifindex", "hook", "family", "proto",
            "sport", "dport", "src", "dst", "gw", "ifname", "oifname", "pad"]
        assert ctypes.sizeof(bpf[b"tt_config"].Leaf) == 16
    finally:
        bpf.cleanup()


@pytest.mark.parametrize("forwarding, reason", [(1, "IP_INNOROUTES"), (0, "IP_INADDRERRORS")],
                         ids=["router", "host"])
@pytest.mark.root
@pytest.mark.netns
def test_unrouted_udp_is_dropped_with_the_kernels_reason(pair: Pair, forwarding: int, reason: str) -> None:
    """A router without a route answers "no route" (IP_INNOROUTES); a host refuses to forward
    (IP_INADDRERRORS). Packets to another port, or another address, stay out of the trace."""
    sysctl(pair.b, "net.ipv4.ip_forward", forwarding)
    with Tracer(TraceSpec(host=pair.unrouted, protocol="udp", port=pair.port, duration_s=20)) as tracer:
        pair.send(pair.unrouted, pair.port + 1)
        pair.send(pair.unrouted_other, pair.port)
        pair.send(pair.unrouted, pair.port)
        events = collect(tracer, lambda evs: "kfree_skb" in hooks_of(evs))
    drops = [e for e in events if e.hook == "kfree_skb"]
    assert len(drops) == 1, events
    drop = drops[0]
    assert (drop.src, drop.dst, drop.proto, drop.dport) == (pair.a_ip, pair.unrouted, UDP, pair.port)
    assert (drop.ifname, drop.ifindex, drop.family) == ("b0", ifindex(pair.b, "b0"), socket.AF_INET)
    assert drop.drop_reason == reason
    assert drop.detail.startswith("drop in ip_error")
    assert {"xmit", "netif_receive_skb"} <= set(hooks_of(events))
    for ev in events:  # the filter, applied in the kernel
        assert pair.unrouted in (ev.src, ev.dst), ev
        assert (ev.hook == "fib" and ev.proto == 0) or pair.port in (ev.sport, ev.dport), ev
    assert tracer.lost_events == 0


@pytest.mark.root
@pytest.mark.netns
def test_delivered_udp_shows_receive_path_and_route(pair: Pair) -> None:
    b0 = ifindex(pair.b, "b0")

    def routed_in(events: list[TraceEvent]) -> list[TraceEvent]:
        """B's input route lookup: the packet came in on b0 and stays on b0 (local delivery)."""
        return [e for e in events if e.hook == "fib" and e.ifindex == b0 and e.detail.endswith("dev b0")]

    with udp_socket(pair.b, pair.b_ip, pair.port) as server, \
            Tracer(TraceSpec(host=pair.b_ip, protocol="udp", port=pair.port, duration_s=20)) as tracer:
        pair.send(pair.b_ip, pair.port)
        assert receive_udp(server, expect=1, timeout=ARRIVAL_S) == [(b"tidegate-trace", pair.a_ip)]
        events = collect(tracer, lambda evs: bool(routed_in(evs)))
    received = [e for e in events if e.hook == "netif_receive_skb"]
    assert [(e.ifname, e.src, e.dst, e.dport) for e in received] == [("b0", pair.a_ip, pair.b_ip, pair.port)]
    sent = [e for e in events if e.hook == "xmit"]
    assert [(e.ifname, e.sport, e.dport) for e in sent] == [("a0", received[0].sport, pair.port)]
    assert routed_in(events), events
    assert "kfree_skb" not in hooks_of(events)
    assert received[0].ts_ns > sent[0].ts_ns


@pytest.mark.root
@pytest.mark.netns
def test_stop_leaves_nothing_loaded(pair: Pair) -> None:
    before = bpf_fds()
    tracer = Tracer(TraceSpec(host=pair.unrouted, protocol="udp", port=pair.port, duration_s=20))
    attached = tracer.start()
    assert "kfree_skb" in attached and set(attached) <= set(HOOK_NAMES)
    ids = tracer.program_ids()
    assert len(ids) == len(attached) and all(kernel_support.prog_loaded(i) for i in ids)
    assert bpf_fds() > before
    tracer.stop()
    tracer.stop()  # idempotent
    assert_unloaded(ids)
    assert bpf_fds() == before
    assert tracer.poll(10) == [] and not tracer.running and not tracer.expired
    with pytest.raises(RuntimeError, match="runs once"):
        tracer.start()


@pytest.mark.root
@pytest.mark.netns
def test_tracer_unloads_itself_after_its_duration(pair: Pair) -> None:
    duration = 1.0
    tracer = Tracer(TraceSpec(host=pair.unrouted, duration_s=duration))
    tracer.start()
    ids = tracer.program_ids()
    started = time.monotonic()
    pair.send(pair.unrouted, pair.port)
    while tracer.running and time.monotonic() - started < duration + 2:
        time.sleep(0.05)  # nobody polls: the tracer's own timer must unload it
    assert not tracer.running and tracer.expired
    assert time.monotonic() - started >= duration * 0.9
    assert_unloaded(ids)
    assert any(e.hook == "kfree_skb" for e in tracer.poll(0))  # what arrived is still handed over
    assert tracer.poll(0) == []


@pytest.mark.root
@pytest.mark.netns
def test_tracer_stops_after_max_events(pair: Pair) -> None:
    with Tracer(TraceSpec(host=pair.unrouted, protocol="udp", port=pair.port, max_events=3)) as tracer:
        ids = tracer.program_ids()
        pair.send(pair.unrouted, pair.port, count=5)  # each makes several events
        events = collect(tracer, lambda evs: tracer.expired, timeout=ARRIVAL_S)
        assert len(events) == 3 and tracer.expired and not tracer.running
    assert_unloaded(ids)


@pytest.mark.root
@pytest.mark.netns
def test_native_xdp_drop_on_veth_is_seen_where_veth_frees_it(pair: Pair) -> None:
    """No fexit on XDP here; what remains observable of an XDP_DROP on veth is the free."""
    bcc = pytest.importorskip("bcc")
    prog = bcc.BPF(text=b"int tt_test_drop(struct xdp_md *ctx) { return XDP_DROP; }")
    xdp_flags_drv_mode = 1 << 2
    try:
        fn = prog.load_func(b"tt_test_drop", bcc.BPF.XDP)
        with pair.b.enter():
            bcc.BPF.attach_xdp(b"b0", fn, xdp_flags_drv_mode)
        with Tracer(TraceSpec(host=pair.b_ip, protocol="udp", port=pair.port, duration_s=20)) as tracer:
            pair.send(pair.b_ip, pair.port)
            events = collect(tracer, lambda evs: "kfree_skb" in hooks_of(evs))
    finally:
        with pair.b.enter():
            bcc.BPF.remove_xdp(b"b0", xdp_flags_drv_mode)
        prog.cleanup()
    drops = [e for e in events if e.hook == "kfree_skb"]
    assert len(drops) == 1 and drops[0].ifname == "b0" and "veth_xdp_rcv" in drops[0].detail, events
    assert "netif_receive_skb" not in hooks_of(events)  # XDP dropped it before the stack


@pytest.mark.root
@pytest.mark.netns
def test_tc_ingress_drop_shows_its_reason_and_mark(pair: Pair) -> None:
    bcc = pytest.importorskip("bcc")
    from dataplane.kernel.attach import attach_tc

    prog = bcc.BPF(text=b"""#include <uapi/linux/pkt_cls.h>
        int tt_test_shoot(struct __sk_buff *skb) { skb->mark = 0x77; return TC_ACT_SHOT; }""")
    try:
        with pair.b.enter():
            attach_tc("b0", prog.load_func(b"tt_test_shoot", bcc.BPF.SCHED_CLS), None)
        with Tracer(TraceSpec(host=pair.b_ip, protocol="udp", port=pair.port, duration_s=20)) as tracer:
            pair.send(pair.b_ip, pair.port)
            events = collect(tracer, lambda evs: "kfree_skb" in hooks_of(evs))
    finally:
        prog.cleanup()  # the qdisc goes with the namespace
    drops = [e for e in events if e.hook == "kfree_skb"]
    assert [(d.ifname, d.drop_reason) for d in drops] == [("b0", "TC_INGRESS")], events
    assert "mark 0x77" in drops[0].detail


@pytest.mark.root
@pytest.mark.netns
def test_events_lost_to_a_full_ring_buffer_are_counted(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    """The ring holds about 1,900 records; nobody polls while 2,000 packets make several each."""
    with Tracer(TraceSpec(host=pair.unrouted, protocol="udp", port=pair.port, duration_s=20,
                          max_events=100_000)) as tracer:
        pair.send(pair.unrouted, pair.port, count=2000)
        events = collect(tracer, lambda evs: False, timeout=0.5)
        assert tracer.lost_events > 0
        assert len(events) + tracer.lost_events >= 2000 * 2  # at least xmit and kfree_skb each
    assert "events lost" in caplog.text
