"""What a packet trace follows (TraceSpec) and what it reports (TraceEvent); pure, no kernel.

A TraceSpec is checked when it is made: every error names its field, so the gRPC layer can
answer INVALID_ARGUMENT with it. The filter is compiled into the tracer's BPF programs as -D
defines (`filter_cflags`): matching happens in the kernel, and only matching packets cost a
ring-buffer record.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import sys
from dataclasses import dataclass

from dataplane import protocols

MAX_DURATION_S = 600.0
DEFAULT_DURATION_S = 30.0
DEFAULT_MAX_EVENTS = 10_000
MAX_EVENTS = 1_000_000
PORT_MIN, PORT_MAX = 1, 65535

_FAMILY_OF_PROTOCOL = {"icmp": socket.AF_INET, "icmpv6": socket.AF_INET6}
_ADDR_WORDS = 4  # a filter address is compared as four 32-bit words (IPv4 in the first)


class TraceSpecError(ValueError):
    """An invalid TraceSpec; `field` names the offending field, the message starts with it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def _check_int(field: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TraceSpecError(field, f"must be an integer, not {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise TraceSpecError(field, f"{value} is outside {low}..{high}")


@dataclass(frozen=True)
class TraceSpec:
    """Which packets to follow, and for how long.

    host: an address or prefix ("10.0.0.1", "2001:db8::/32") matched against source OR
    destination; protocol: tcp|udp|icmp|icmpv6|sctp; port: source OR destination port (only
    TCP, UDP and SCTP have ports). The tracer unloads itself after `duration_s` seconds (at
    most 600) or `max_events` events, whichever comes first.
    """

    host: str | None = None
    protocol: str | None = None
    port: int | None = None
    duration_s: float = DEFAULT_DURATION_S
    max_events: int = DEFAULT_MAX_EVENTS

    def __post_init__(self) -> None:
        if self.host is not None:
            self._check_host(self.host)
        if self.protocol is not None:
            if not isinstance(self.protocol, str) or self.protocol.lower() not in protocols.NUMBERS:
                raise TraceSpecError("protocol",
                                     f"{self.protocol!r} is not one of {', '.join(protocols.NUMBERS)}")
            object.__setattr__(self, "protocol", self.protocol.lower())
        if self.port is not None:
            _check_int("port", self.port, PORT_MIN, PORT_MAX)
            if self.protocol is not None and self.protocol not in protocols.PORTED:
                raise TraceSpecError("port", f"{self.protocol} has no ports: drop the port or use "
                                             f"one of {', '.join(sorted(protocols.PORTED))}")
        self._check_duration()
        _check_int("max_events", self.max_events, 1, MAX_EVENTS)
        self._check_family_agrees()

    @staticmethod
    def _check_host(host: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        if not isinstance(host, str):
            raise TraceSpecError("host", f"must be an address or prefix string, not {host!r}")
        try:
            return ipaddress.ip_network(host, strict=True)
        except ValueError as exc:
            raise TraceSpecError("host", f"{host!r} is not an IP address or prefix ({exc})") from None

    def _check_duration(self) -> None:
        value = self.duration_s
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise TraceSpecError("duration_s", f"must be a number of seconds, not {value!r}")
        if not 0 < value <= MAX_DURATION_S:
            raise TraceSpecError("duration_s", f"{value} is outside (0, {MAX_DURATION_S:g}] seconds")

    def _check_family_agrees(self) -> None:
        family = _FAMILY_OF_PROTOCOL.get(self.protocol or "")
        if family is not None and self.host is not None and self.family != family:
            other = "icmpv6" if self.protocol == "icmp" else "icmp"
            raise TraceSpecError("protocol", f"{self.protocol} never carries {self.host}: use {other}")

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        return None if self.host is None else ipaddress.ip_network(self.host)

    @property
    def family(self) -> int | None:
        """AF_INET/AF_INET6 if the host or the protocol pins one, else None (both)."""
        net = self.network
        if net is not None:
            return socket.AF_INET if net.version == 4 else socket.AF_INET6
        return _FAMILY_OF_PROTOCOL.get(self.protocol or "")

    @property
    def has_criteria(self) -> bool:
        return any(v is not None for v in (self.host, self.protocol, self.port))


def filter_cflags(spec: TraceSpec) -> list[str]:
    """The spec as the -D defines xdp/trace/trace_parse.h's tt_match() reads."""
    out: list[str] = []
    if spec.family is not None:
        out.append(f"-DTT_FILTER_FAMILY={spec.family}")
    if spec.protocol is not None:
        out.append(f"-DTT_FILTER_PROTO={protocols.NUMBERS[spec.protocol]}")
    if spec.port is not None:
        out.append(f"-DTT_FILTER_PORT={spec.port}")
    net = spec.network
    if net is not None:
        out.append("-DTT_FILTER_HOST=1")
        words, masks = _words(net.network_address.packed), _words(net.netmask.packed)
        for i in range(_ADDR_WORDS):
            out += [f"-DTT_HOST_W{i}=0x{words[i]:08x}U", f"-DTT_HOST_M{i}=0x{masks[i]:08x}U"]
    return out


def _words(packed: bytes) -> list[int]:
    """16 bytes (IPv4 left-aligned) as the four u32 a little- or big-endian CPU loads from them."""
    padded = packed.ljust(4 * _ADDR_WORDS, b"\0")
    return [int.from_bytes(padded[4 * i: 4 * i + 4], sys.byteorder) for i in range(_ADDR_WORDS)]


@dataclass(frozen=True)
class TraceEvent:
    """One sighting of a matching packet.

    ts_ns: CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns); hook: where (see
    dataplane.trace.tracer.HOOK_NAMES); ifindex/ifname: the device, in the packet's own network
    namespace (for fib/fib6: ifindex is the looked-up flow's input interface, 1 = loopback for
    locally generated packets, and ifname is None; the chosen device is in detail);
    family: socket.AF_INET/AF_INET6, 0 if not IP;
    src/dst: addresses ("" if not IP); proto: IP protocol number; sport/dport: 0 without ports;
    detail: what the hook decided (XDP action, TC verdict, route, freeing function);
    drop_reason: the kernel's `enum skb_drop_reason` name, without its SKB_DROP_REASON_
    prefix (as the kfree_skb tracepoint prints it), for kfree_skb events only.
    """

    ts_ns: int
    hook: str
    ifindex: int
    ifname: str | None
    family: int
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    detail: str
    drop_reason: str | None
