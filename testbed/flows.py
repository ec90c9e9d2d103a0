"""Sequence-numbered UDP flows at a steady rate, counted exactly at the receiver.

    with flow_topology.build() as topo, FlowTraffic(topo, flows, rate=4000) as traffic:
        ...                                   # packets flow in the background
        report = traffic.stop()               # sender stopped, receiver drained
        assert report["allowed"].lost == 0    # every sequence number arrived, once

The sender writes whole Ethernet frames on an AF_PACKET socket in the sender namespace, so a
flow's source address can be anything (a rule's prefix) without configuring it anywhere. Each
UDP payload carries a magic, the flow's index and its sequence number; the receiver, UDP
sockets in the receiving namespace, records which sequence numbers arrived, so loss is counted
packet by packet (and duplicates, and packets of a flow that must never arrive). Frames go out
in small bursts (at most BURST per tick) paced against the clock, so a veth's 256-frame ring is
never what drops them: the sender and receiver interfaces' own drop counters are reported with
the flows, to tell such testbed loss from a verdict.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field

from testbed.netns import Namespace

MAGIC = b"TGSQ"
_PAYLOAD = struct.Struct("!4sHQ")  # magic, flow index, sequence number
PAD = 18  # payload bytes: a 64-byte frame with the 14+20+8 headers
BURST = 32  # frames per tick at most: far below the 256 a veth queues before its NAPI runs
TICK = 0.002
RCVBUF = 32 << 20
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; root may exceed net.core.rmem_max
ETH_P_IP = 0x0800
DRAIN_QUIET = 0.3  # the receiver is drained when nothing arrived for this long


@dataclass(frozen=True)
class Flow:
    """One UDP flow; `expect` says whether the policy must let it through."""

    name: str
    src: str
    dst: str
    dport: int
    expect: bool
    sport: int = 40000


@dataclass
class FlowCount:
    flow: Flow
    sent: int = 0
    seen: bytearray = field(default_factory=bytearray)  # seen[seq] = times it arrived
    duplicates: int = 0

    @property
    def received(self) -> int:
        """Distinct sequence numbers (of those sent) that arrived."""
        head = self.seen[: self.sent]
        return len(head) - head.count(0)

    @property
    def lost(self) -> int:
        return self.sent - self.received

    def missing(self, limit: int = 10) -> list[tuple[int, int]]:
        """The first `limit` runs of lost sequence numbers, as (first, last)."""
        runs: list[tuple[int, int]] = []
        seq, view = 0, self.seen
        while seq < self.sent and len(runs) < limit:
            if seq >= len(view) or view[seq] == 0:
                start = seq
                while seq < self.sent and (seq >= len(view) or view[seq] == 0):
                    seq += 1
                runs.append((start, seq - 1))
            seq += 1
        return runs

    def summary(self) -> str:
        verdict = "allow" if self.flow.expect else "deny"
        text = f"{self.flow.name} ({verdict}): sent {self.sent}, received {self.received}"
        if self.duplicates:
            text += f", {self.duplicates} duplicates"
        if self.flow.expect and self.lost:
            text += f", lost {self.lost}: {self.missing()}"
        return text


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame_header(flow: Flow, src_mac: bytes, dst_mac: bytes) -> bytes:
    """Ethernet + IPv4 + UDP headers of `flow` for a PAD-byte payload (UDP checksum 0: none)."""
    udp_len = 8 + PAD
    src, dst = ipaddress.IPv4Address(flow.src).packed, ipaddress.IPv4Address(flow.dst).packed
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, socket.IPPROTO_UDP, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    udp = struct.pack("!HHHH", flow.sport, flow.dport, udp_len, 0)
    return dst_mac + src_mac + struct.pack("!H", ETH_P_IP) + ip + udp


class FlowTraffic:
    """Sends `flows` round robin at `rate` frames/s in total from `sender`'s `send_if` (to the
    MAC `dst_mac`) and counts them on UDP sockets in `receiver`; a context manager."""

    def __init__(self, sender: Namespace, send_if: str, src_mac: str, dst_mac: str,
                 receiver: Namespace, flows: Sequence[Flow], rate: float) -> None:
        if not flows:
            raise ValueError("no flows to send")
        self.sender, self.send_if, self.receiver = sender, send_if, receiver
        self.flows = list(flows)
        self.rate = rate
        self.counts = [FlowCount(f) for f in self.flows]
        self._headers = [frame_header(f, bytes.fromhex(src_mac.replace(":", "")),
                                      bytes.fromhex(dst_mac.replace(":", ""))) for f in self.flows]
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._lock = threading.Lock()
        self._send_errors = 0
        self._tx: socket.socket | None = None
        self._rx: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None

    # --- life cycle ------------------------------------------------------------------------------
    def __enter__(self) -> FlowTraffic:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        with self.receiver.enter():
            for port in sorted({f.dport for f in self.flows}):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._rx.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
                sock.bind(("0.0.0.0", port))
                sock.setblocking(False)
        with self.sender.enter():
            self._tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: send only
            self._tx.bind((self.send_if, 0))
        self._threads = [threading.Thread(target=self._guard, args=(fn,), name=f"flows-{fn.__name__}",
                                          daemon=True) for fn in (self._receive, self._send)]
        for thread in self._threads:
            thread.start()

    def pause(self) -> None:
        """Stop sending (the receiver keeps counting) until resume()."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def stop(self, drain: float = DRAIN_QUIET) -> dict[str, FlowCount]:
        """Stops the sender, waits until nothing arrived for `drain` s, and returns the counts."""
        self._paused.set()
        self.quiesce(drain)
        self._stop.set()
        for thread in self._threads:
            thread.join(5.0)
        if self.error is not None:
            raise RuntimeError(f"the traffic thread failed: {self.error!r}") from self.error
        return self.report()

    def quiesce(self, drain: float = DRAIN_QUIET) -> None:
        """Waits until the receiver saw nothing for `drain` seconds (after a pause)."""
        while True:
            before = self._arrivals()
            time.sleep(drain)
            if self._arrivals() == before:
                return

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5.0)
        for sock in [*self._rx, *([self._tx] if self._tx else [])]:
            sock.close()
        self._rx, self._tx = [], None

    # --- reading -----------------------------------------------------------------------------------
    def report(self) -> dict[str, FlowCount]:
        with self._lock:
            return {c.flow.name: FlowCount(c.flow, c.sent, bytearray(c.seen), c.duplicates)
                    for c in self.counts}

    @property
    def send_errors(self) -> int:
        return self._send_errors

    def _arrivals(self) -> int:
        with self._lock:
            return sum(len(c.seen) - c.seen.count(0) + c.duplicates for c in self.counts)

    # --- threads -----------------------------------------------------------------------------------
    def _guard(self, fn: object) -> None:
        try:
            fn()  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc
            self._stop.set()

    def _send(self) -> None:
        assert self._tx is not None
        tx, headers, counts, n = self._tx, self._headers, self.counts, len(self.flows)
        pad = b"\0" * (PAD - _PAYLOAD.size)
        index, done, start = 0, 0, time.monotonic()
        while not self._stop.is_set():
            if self._paused.is_set():
                time.sleep(TICK)
                start, done = time.monotonic(), 0  # no catching up after a pause
                continue
            due = min(int((time.monotonic() - start) * self.rate) - done, BURST)
            for _ in range(due):
                count = counts[index]
                frame = headers[index] + _PAYLOAD.pack(MAGIC, index, count.sent) + pad
                try:
                    tx.send(frame)
                except OSError:
                    self._send_errors += 1  # not sent: the same sequence number goes again
                else:
                    with self._lock:
                        count.sent += 1
                index = (index + 1) % n
                done += 1
            time.sleep(TICK)

    def _receive(self) -> None:
        socks, counts = self._rx, self.counts
        while not self._stop.is_set():
            ready, _, _ = select.select(socks, [], [], 0.05)
            for sock in ready:
                for data in _drain(sock):
                    if len(data) < _PAYLOAD.size:
                        continue
                    magic, index, seq = _PAYLOAD.unpack_from(data)
                    if magic != MAGIC or index >= len(counts):
                        continue
                    with self._lock:
                        seen = counts[index].seen
                        if seq >= len(seen):
                            seen.extend(bytes(max(seq + 1 - len(seen), 4096)))
                        if seen[seq]:
                            counts[index].duplicates += 1
                        seen[seq] = min(seen[seq] + 1, 255)


def _drain(sock: socket.socket) -> Iterator[bytes]:
    while True:
        try:
            yield sock.recv(2048)
        except BlockingIOError:
            return
        except OSError:
            return


def interface_drops(ns: Namespace, ifname: str) -> dict[str, int]:
    """The interface's own drop counters (rx_dropped, tx_dropped): loss the testbed caused."""
    from testbed.netns import lookup_ifindex

    with ns.ipr() as ipr:
        link = ipr.get_links(lookup_ifindex(ipr, ns, ifname))[0]
        stats = link.get_attr("IFLA_STATS64")
    with suppress(TypeError):
        return {k: int(stats[k]) for k in ("rx_dropped", "tx_dropped")}
    return {}
