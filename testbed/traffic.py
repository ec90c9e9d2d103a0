"""Real traffic from inside namespaces: ICMP echo and UDP over plain sockets.

Every socket is created inside `ns.enter()`, so it belongs to that namespace for its whole life
and can then be used from the calling thread like any other socket; nothing runs outside the
namespaces the caller created. Ping uses the kernel's ICMP "ping sockets" (SOCK_DGRAM +
IPPROTO_ICMP/ICMPV6), not the `ping` binary (not installed everywhere): the kernel fills in the
identifier and checksum and hands each socket only the replies to its own requests.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

from testbed.netns import Namespace, sysctl

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
RECV_BUFFER = 65535
IP_RECVTTL = 12  # include/uapi/linux/in.h; Python's socket module lacks the constant


def _family(address: str) -> int:
    return socket.AF_INET if ipaddress.ip_address(address).version == 4 else socket.AF_INET6


def allow_ping_sockets(ns: Namespace) -> None:
    """Ping sockets are open only to groups in net.ipv4.ping_group_range (per namespace, v4 and v6;
    a new namespace starts with the empty range "1 0")."""
    gid = os.getgid()
    sysctl(ns, "net.ipv4.ping_group_range", f"{gid} {gid}")


@dataclass(frozen=True)
class PingResult:
    sent: int
    received: int

    @property
    def ok(self) -> bool:
        return self.sent > 0 and self.received == self.sent


def ping(ns: Namespace, dst: str, *, src: str | None = None, count: int = 3, timeout: float = 1.0,
         payload: bytes = b"tidegate-ping") -> PingResult:
    """Echo requests from `ns` to `dst`, one at a time; each waits up to `timeout` for its reply."""
    family = _family(dst)
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    request, reply = ((ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY) if family == socket.AF_INET
                      else (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY))
    allow_ping_sockets(ns)
    with ns.enter():
        sock = socket.socket(family, socket.SOCK_DGRAM, proto)
    received = 0
    with sock:
        if src is not None:
            sock.bind((src, 0))
        for seq in range(1, count + 1):
            # type, code, checksum (kernel), identifier (kernel: the socket's "port"), sequence
            sock.sendto(struct.pack("!BBHHH", request, 0, 0, 0, seq) + payload, (dst, 0))
            if _await_reply(sock, reply, seq, timeout):
                received += 1
    return PingResult(count, received)


def _await_reply(sock: socket.socket, reply_type: int, seq: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(RECV_BUFFER)
        except TimeoutError:
            return False
        kind, _code, _csum, _ident, got_seq = struct.unpack_from("!BBHHH", data)
        if kind == reply_type and got_seq == seq:
            return True
    return False


def udp_socket(ns: Namespace, address: str, port: int = 0) -> socket.socket:
    """A UDP socket living in `ns`, bound to `address`:`port` (0 = any free port)."""
    with ns.enter():
        sock = socket.socket(_family(address), socket.SOCK_DGRAM)
    try:
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock


def send_udp(sock: socket.socket, dst: str, port: int, payloads: Iterable[bytes]) -> int:
    sent = 0
    for payload in payloads:
        sock.sendto(payload, (dst, port))
        sent += 1
    return sent


def receive_udp(sock: socket.socket, *, expect: int, timeout: float) -> list[tuple[bytes, str]]:
    """Datagrams (payload, source address) until `expect` have arrived or none came for `timeout`.

    Ask for more than should arrive to also check that nothing else does: the call then ends with
    a `timeout` of silence after the last datagram."""
    out: list[tuple[bytes, str]] = []
    sock.settimeout(timeout)
    while len(out) < expect:
        try:
            data, addr = sock.recvfrom(RECV_BUFFER)
        except TimeoutError:
            break
        out.append((data, addr[0]))
    return out


def udp_echo_once(server: socket.socket, timeout: float) -> bool:
    """Answer one datagram on `server` with its own payload; False if none arrived in time."""
    server.settimeout(timeout)
    try:
        data, addr = server.recvfrom(RECV_BUFFER)
    except TimeoutError:
        return False
    server.sendto(data, addr)
    return True


@dataclass(frozen=True)
class Datagram:
    payload: bytes
    src: str
    ttl: int  # IPv4 TTL on arrival: 64 minus the routers it crossed (Linux sends with 64)


def receive_udp_ttl(sock: socket.socket, *, expect: int, timeout: float) -> list[Datagram]:
    """Like `receive_udp` on an IPv4 socket, also reporting each datagram's TTL on arrival.

    The TTL tells the path: every router on the way decrements it, so a detour through a
    service shows up as a lower value than the direct path."""
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    out: list[Datagram] = []
    sock.settimeout(timeout)
    while len(out) < expect:
        try:
            data, ancdata, _flags, addr = sock.recvmsg(RECV_BUFFER, socket.CMSG_SPACE(4))
        except TimeoutError:
            break
        ttl = next((int.from_bytes(cdata[:4], sys.byteorder)
                    for level, kind, cdata in ancdata
                    if level == socket.IPPROTO_IP and kind == socket.IP_TTL), -1)
        out.append(Datagram(data, addr[0], ttl))
    return out
