"""Hostile packet generators for the fuzz tests: valid tunnel and plain frames, then mutations.

Frames are built byte by byte (no scapy: fast, and every length field is ours to falsify) from
segments that remember where each header starts and where its length fields are, so mutations can
aim at header boundaries and lie in exactly one length field. Every choice is drawn from a
`Source`: `HypothesisSource` (shrinking, through `st.data()`) or `RandomSource` (a seeded
`random.Random`, for long runs and for the generator coverage check).
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from hypothesis import strategies as st

from .hostile_model import (
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_IP,
    ETH_P_IPV6,
    ETH_P_TEB,
    GENEVE_FLAG_C,
    GENEVE_FLAG_O,
    IPPROTO_AH,
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_ROUTING,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    VXLAN_FLAG_I,
)

T = TypeVar("T")

ETH_P_ARP = 0x0806
ETH_P_LLDP = 0x88CC
NON_IP_ETHERTYPES = (ETH_P_ARP, ETH_P_LLDP, 0x88E5, 0x0000, 0xFFFF)  # ARP, LLDP, MACsec, odd ones
GRE = 47
# Address pools: the fuzz ACL and classifiers (test_xdp_hostile.py) match some of these.
V4_ADDRS = ("10.1.0.2", "10.2.0.1", "10.66.0.9", "192.0.2.1", "192.0.2.2", "0.0.0.0", "255.255.255.255")
V6_ADDRS = ("fd00:1::2", "fd00:2::1", "fd66::9", "2001:db8::1", "2001:db8::2", "::", "ff02::1")
PORTS = (0, 7, 23, 53, 443, 4789, 6081, 5000, 65535)
UNICAST_MAC = b"\x02\x00\x00\x00\x00\x99"
MACS = (UNICAST_MAC, b"\xff" * 6, b"\x01\x00\x5e\x00\x00\x01", b"\x33\x33\x00\x00\x00\x01")


class Source(Protocol):
    def integer(self, lo: int, hi: int) -> int: ...
    def choice(self, options: Sequence[T]) -> T: ...
    def chance(self, p: float) -> bool: ...
    def blob(self, max_len: int) -> bytes: ...


class RandomSource:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options: Sequence[T]) -> T:
        return self.rng.choice(options)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def blob(self, max_len: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_len))


class HypothesisSource:
    """Draws through hypothesis so that failures shrink (chance() shrinks towards False)."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        return int(self.data.draw(st.integers(lo, hi)))

    def choice(self, options: Sequence[T]) -> T:
        return options[self.integer(0, len(options) - 1)]

    def chance(self, p: float) -> bool:
        return self.integer(0, 999) >= 1000 - int(p * 1000)  # shrinks to 0: False

    def blob(self, max_len: int) -> bytes:
        return bytes(self.data.draw(st.binary(max_size=max_len)))


# --- frames as segments -----------------------------------------------------------------------


@dataclass
class Seg:
    name: str
    data: bytes
    fields: tuple[tuple[str, int, int], ...] = ()  # (field, offset in the segment, size)


@dataclass
class Frame:
    segs: list[Seg] = field(default_factory=list)

    def bytes(self) -> bytes:
        return b"".join(s.data for s in self.segs)

    def boundaries(self) -> list[int]:
        out, off = [], 0
        for s in self.segs:
            out.append(off)
            off += len(s.data)
        return [*out, off]

    def fields(self) -> list[tuple[str, int, int]]:
        out, off = [], 0
        for s in self.segs:
            out += [(f"{s.name}.{name}", off + o, size) for name, o, size in s.fields]
            off += len(s.data)
        return out


def _len(segs: list[Seg]) -> int:
    return sum(len(s.data) for s in segs)


def l4(src: Source, proto: int, payload: bytes) -> list[Seg]:
    sport, dport = src.choice(PORTS), src.choice(PORTS)
    if src.chance(0.3):
        dport = src.integer(0, 65535)
    body = [Seg("payload", payload)]
    if proto == IPPROTO_TCP:
        opts = b"\x01" * (4 * src.integer(0, 3) if src.chance(0.2) else 0)
        doff = 5 + len(opts) // 4
        flags = src.choice((0x02, 0x02, 0x12, 0x10, 0x03, 0xC2))  # SYN, SYN-ACK, ACK, SYN-FIN, SYN+ECN
        hdr = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, doff << 4, flags, 1024, 0, 0) + opts
        return [Seg("tcp", hdr, (("doff", 12, 1), ("dport", 2, 2), ("flags", 13, 1))), *body]
    if proto == IPPROTO_UDP:
        hdr = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
        return [Seg("udp", hdr, (("len", 4, 2), ("dport", 2, 2))), *body]
    if proto == IPPROTO_SCTP:
        return [Seg("sctp", struct.pack("!HHII", sport, dport, 0, 0), (("dport", 2, 2),)), *body]
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        kind = src.choice((8, 0, 3) if proto == IPPROTO_ICMP else (128, 129, 1))  # echo, reply, unreachable
        head = struct.pack("!BBHI", kind, src.choice((0, 0, 4)), 0, 1)
        return [Seg("icmp", head, (("type", 0, 1), ("code", 1, 1))), *body]
    return body


def ipv4(src: Source, proto: int, inner: list[Seg]) -> list[Seg]:
    opts = b"\x01" * (4 * src.integer(1, 10)) if src.chance(0.15) else b""
    ihl = 5 + len(opts) // 4
    frag = src.choice((0x4000, 0x2000, 0x2001, 185)) if src.chance(0.1) else 0
    a, b = (bytes(map(int, src.choice(V4_ADDRS).split("."))) for _ in range(2))
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + _len(inner), 1, frag, 64, proto, 0, a, b)
    return [Seg("ipv4", hdr + opts, (("ver_ihl", 0, 1), ("tot_len", 2, 2), ("frag", 6, 2), ("proto", 9, 1))),
            *inner]


def _v6(addr: str) -> bytes:
    return ipaddress.IPv6Address(addr).packed


def ipv6(src: Source, proto: int, inner: list[Seg]) -> list[Seg]:
    exts = [src.choice((IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_AH))
            for _ in range(src.integer(0, 8) if src.chance(0.3) else 0)]
    chain: list[Seg] = []
    for ext, nxt in zip(exts, [*exts[1:], proto], strict=False):
        if ext == IPPROTO_FRAGMENT:
            off = src.choice((0, 0, 1, 0xFFF8))
            chain.append(Seg("ipv6 fragment", struct.pack("!BBHI", nxt, 0, off, 7),
                             (("nexthdr", 0, 1), ("frag_off", 2, 2))))
        elif ext == IPPROTO_AH:
            words = src.choice((4, 4, 6))  # 12 fixed bytes + an ICV; (len + 2) * 4 a multiple of 8
            icv = 4 * (words + 2) - 12
            body = struct.pack("!HII", 0, 0x100, 1) + src.blob(icv).ljust(icv, b"\xa5")  # SPI, sequence
            chain.append(Seg("ipv6 ah", struct.pack("!BB", nxt, words) + body,
                             (("nexthdr", 0, 1), ("len", 1, 1))))
        else:
            words = src.integer(0, 2)
            body = b"\x01\x04" + bytes(4 + 8 * words)  # PadN over the rest
            chain.append(Seg(f"ipv6 ext {ext}", struct.pack("!BB", nxt, words) + body,
                             (("nexthdr", 0, 1), ("hdrlen", 1, 1))))
    first = exts[0] if exts else proto
    payload_len = _len(chain) + _len(inner)
    hdr = struct.pack("!IHBB16s16s", 6 << 28, payload_len, first, 64,
                      _v6(src.choice(V6_ADDRS)), _v6(src.choice(V6_ADDRS)))
    return [Seg("ipv6", hdr, (("ver", 0, 1), ("payload_len", 4, 2), ("nexthdr", 6, 1))), *chain, *inner]


def ether(dst: bytes, ethertype: int) -> Seg:
    return Seg("ethernet", dst + b"\x02\x00\x00\x00\x00\x02" + struct.pack("!H", ethertype),
               (("dst", 0, 1), ("ethertype", 12, 2)))


def l2(src: Source, dst: bytes, ethertype: int) -> list[Seg]:
    """Ethernet, then (1 time in 5) 1-3 VLAN tags: 802.1Q or 802.1ad, three being one too many."""
    tags = src.choice((1, 1, 2, 2, 3)) if src.chance(0.2) else 0
    tpids = [src.choice((ETH_P_8021Q, ETH_P_8021AD)) for _ in range(tags)]
    segs = [ether(dst, tpids[0] if tpids else ethertype)]
    for i in range(tags):
        nxt = tpids[i + 1] if i + 1 < tags else ethertype
        segs.append(Seg("vlan", struct.pack("!HH", src.integer(0, 0xFFFF), nxt), (("ethertype", 2, 2),)))
    return segs


def non_ip_frame(src: Source) -> list[Seg]:
    """An ARP request (or LLDP, or another non-IP ethertype) with random bytes behind it."""
    ethertype = src.choice(NON_IP_ETHERTYPES)
    if ethertype == ETH_P_ARP:
        body = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, 1, UNICAST_MAC, bytes((10, 1, 0, 2)),
                           bytes(6), bytes((10, 2, 0, 1)))
    else:
        body = src.blob(46)
    return [*l2(src, src.choice(MACS), ethertype), Seg("payload", body)]


def ip_frame(src: Source, depth: int = 0) -> list[Seg]:
    """Ethernet + IPv4/IPv6 + TCP/UDP/ICMP/SCTP/other; sometimes a tunnel packet itself."""
    v6 = src.chance(0.5)
    if depth < 1 and src.chance(0.1):
        inner = tunnel_payload(src, depth + 1)  # a tunnel inside the tunnel: decapped once only
        return [*l2(src, src.choice(MACS), ETH_P_IPV6 if inner[0].name == "ipv6" else ETH_P_IP), *inner]
    proto = src.choice((IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_ICMPV6 if v6 else IPPROTO_ICMP, GRE))
    segs = l4(src, proto, src.blob(24))
    segs = ipv6(src, proto, segs) if v6 else ipv4(src, proto, segs)
    ethertype = ETH_P_IPV6 if v6 else ETH_P_IP
    if src.chance(0.05):
        ethertype = src.choice((ETH_P_ARP, ETH_P_8021Q, ETH_P_8021AD, ETH_P_IP, ETH_P_IPV6))
    return [*l2(src, src.choice(MACS), ethertype), *segs]


def geneve_options(src: Source) -> bytes:
    opts = b""
    for _ in range(src.integer(0, 4)):
        words = src.integer(0, 4)
        opt_type = src.integer(0, 0x7F) | (0x80 if src.chance(0.1) else 0)
        data = src.blob(4 * words).ljust(4 * words, b"\xab")
        opts += struct.pack("!HBB", src.integer(0, 0xFFFF), opt_type, words) + data
    return opts


def tunnel_header(src: Source, kind: str, vni: int) -> Seg:
    if kind == "vxlan":
        flags = VXLAN_FLAG_I if src.chance(0.95) else src.integer(0, 255)
        return Seg("vxlan", struct.pack("!B3xI", flags, vni << 8), (("flags", 0, 1), ("vni", 4, 3)))
    opts = geneve_options(src)
    version = 0 if src.chance(0.95) else src.integer(1, 3)
    flags = (GENEVE_FLAG_O if src.chance(0.05) else 0) | (GENEVE_FLAG_C if src.chance(0.05) else 0)
    proto = ETH_P_TEB if src.chance(0.95) else src.choice((ETH_P_IP, ETH_P_IPV6, 0))
    hdr = struct.pack("!BBHI", (version << 6) | (len(opts) // 4), flags, proto, vni << 8)
    return Seg("geneve", hdr + opts, (("ver_optlen", 0, 1), ("flags", 1, 1), ("proto", 2, 2), ("vni", 4, 3))
               + tuple((f"opt{i}.len", 8 + 4 * i + 3, 1) for i in range(len(opts) // 4)))


def tunnel_payload(src: Source, depth: int, vnis: Sequence[int] = (100, 200, 300, 999)) -> list[Seg]:
    """IP + UDP + VxLAN/Geneve + inner frame (no outer Ethernet)."""
    kind = src.choice(("vxlan", "geneve"))
    inner = non_ip_frame(src) if src.chance(0.1) else ip_frame(src, depth)
    hdr = tunnel_header(src, kind, src.choice(vnis) if src.chance(0.9) else src.integer(0, (1 << 24) - 1))
    dport = 4789 if kind == "vxlan" else 6081
    if src.chance(0.05):
        dport = src.choice((4789, 6081, 4790))
    payload = [hdr, *inner]
    udp = Seg("outer udp", struct.pack("!HHHH", 49152, dport, 8 + _len(payload), 0),
              (("len", 4, 2), ("dport", 2, 2)))
    segs = [udp, *payload]
    return ipv6(src, IPPROTO_UDP, segs) if src.chance(0.5) else ipv4(src, IPPROTO_UDP, segs)


def valid_frame(src: Source) -> Frame:
    """A well-formed plain or tunnel frame (tunnel 3 times in 4)."""
    if src.chance(0.25):
        return Frame(ip_frame(src))
    outer = tunnel_payload(src, 0)
    ethertype = ETH_P_IPV6 if outer[0].name == "ipv6" else ETH_P_IP
    return Frame([*l2(src, b"\x02\x00\x00\x00\x01\x02", ethertype), *outer])


# --- mutations ---------------------------------------------------------------------------------

MUTATIONS = ("none", "bitflip", "boundary", "length", "truncate", "append", "splice", "insert", "delete")


@dataclass(frozen=True)
class Seed:
    """Bytes to mutate, and where the headers of the frame they came from started."""

    data: bytes
    boundaries: tuple[int, ...]
    fields: tuple[tuple[str, int, int], ...]

    @classmethod
    def of(cls, frame: Frame) -> Seed:
        return cls(frame.bytes(), tuple(frame.boundaries()), tuple(frame.fields()))


def mutate(src: Source, frame: Frame | Seed) -> tuple[bytes, str]:
    """Applies 1-3 mutations; returns the bytes and a description for failure messages."""
    seed = Seed.of(frame) if isinstance(frame, Frame) else frame
    buf = bytearray(seed.data)
    done = []
    for _ in range(src.integer(1, 3)):
        kind = src.choice(MUTATIONS)
        if kind == "bitflip" and buf:
            pos = src.integer(0, len(buf) - 1)
            buf[pos] ^= 1 << src.integer(0, 7)
            done.append(f"bitflip@{pos}")
        elif kind == "boundary" and buf:
            pos = min(len(buf) - 1, max(0, src.choice(seed.boundaries) + src.integer(-2, 3)))
            buf[pos] = src.choice((0x00, 0xFF, 0x80, 0x01, 0x3F, 0x40, src.integer(0, 255)))
            done.append(f"byte@{pos}={buf[pos]:#x}")
        elif kind == "length" and seed.fields:
            name, pos, size = src.choice(seed.fields)
            value = _lie(src, int.from_bytes(buf[pos:pos + size], "big"), size)
            if pos + size <= len(buf):
                buf[pos:pos + size] = value.to_bytes(size, "big")
                done.append(f"{name}={value:#x}")
        elif kind == "truncate":
            n = src.choice((src.integer(0, len(buf)), src.choice(seed.boundaries) + src.integer(-1, 1)))
            del buf[max(0, n):]
            done.append(f"cut@{n}")
        elif kind == "append":
            buf += src.blob(16)
            done.append("append")
        elif kind == "splice" and len(buf) > 4:
            pos = src.integer(0, len(buf) - 1)
            chunk = src.blob(6)
            buf[pos:pos + len(chunk)] = chunk
            done.append(f"splice@{pos}")
        elif kind in ("insert", "delete") and buf:
            # Shifts every later header: lengths and offsets stop agreeing with the bytes.
            pos = src.choice((src.integer(0, len(buf)), src.choice(seed.boundaries)))
            if kind == "insert":
                buf[pos:pos] = src.blob(8)
            else:
                del buf[pos:pos + src.integer(1, 8)]
            done.append(f"{kind}@{pos}")
    return bytes(buf), ",".join(done) or "none"


def _lie(src: Source, value: int, size: int) -> int:
    top = (1 << (8 * size)) - 1
    return src.choice((0, 1, top, value + 1, max(0, value - 1), value + 4, max(0, value - 4),
                       value ^ 0x0F, src.integer(0, top))) & top


def hostile_packet(src: Source) -> tuple[bytes, str]:
    """A valid frame (untouched 1 time in 8), a mutated one, or random bytes."""
    roll = src.integer(0, 15)
    if roll == 0:
        return src.blob(96), "random bytes"
    frame = valid_frame(src)
    if roll < 3:
        return frame.bytes(), "valid"
    return mutate(src, frame)
