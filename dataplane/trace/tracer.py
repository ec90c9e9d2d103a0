"""On-demand packet tracers: follow the packets a TraceSpec matches through the kernel.

    with Tracer(TraceSpec(host="10.0.0.0/24", protocol="udp", port=53, duration_s=10)) as t:
        while not t.expired:
            for ev in t.poll(200):
                print(ev.hook, ev.ifname, ev.src, ev.dst, ev.detail, ev.drop_reason)

No kprobes: the hooks are tracepoints (found in tracefs) and, where the kernel allows BPF
trampolines, fentry/fexit programs (found in BTF and by a trial load); `Tracer.capabilities()`
says which, `Tracer.hook_support()` why not. In the order a received packet meets them:
xdp_exception, xdp_generic, netif_receive_skb, tc, ip_rcv/ipv6_rcv, fib/fib6 (the routing
decision: table, chosen device or error), deliver (a socket reads it), xmit (a driver sends
it), kfree_skb (dropped: the kernel's drop reason and the freeing function), consume_skb
(freed after normal use).

XDP, without fexit on the XDP program itself: a packet native XDP passed reaches
netif_receive_skb (generic XDP runs just *after* that tracepoint); a packet dropped by native
XDP on veth, or by generic XDP, is freed through kfree_skb in veth_xdp_rcv_skb or
do_xdp_generic (the event's detail names the function; the reason is NOT_SPECIFIED on 6.18);
XDP_ABORTED and invalid actions fire xdp_exception, which carries no packet and so is reported
only to a spec without criteria; with trampolines, xdp_generic reports each generic-mode
verdict. Native XDP on a physical NIC drops before any skb exists: that leaves no trace here.
TC: tcf_classify (fexit) gives the verdict where trampolines work; a TC_ACT_SHOT at ingress is
otherwise seen as kfree_skb with reason TC_INGRESS, and a TC mark shows on later events.

The filter (host, protocol, port) is compiled into the programs; each matching sighting is one
record in a ring buffer. Route lookups are judged by the flow they look up: input lookups carry
no ports (IPv4 ones no protocol either) unless fib rules need them, so when the spec names a
host they are matched on what they carry, and a trace by host and port still shows the
routing decision (and the port-less lookups of other flows between the same hosts).

Records lost because the buffer was full are counted (`lost_events`) and logged. The programs
also stop emitting by themselves at the time limit and the event budget, and a timer unloads
them at the time limit even if nobody polls.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from dataplane.kernel.source import program_text
from dataplane.trace import kernel_support
from dataplane.trace.spec import TraceEvent, TraceSpec, TraceSpecError, filter_cflags

__all__ = ["HOOK_NAMES", "TraceError", "TraceEvent", "TraceSpec", "TraceSpecError", "Tracer",
           "compile_tracer"]

log = logging.getLogger(__name__)

ENTRY_FILE = "trace/trace.c"  # under xdp/; its headers are beside it, ringbuf.h in xdp/include/
HOOK_NAMES = tuple(h.name for h in kernel_support.HOOKS)
COUNTER_LOST = kernel_support.abi_enum("tt_counter")["COUNTER_LOST"]
_NS_PER_S = 1_000_000_000


class TraceError(RuntimeError):
    """The tracer cannot run here; the message says why and what would help."""


def _bcc() -> Any:
    import bcc  # Debian's python3-bpfcc, imported late so pure modules work without it

    return bcc


def compile_tracer(spec: TraceSpec, supports: Sequence[kernel_support.HookSupport]) -> Any:
    """The tracer's BCC module with the hooks of `supports` compiled in; nothing attached yet.

    BCC would attach kfunc__/kretfunc__ functions as it loads the module, and fail as a whole
    if one cannot be: the subclass leaves attaching to us, one hook at a time."""
    bcc = _bcc()

    class _ManualAttachBPF(bcc.BPF):  # type: ignore[misc,name-defined]
        def _trace_autoload(self) -> None:
            pass

    names = [s.hook.name for s in supports]
    cflags = ["-Wno-unused-function", *filter_cflags(spec), *kernel_support.kernel_cflags(names)]
    for s in supports:
        cflags += [f"-D{s.hook.switch}", *s.cflags]
    return _ManualAttachBPF(text=program_text((ENTRY_FILE,)).encode(), cflags=cflags)


class Tracer:
    """One trace: `start()` loads and attaches, `poll()` returns events, `stop()` unloads.

    A Tracer runs once. It stops by itself at `spec.duration_s` (a timer, even without polls)
    or after `spec.max_events` events. As a context manager it starts on entry (if not
    started) and stops on exit. Thread-safe: `stop()` may be called while another thread polls.
    """

    def __init__(self, spec: TraceSpec) -> None:
        if not isinstance(spec, TraceSpec):
            raise TypeError(f"Tracer needs a TraceSpec, not {type(spec).__name__}")
        self.spec = spec
        self._lock = threading.RLock()
        self._state = "new"
        self._bpf: Any = None
        self._leaf: Any = None
        self._attached: list[str] = []
        self._skipped: dict[str, str] = {}
        self._deadline = 0.0  # time.monotonic()
        self._delivered = 0
        self._lost = 0
        self._batch: list[TraceEvent] = []
        self._pending: list[TraceEvent] = []
        self._timer: threading.Timer | None = None
        self._stop_cause: str | None = None
        self._ksyms: dict[int, str] = {}

    # --- what the kernel offers -----------------------------------------------------------------------

    @staticmethod
    def capabilities() -> dict[str, bool]:
        """Each hook's target on this kernel: {"tracepoint:skb:kfree_skb": True,
        "fentry:ip_rcv": False, ...}. Detected (tracefs formats, BTF, a trial load), once."""
        return {s.hook.key: s.supported for s in kernel_support.probe_hooks()}

    @staticmethod
    def hook_support() -> list[kernel_support.HookSupport]:
        """Like capabilities(), per hook name, with the reason a hook is unavailable."""
        return list(kernel_support.probe_hooks())

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> list[str]:
        """Compile, load and attach; returns the hooks attached (unavailable ones are skipped
        and logged with the reason). TraceError if none could be attached."""
        with self._lock:
            if self._state != "new":
                raise TraceError(f"this Tracer is {self._state}: a Tracer runs once, make a new one")
            supports = kernel_support.probe_hooks()
            for s in supports:
                if not s.supported:
                    self._skip(s.hook.name, s.reason)
            usable = [s for s in supports if s.supported]
            try:
                if not usable:
                    raise TraceError(f"no hook is available on this kernel: {self._skipped}")
                self._bpf = compile_tracer(self.spec, usable)
                self._configure()
                table = self._bpf[b"tt_events"]
                self._leaf = table.Leaf
                table.open_ring_buffer(self._on_record)
                for s in usable:
                    self._attach(s.hook)
                if not self._attached:
                    raise TraceError(f"no hook could be attached: {self._skipped}")
            except BaseException:
                self._close_bpf()
                self._state = "stopped"
                raise
            self._state = "running"
            self._timer = threading.Timer(max(0.0, self._deadline - time.monotonic()), self._on_deadline)
            self._timer.daemon = True
            self._timer.start()
            log.info("tracer started", extra={"spec": repr(self.spec), "hooks": self._attached,
                                              "skipped": sorted(self._skipped)})
            return list(self._attached)

    def _skip(self, hook: str, reason: str) -> None:
        self._skipped[hook] = reason
        log.info("trace hook %s skipped: %s", hook, reason)

    def _configure(self) -> None:
        """Limits in the config map before anything is attached (bpf_ktime_get_ns is
        CLOCK_MONOTONIC, as time.monotonic_ns is on Linux)."""
        self._deadline = time.monotonic() + self.spec.duration_s
        table = self._bpf[b"tt_config"]
        cfg = table.Leaf()
        cfg.deadline_ns = time.monotonic_ns() + int(self.spec.duration_s * _NS_PER_S)
        cfg.max_events = self.spec.max_events
        table[ctypes.c_int(0)] = cfg

    def _attach(self, hook: kernel_support.Hook) -> None:
        try:
            if hook.kind == "tracepoint":
                self._bpf.attach_tracepoint(tp=hook.target.encode(), fn_name=hook.function.encode())
            elif hook.kind == "fentry":
                self._bpf.attach_kfunc(fn_name=hook.target.encode())
            else:
                self._bpf.attach_kretfunc(fn_name=hook.target.encode())
        except Exception as exc:  # BCC raises bare Exception; the kernel's reason is in it
            self._skip(hook.name, f"attaching {hook.key} failed: {exc}")
            return
        self._attached.append(hook.name)

    def stop(self) -> None:
        """Detach and unload everything. Idempotent; events still buffered are kept for a
        last poll()."""
        with self._lock:
            self._stop_locked("stopped")

    def _on_deadline(self) -> None:
        with self._lock:
            self._stop_locked("time limit")

    def _stop_locked(self, cause: str) -> None:
        if self._state == "stopped":
            return
        if self._state == "new":
            self._state = "stopped"
            self._stop_cause = cause
            return
        if self._timer is not None:
            self._timer.cancel()
        try:
            self._bpf.ring_buffer_consume()
            self._pending += self._take_batch()
            self._read_lost()
        finally:
            self._close_bpf()
            self._state = "stopped"
            self._stop_cause = cause
        log.info("tracer stopped", extra={"cause": cause, "events": self._delivered, "lost": self._lost})

    def _close_bpf(self) -> None:
        if self._bpf is not None:
            try:
                self._bpf.cleanup()  # detaches every hook, closes programs, maps and the ring
            finally:
                self._bpf = None

    def __enter__(self) -> Tracer:
        if self._state == "new":
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- events ------------------------------------------------------------------------------------------

    def poll(self, timeout_ms: int) -> list[TraceEvent]:
        """Events that arrived, waiting up to `timeout_ms` (never past the time limit) for the
        first. After the tracer stopped, returns what was still buffered, then []."""
        with self._lock:
            out, self._pending = self._pending, []
            if self._state != "running":
                return out
            remaining_ms = max(0, int((self._deadline - time.monotonic()) * 1000))
            wait = 0 if out else min(max(timeout_ms, 0), remaining_ms)
            self._bpf.ring_buffer_poll(wait)
            out += self._take_batch()
            self._read_lost()
            if self._delivered >= self.spec.max_events:
                self._stop_locked("event limit")
            elif time.monotonic() >= self._deadline:
                self._stop_locked("time limit")
            out += self._pending
            self._pending = []
            return out

    def _on_record(self, _ctx: Any, data: Any, _size: int) -> int:
        raw = ctypes.cast(data, ctypes.POINTER(self._leaf)).contents
        self._batch.append(self._decode(raw))
        return 0

    def _take_batch(self) -> list[TraceEvent]:
        room = max(0, self.spec.max_events - self._delivered)
        batch, self._batch = self._batch[:room], []
        self._delivered += len(batch)
        return batch

    def _read_lost(self) -> None:
        lost = int(self._bpf[b"tt_counters"][ctypes.c_int(COUNTER_LOST)].value)
        if lost > self._lost:
            log.warning("trace ring buffer full: %d events lost (%d in all); poll more often or "
                        "narrow the spec", lost - self._lost, lost)
        self._lost = lost

    # --- state -------------------------------------------------------------------------------------------

    @property
    def expired(self) -> bool:
        """The time limit passed or max_events were delivered (the tracer then unloads itself)."""
        with self._lock:
            if self._stop_cause in ("time limit", "event limit"):
                return True
            if self._state != "running":
                return False
            return time.monotonic() >= self._deadline or self._delivered >= self.spec.max_events

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def hooks(self) -> list[str]:
        """Hooks attached by start()."""
        return list(self._attached)

    @property
    def skipped(self) -> dict[str, str]:
        """Hooks not attached, with the reason."""
        return dict(self._skipped)

    @property
    def lost_events(self) -> int:
        """Events the kernel could not write because the ring buffer was full."""
        return self._lost

    @property
    def delivered_events(self) -> int:
        return self._delivered

    def program_ids(self) -> list[int]:
        """Kernel ids of the loaded programs (for checks that stop() left nothing behind)."""
        with self._lock:
            if self._bpf is None:
                return []
            return sorted(i for fn in self._bpf.funcs.values() if (i := _prog_id(fn.fd)) is not None)

    # --- decoding ----------------------------------------------------------------------------------------

    def _decode(self, raw: Any) -> TraceEvent:
        hook = kernel_support.hook_ids().get(raw.hook, f"hook_{raw.hook}")
        family = int(raw.family)
        src, dst = _address(family, bytes(raw.src)), _address(family, bytes(raw.dst))
        ifname = raw.ifname.decode(errors="replace") or None
        drop_reason = kernel_support.drop_reason_name(raw.value) if hook == "kfree_skb" else None
        return TraceEvent(ts_ns=int(raw.ts_ns), hook=hook, ifindex=int(raw.ifindex), ifname=ifname,
                          family=family, src=src, dst=dst, proto=int(raw.proto), sport=int(raw.sport),
                          dport=int(raw.dport), detail=self._detail(hook, raw), drop_reason=drop_reason)

    def _detail(self, hook: str, raw: Any) -> str:
        mark = f" mark 0x{raw.mark:x}" if raw.mark else ""
        if hook == "xdp_exception":
            return f"{kernel_support.xdp_action_names().get(raw.value, raw.value)} (prog id {raw.aux})"
        if hook == "xdp_generic":
            return str(kernel_support.xdp_action_names().get(raw.value, raw.value))
        if hook == "tc":
            where = "ingress" if raw.aux2 else "egress"
            return f"{kernel_support.TC_ACTIONS.get(raw.value, raw.value)} at {where}{mark}"
        if hook in ("fib", "fib6"):
            return _fib_detail(raw)
        if hook == "kfree_skb":
            return f"drop in {self._ksym(int(raw.location))}{mark}"
        if hook == "consume_skb":
            return f"consumed in {self._ksym(int(raw.location))}{mark}"
        return f"len {raw.aux}{mark}"

    def _ksym(self, addr: int) -> str:
        if addr not in self._ksyms:
            try:
                name = _bcc().BPF.ksym(addr, show_offset=True).decode(errors="replace")
            except Exception:  # kallsyms unreadable: the address is still an answer
                name = f"0x{addr:x}"
            self._ksyms[addr] = name
        return self._ksyms[addr]


def _address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    if family == socket.AF_INET6:
        return str(ipaddress.IPv6Address(raw[:16]))
    return ""


def _fib_detail(raw: Any) -> str:
    """"table 254: via 10.0.0.1 dev eth0" or "table 254: EAGAIN" (no route in that table)."""
    if raw.value:
        return f"table {raw.aux}: {errno.errorcode.get(-raw.value, raw.value)}"
    gw = bytes(raw.gw)
    via = f" via {_address(int(raw.family), gw)}" if any(gw) else ""
    dev = raw.oifname.decode(errors="replace")
    return f"table {raw.aux}:{via} dev {dev or '?'}"


def _prog_id(fd: int) -> int | None:
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("prog_id:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None

