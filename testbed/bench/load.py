"""Load generation inside namespaces, and what it costs the receiver.

    sender namespace                         receiver namespace
    trafgen x CPUs --> s0 ====== veth, one queue per CPU ====== r0 --> what is measured

One sender cannot outrun an XDP drop here (machine facts: ~1.7 Mpps from one core), so the rig
runs one trafgen process per CPU. The veth has a TX/RX queue per CPU and XPS maps each CPU to
its own queue: with XDP attached, each queue has its own NAPI context, polled on the CPU that
filled it, so receive processing spreads like the senders instead of piling into one ring
(whose overflow makes trafgen exit with EAGAIN). Without XDP, veth hands packets to the
sending CPU's backlog: the same spread.

Because senders and receivers share the machine's CPUs, packets/s alone mostly measures the
senders. The receiver's share is the softirq time (NET_RX: veth NAPI and backlog, where XDP,
netfilter and the stack run), read from /proc/stat over the same window: receive CPU per packet,
and its inverse, the packets/s one core spends on receiving could sustain.

trafgen is started in its own process group and stopped by that group (SIGINT, then SIGKILL):
its per-CPU children would otherwise outlive their parent and the namespace. The group is also
registered with testbed.cleanup, so SIGTERM of the run stops it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dataplane.kernel.attach import attach_xdp
from testbed import cleanup
from testbed.bench.programs import Noop
from testbed.netns import (
    Namespace,
    add_address,
    add_neighbour,
    link_mac,
    lookup_ifindex,
    sysctl,
    veth_pair,
)

log = logging.getLogger(__name__)

SENDER_IF, RECEIVER_IF = "s0", "r0"
PREFIX = "tgbn"  # namespaces of the benchmarks: "tg" + hex (the tests' names) never starts so
SENDER_ADDR, RECEIVER_ADDR = "198.18.0.2", "198.18.0.1"
ADDR_LEN = 24
TRAFGEN = "trafgen"
STOP_GRACE = 2.0
XDPGEN_STARTED = 10_000  # packets: far more than the link's own (router solicitations, MLD)
XDPGEN_START_S = 20.0  # BCC compiles and loads each sender's one-line program first
CLK_TCK = os.sysconf("SC_CLK_TCK")
STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpus() -> int:
    return os.cpu_count() or 1


def missing_tools(*names: str) -> list[str]:
    return [n for n in names if shutil.which(n) is None]


# --- CPU and counters -----------------------------------------------------------------------------


def cpu_times() -> dict[str, float]:
    """Seconds spent in each state by all CPUs together, from /proc/stat's first line."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return {name: int(v) / CLK_TCK for name, v in zip(STAT_FIELDS, fields, strict=False)}


def link_stats(ns: Namespace, ifname: str) -> dict[str, int]:
    with ns.ipr() as ipr:
        link = ipr.get_links(lookup_ifindex(ipr, ns, ifname))[0]
        return dict(link.get_attr("IFLA_STATS64"))


# --- the rig --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rig:
    sender: Namespace
    receiver: Namespace
    queues: int
    sender_mac: str
    receiver_mac: str
    workdir: Path

    @property
    def receiver_ifname(self) -> str:
        return RECEIVER_IF


@contextmanager
def rig(prefix: str = PREFIX) -> Iterator[Rig]:
    """Two fresh namespaces joined by a multi-queue veth; everything removed on exit."""
    queues = cpus()
    with ExitStack() as stack:
        snd = stack.enter_context(Namespace(prefix=f"{prefix}s"))
        rcv = stack.enter_context(Namespace(prefix=f"{prefix}r"))
        for ns in (snd, rcv):  # before any link exists, so every interface inherits it
            for scope in ("all", "default"):
                sysctl(ns, f"net.ipv4.conf.{scope}.rp_filter", 0)
        veth_pair(snd, SENDER_IF, rcv, RECEIVER_IF, queues=queues)
        for q in range(queues):  # XPS: CPU q sends on queue q
            snd.run(["sh", "-c", f"echo {1 << q:x} > /sys/class/net/{SENDER_IF}/queues/tx-{q}/xps_cpus"])
        add_address(snd, SENDER_IF, f"{SENDER_ADDR}/{ADDR_LEN}")
        add_address(rcv, RECEIVER_IF, f"{RECEIVER_ADDR}/{ADDR_LEN}")
        smac, rmac = link_mac(snd, SENDER_IF), link_mac(rcv, RECEIVER_IF)
        add_neighbour(snd, SENDER_IF, RECEIVER_ADDR, rmac)
        add_neighbour(rcv, RECEIVER_IF, SENDER_ADDR, smac)
        workdir = Path(tempfile.mkdtemp(prefix="tidegate-bench-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        yield Rig(snd, rcv, queues, smac, rmac, workdir)


# --- trafgen --------------------------------------------------------------------------------------


def trafgen_config(frame: bytes) -> str:
    """trafgen's packet language: the frame's bytes, sent as they are."""
    return "{ " + ", ".join(f"0x{b:02x}" for b in frame) + " }\n"


class Trafgen:
    """trafgen, one process per CPU, sending `frame` on `dev` in `ns` until stopped."""

    def __init__(self, ns: Namespace, dev: str, frame: bytes, workdir: Path, processes: int) -> None:
        self.ns = ns
        self.processes = processes
        self.conf = workdir / "trafgen.cfg"
        self.conf.write_text(trafgen_config(frame))
        self.errlog = workdir / "trafgen.err"
        self.cmd = [
            "ip",
            "netns",
            "exec",
            ns.name,
            TRAFGEN,
            "--in",
            str(self.conf),
            "--out",
            dev,
            "--cpus",
            str(processes),
            "--no-sock-mem",
            "--notouch-irq",
            "--no-cpu-stats",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self._key = ""

    def start(self) -> None:
        with open(self.errlog, "wb") as err:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        self._key = f"trafgen:{self.proc.pid}"
        cleanup.install()
        cleanup.REGISTRY.add(self._key, self.stop)

    def members(self) -> int:
        """Live processes of trafgen's process group (the parent plus one per CPU)."""
        if self.proc is None:
            return 0
        count = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == self.proc.pid and fields[0] != "Z":  # pgrp, not a zombie
                count += 1
        return count

    def healthy(self) -> bool:
        return self.members() >= self.processes + 1

    def stop(self) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid
        for sig, grace in ((signal.SIGINT, STOP_GRACE), (signal.SIGKILL, STOP_GRACE)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self.members():
                time.sleep(0.02)
            if not self.members():
                break
        try:
            self.proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            pass
        cleanup.REGISTRY.discard(self._key)
        self.proc = None

    def errors(self) -> str:
        try:
            return self.errlog.read_text(errors="replace").strip()
        except OSError:
            return ""


class XdpGen:
    """testbed.bench.xdpgen, one pinned process per CPU: XDP frames, as a NIC would deliver them."""

    def __init__(self, ns: Namespace, dev: str, frame: bytes, workdir: Path, processes: int) -> None:
        self.ns, self.dev = ns, dev
        self.errlog = workdir / "xdpgen.err"
        self.cmds = [[sys.executable, "-m", "testbed.bench.xdpgen", "--netns", ns.name, "--dev", dev,
                      "--frame", frame.hex(), "--cpu", str(cpu)] for cpu in range(processes)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self._key = ""

    def start(self) -> None:
        with open(self.errlog, "ab") as err:
            self.procs = [subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                           stderr=err, start_new_session=True) for cmd in self.cmds]
        self._key = f"xdpgen:{self.procs[0].pid}"
        cleanup.install()
        cleanup.REGISTRY.add(self._key, self.stop)
        self._wait_sending()

    def _wait_sending(self) -> None:
        """Returns once frames flow (each process compiles its program first), or its errors."""
        start = link_stats(self.ns, self.dev)["tx_packets"]
        deadline = time.monotonic() + XDPGEN_START_S
        while time.monotonic() < deadline and self.healthy():
            if link_stats(self.ns, self.dev)["tx_packets"] > start + XDPGEN_STARTED:
                return
            time.sleep(0.1)
        raise RuntimeError(f"xdpgen sent nothing within {XDPGEN_START_S:g} s: {self.errors() or 'no error'}")

    def healthy(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for sig in (signal.SIGINT, signal.SIGKILL):
            for p in self.procs:
                if p.poll() is None:
                    p.send_signal(sig)
            deadline = time.monotonic() + STOP_GRACE
            while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
                time.sleep(0.02)
        cleanup.REGISTRY.discard(self._key)
        self.procs = []

    def errors(self) -> str:
        try:
            return self.errlog.read_text(errors="replace").strip()
        except OSError:
            return ""


Sender = Literal["skb", "xdp"]
SENDERS: dict[str, str] = {
    "skb": "trafgen (skbs: veth copies each into an XDP frame)",
    "xdp": "XDP frames (testbed.bench.xdpgen: as a NIC's driver delivers them)",
}


@contextmanager
def passing_xdp(r: Rig) -> Iterator[None]:
    """`return XDP_PASS` on the receiver's veth for the body: veth takes redirected XDP frames
    (xdpgen's) only into an XDP program, so a path measured without one needs this."""
    noop = Noop()
    try:
        with r.receiver.enter():
            attach_xdp(r.receiver_ifname, noop.fn, "native")
        yield
    finally:
        noop.close()


@contextmanager
def sending(r: Rig, frame: bytes, sender: Sender = "skb") -> Iterator[Trafgen | XdpGen]:
    kind = XdpGen if sender == "xdp" else Trafgen
    gen = kind(r.sender, SENDER_IF, frame, r.workdir, r.queues)
    gen.start()
    try:
        yield gen
    finally:
        gen.stop()


# --- one measured window --------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    seconds: float
    handed: int  # packets the sender's veth passed to the receiver
    ring_drops: int  # packets veth dropped for want of room (receiver saturated)
    counted: int  # what the thing under test counted (drops, deliveries)...
    counted_seconds: float  # ...between the midpoints of its two reads (some take a while)
    softirq_s: float  # CPU seconds in softirq, all CPUs
    busy_s: float  # CPU seconds not idle, all CPUs
    sender_ok: bool  # every trafgen process was alive at the end
    sender_errors: str = ""

    @property
    def counted_pps(self) -> float:
        return self.counted / self.counted_seconds

    @property
    def handed_pps(self) -> float:
        return self.handed / self.seconds

    @property
    def rx_ns_per_packet(self) -> float:
        return 1e9 * self.softirq_s / self.handed if self.handed else float("nan")

    @property
    def rx_capacity_pps(self) -> float:
        """Packets/s one receiving core could take at this cost."""
        return self.handed / self.softirq_s if self.softirq_s else float("nan")


def measure(r: Rig, frame: bytes, counter: Callable[[], int], warmup: float, window: float,
            sender: Sender = "skb") -> Window:
    """Runs the senders, and over `window` seconds (after `warmup`) reads the counters."""
    with sending(r, frame, sender) as gen:
        time.sleep(warmup)
        before = _snapshot(r, counter)
        time.sleep(window)
        after = _snapshot(r, counter)
        ok = gen.healthy()
    errors = "" if ok else gen.errors()
    cpu = {k: after["cpu"][k] - before["cpu"][k] for k in STAT_FIELDS}
    busy = sum(v for k, v in cpu.items() if k not in ("idle", "iowait"))
    tx = after["tx"]["tx_packets"] - before["tx"]["tx_packets"]
    drops = (
        after["tx"]["tx_dropped"]
        - before["tx"]["tx_dropped"]
        + after["rx"]["rx_dropped"]
        - before["rx"]["rx_dropped"]
    )
    return Window(
        after["t"] - before["t"],
        tx,
        drops,
        after["count"] - before["count"],
        after["count_t"] - before["count_t"],
        cpu["softirq"],
        busy,
        ok,
        errors,
    )


def _snapshot(r: Rig, counter: Callable[[], int]) -> dict[str, Any]:
    snap: dict[str, Any] = {
        "t": time.monotonic(),
        "cpu": cpu_times(),
        "tx": link_stats(r.sender, SENDER_IF),
        "rx": link_stats(r.receiver, RECEIVER_IF),
    }
    started = time.monotonic()
    snap["count"] = counter()
    snap["count_t"] = (started + time.monotonic()) / 2
    return snap
