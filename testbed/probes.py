"""Probe packets at a ruleset's boundaries, sent through a namespace, judged by where they arrive.

    probes = boundary_probes(ruleset, pools, rng) + random_probes(pools, rng, 200)
    seen = send_and_observe(sender, "s0", dst_mac, target, receiver, "r0", probes)
    seen[i]  # "local": delivered to the target itself; "forwarded": reached the receiver; "none"

Every probe is one Ethernet frame written on an AF_PACKET socket in the sender namespace (any
source address, port, ICMP type or TCP flags, nothing configured for it), carrying a token with
its index. Local delivery is seen by raw IP sockets in the target namespace, which the kernel
serves after netfilter's INPUT hook (so only what INPUT accepted); forwarding by an AF_PACKET
socket on the receiver's interface. A probe's verdict is thus judged by the kernel alone.

Boundary probes come from the rules themselves (migrate.ir boxes): a point inside each rule, its
ranges' first and last values, and the values just outside them, one field at a time.
"""

from __future__ import annotations

import ipaddress
import random
import select
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP
from scapy.packet import Packet, Raw

from control.migrate import intervals as iv
from control.migrate.ir import Box, Ruleset
from testbed.netns import Namespace

MAGIC = b"TGPR"
TOKEN = struct.Struct("!4sII")  # magic, run, probe index
ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = 33
RCVBUF = 32 << 20
QUIET = 0.5      # the receivers are drained when nothing arrived for this long
PACE = 0.0004    # seconds between frames: far below what a veth ring holds
# Protocols probes use; a rule on another protocol gets probes of its first usable number.
PROTOCOLS = {4: (6, 17, 1, 132, 47), 6: (6, 17, 58, 132, 47)}
UNUSABLE = {0, 41, 43, 44, 50, 51, 59, 60, 135, 139, 140, 253, 254, 255}  # ext headers, ESP/AH, ...
TCP_FLAGS = (0x02, 0x12, 0x10, 0x18, 0x04, 0x01, 0x03, 0x06)


@dataclass(frozen=True)
class Probe:
    family: int
    proto: int
    src: str
    dst: str
    sport: int = 0
    dport: int = 0
    icmp: int = 0x0800  # (type << 8) | code: echo request
    flags: int = 0x02
    why: str = ""

    def frame(self, src_mac: str, dst_mac: str, token: bytes) -> bytes:
        ether = Ether(src=src_mac, dst=dst_mac)
        ip = IP(src=self.src, dst=self.dst, ttl=64, proto=self.proto) if self.family == 4 else \
            IPv6(src=self.src, dst=self.dst, hlim=64, nh=self.proto)
        l4: Packet
        if self.proto == 6:
            ack = 1 if self.flags & 0x10 else 0
            l4 = TCP(sport=self.sport, dport=self.dport, flags=self.flags, seq=1, ack=ack)
        elif self.proto == 17:
            l4 = UDP(sport=self.sport, dport=self.dport)
        elif self.proto == 132:
            l4 = SCTP(sport=self.sport, dport=self.dport)
        elif self.proto in (1, 58):
            head = struct.pack("!BBH", self.icmp >> 8, self.icmp & 0xFF, 0)
            return bytes(ether / ip / Raw(_icmp(head, token, self)))
        else:
            return bytes(ether / ip / Raw(token))
        return bytes(ether / ip / l4 / Raw(token))

    def __str__(self) -> str:
        ports = f" {self.sport}->{self.dport}" if self.proto in (6, 17, 132) else ""
        extra = f" type {self.icmp >> 8}/{self.icmp & 0xFF}" if self.proto in (1, 58) else ""
        extra += f" flags {self.flags:#04x}" if self.proto == 6 else ""
        return f"IPv{self.family} proto {self.proto} {self.src} -> {self.dst}{ports}{extra} ({self.why})"


def _icmp(head: bytes, token: bytes, probe: Probe) -> bytes:
    """ICMP/ICMPv6 with a correct checksum (v6: over the pseudo-header), token after 4 bytes."""
    body = head + b"\0\0\0\0" + token
    if probe.family == 4:
        csum = checksum(body)
    else:
        pseudo = (ipaddress.IPv6Address(probe.src).packed + ipaddress.IPv6Address(probe.dst).packed
                  + struct.pack("!I3xB", len(body), 58))
        csum = checksum(pseudo + body)
    return body[:2] + struct.pack("!H", csum) + body[4:]


def checksum(data: bytes) -> int:
    """RFC 1071: the one's complement of the one's complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@dataclass(frozen=True)
class Pools:
    """Where probe fields come from when a rule does not say: per family, sources and
    destinations (the target's own addresses, addresses routed beyond it, and others)."""

    src: dict[int, list[str]]
    dst: dict[int, list[str]]


def _pick(values: iv.Ivs | None, pool: list[int], rng: random.Random) -> int:
    if values is None:
        return rng.choice(pool)
    low, high = rng.choice(values)
    return rng.choice([low, high, rng.randint(low, high)])


def _edges(values: iv.Ivs | None, top: int) -> list[int]:
    """First and last of each range, and the values just outside them."""
    if values is None:
        return []
    out = []
    for low, high in values[:4]:
        out += [low, high] + ([low - 1] if low > 0 else []) + ([high + 1] if high < top else [])
    return out


def _base(box: Box, pools: Pools, rng: random.Random) -> Probe | None:
    f = box.family
    protos = [p for p in PROTOCOLS[f] if box.proto is None or iv.contains(box.proto, iv.span(p, p))]
    if not protos and box.proto is not None:
        protos = [p for low, high in box.proto for p in range(low, min(high, low + 300) + 1)
                  if p not in UNUSABLE and (p, f) not in ((1, 6), (58, 4))][:1]
    if not protos:
        return None
    src = _pick(box.src, [int(ipaddress.ip_address(a)) for a in pools.src[f]], rng)
    dst = _pick(box.dst, [int(ipaddress.ip_address(a)) for a in pools.dst[f]], rng)
    sport = _pick(box.sport, [40000, 1024, 53, 123], rng)
    dport = _pick(box.dport, [22, 80, 443, 53, 8080], rng)
    icmp = _pick(box.icmp, [0x0800 if f == 4 else 0x8000], rng)
    flags = _pick(box.flags, list(TCP_FLAGS), rng)
    return Probe(f, rng.choice(protos), iv.address_text(src, f), iv.address_text(dst, f), sport, dport,
                 icmp, flags)


def boundary_probes(ruleset: Ruleset, pools: Pools, rng: random.Random) -> list[Probe]:
    out: list[Probe] = []
    for rule in ruleset.rules:
        for box in rule.cond.boxes[:4]:
            base = _base(box, pools, rng)
            if base is None:
                continue
            out.append(replace(base, why=f"inside rule {rule.number}"))
            for dim, field in (("src", "src"), ("dst", "dst"), ("sport", "sport"), ("dport", "dport"),
                               ("icmp", "icmp"), ("flags", "flags")):
                for value in _edges(box.get(dim), box.top(dim)):
                    if dim in ("src", "dst"):
                        shown: object = iv.address_text(value, box.family)
                    else:
                        shown = value
                    edge = replace(base, **{field: shown})  # type: ignore[arg-type]
                    out.append(replace(edge, why=f"edge of rule {rule.number} {dim}"))
    return _usable(out)


def random_probes(pools: Pools, rng: random.Random, count: int) -> list[Probe]:
    out = []
    for _ in range(count):
        f = rng.choice((4, 6))
        box = Box(f)
        base = _base(box, pools, rng)
        assert base is not None
        out.append(replace(base, sport=rng.randint(0, 65535) if rng.random() < 0.3 else base.sport,
                           dport=rng.randint(0, 65535) if rng.random() < 0.3 else base.dport,
                           icmp=rng.randint(0, 0xFFFF) if rng.random() < 0.3 else base.icmp, why="random"))
    return _usable(out)


# ICMP types a probe must not carry: they change the target's routing or neighbours.
_ICMP_AVOID = {4: {5, 9, 10}, 6: {133, 134, 135, 136, 137, 138}}


def _usable(probes: Iterable[Probe]) -> list[Probe]:
    out, seen = [], set()
    for p in probes:
        if p.proto in (1, 58) and (p.icmp >> 8) in _ICMP_AVOID[p.family]:
            continue
        key = (p.family, p.proto, p.src, p.dst, p.sport, p.dport, p.icmp, p.flags)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


# --- sending and watching --------------------------------------------------------------------------

def _raw_sockets(ns: Namespace, protos: set[tuple[int, int]]) -> list[socket.socket]:
    out = []
    with ns.enter():
        for family, proto in sorted(protos):
            s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_RAW, proto)
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            s.setblocking(False)
            out.append(s)
    return out


def _tokens(data: bytes, run: int) -> Iterable[int]:
    at = data.find(MAGIC)
    while at >= 0 and at + TOKEN.size <= len(data):
        _magic, got_run, index = TOKEN.unpack_from(data, at)
        if got_run == run:
            yield index
        at = data.find(MAGIC, at + 1)


def send_and_observe(sender: Namespace, send_if: str, src_mac: str, dst_mac: str, target: Namespace,
                     receiver: Namespace, recv_if: str, probes: Sequence[Probe], run: int) -> list[str]:
    """Each probe's fate: "local", "forwarded" or "none" (both would mean a duplicate: "both")."""
    protos = {(p.family, p.proto) for p in probes}
    local = _raw_sockets(target, protos)
    with receiver.enter():
        capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    with sender.enter():
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    socks = [*local, capture]
    seen: dict[int, set[str]] = {}
    try:
        capture.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        capture.bind((recv_if, ETH_P_ALL))
        capture.setblocking(False)
        tx.bind((send_if, 0))
        for index, probe in enumerate(probes):
            tx.send(probe.frame(src_mac, dst_mac, TOKEN.pack(MAGIC, run, index)))
            time.sleep(PACE)
            if index % 64 == 63:
                _drain(socks, capture, run, seen, 0.0)
        _drain(socks, capture, run, seen, QUIET)
    finally:
        for s in [*socks, tx]:
            s.close()
    out = []
    for index in range(len(probes)):
        where = seen.get(index, set())
        out.append("none" if not where else ("both" if len(where) > 1 else where.pop()))
    return out


def _drain(socks: list[socket.socket], capture: socket.socket, run: int, seen: dict[int, set[str]],
           quiet: float) -> None:
    while True:
        ready, _, _ = select.select(socks, [], [], quiet)
        if not ready:
            return
        for s in ready:
            while True:
                try:
                    data = s.recv(65535)
                except BlockingIOError:
                    break
                where = "forwarded" if s is capture else "local"
                for index in _tokens(data, run):
                    seen.setdefault(index, set()).add(where)
