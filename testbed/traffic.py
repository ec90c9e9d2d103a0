"""Real traffic from inside namespaces: ICMP echo, UDP and TCP over plain sockets.

Every socket is created inside `ns.enter()`, so it belongs to that namespace for its whole life
and can then be used from the calling thread like any other socket; nothing runs outside the
namespaces the caller created. Ping uses the kernel's ICMP "ping sockets" (SOCK_DGRAM +
IPPROTO_ICMP/ICMPV6), not the `ping` binary (not installed everywhere): the kernel fills in the
identifier and checksum and hands each socket only the replies to its own requests.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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


# --- sessions: servers that answer, clients that say how it went --------------------------------------

@contextmanager
def _serving(sock: socket.socket, serve: Callable[[socket.socket, threading.Event], None]) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(sock, stop), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()


@contextmanager
def tcp_echo_server(ns: Namespace, address: str, port: int, idle: float = 1.0) -> Iterator[None]:
    """Accepts connections on address:port in `ns` and echoes each one's data until it closes."""
    with ns.enter():
        server = socket.socket(_family(address), socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    server.listen()
    server.settimeout(0.2)

    def serve(sock: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(idle)
                try:
                    while data := conn.recv(4096):
                        conn.sendall(data)
                except OSError:
                    pass

    with _serving(server, serve):
        yield


@contextmanager
def udp_server(ns: Namespace, address: str, port: int,
               answer: Callable[[bytes], bytes] = lambda data: data) -> Iterator[None]:
    """Answers each datagram to address:port in `ns` with `answer(payload)` (default: an echo)."""
    server = udp_socket(ns, address, port)
    server.settimeout(0.2)

    def serve(sock: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(RECV_BUFFER)
                sock.sendto(answer(data), addr)
            except (TimeoutError, OSError):
                continue

    with _serving(server, serve):
        yield


def tcp_exchange(ns: Namespace, address: str, port: int, payload: bytes,
                 timeout: float = 1.0) -> bytes | None:
    """Connects from `ns`, sends `payload`, returns what came back (None: no connection)."""
    with ns.enter():
        sock = socket.socket(_family(address), socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
            sock.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                got += chunk
            return got
        except OSError:
            return None


def tcp_session(ns: Namespace, address: str, port: int, payload: bytes, timeout: float = 1.0,
                src: str | None = None) -> str:
    """How a connection from `ns` (from `src` if given) with one echoed exchange went: "ok",
    "refused" (a RST), "unreachable" (an ICMP error), "timeout" (no answer to the SYN), "no echo",
    "short"."""
    with ns.enter():
        sock = socket.socket(_family(address), socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        if src is not None:
            sock.bind((src, 0))
        try:
            sock.connect((address, port))
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            return "unreachable" if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES) \
                else f"error {exc.errno}"
        got = b""
        try:
            sock.sendall(payload)
            while len(got) < len(payload) and (chunk := sock.recv(RECV_BUFFER)):
                got += chunk
        except (TimeoutError, OSError):
            return "no echo"
        return "ok" if got == payload else "short"


def udp_session(ns: Namespace, src: str, address: str, port: int, payload: bytes,
                timeout: float = 1.0) -> str:
    """One datagram from `src` (a connected socket in `ns`) and its answer: "ok <length>",
    "refused" (an ICMP port unreachable came back), or "none"."""
    sock = udp_socket(ns, src)
    with sock:
        sock.settimeout(timeout)
        sock.connect((address, port))
        sock.send(payload)
        try:
            return f"ok {len(sock.recv(RECV_BUFFER))}"
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "none"
