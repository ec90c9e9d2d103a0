"""Probe packets for the classifier tests: inside and at the edges of every rule of a set, and the
frames that carry them (scapy)."""

from __future__ import annotations

import ipaddress

import numpy as np
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP
from scapy.packet import Raw

from dataplane.match.columns import RuleColumns

from ..reference_matcher import ICMP_PROTOCOLS, IPV6_EXTENSIONS, PORT_PROTOCOLS, TCP_NEW, Packet

NON_FIRST_FRAG_OFFSET = 185  # 8-byte units: any non-zero offset makes a later fragment
# The protocols a rule for any protocol is probed with: with ports, and without.
ANY_PROTOS = (6, 17, 132, 47, 1)
TCP_NOT_NEW = (0x12, 0x10, 0x03)  # SYN-ACK, ACK, SYN-FIN: not a connection opening


def frame(p: Packet) -> bytes:
    """An Ethernet frame carrying the packet (ports in its L4 header where it has one)."""
    eth = Ether(src="02:00:00:00:00:02", dst="02:aa:00:00:00:01")
    src, dst = p.address("src"), p.address("dst")
    if p.family == 4:
        ip = IP(src=src, dst=dst, proto=p.proto, frag=NON_FIRST_FRAG_OFFSET if p.fragment else 0)
    else:
        ip = IPv6(src=src, dst=dst, nh=p.proto)
        if p.fragment:  # nh: the Fragment header's (scapy fills it in)
            ip = IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(nh=p.proto, offset=NON_FIRST_FRAG_OFFSET, m=1)
    payload = Raw(b"tidegate-probe-" * 3)
    if p.fragment or p.proto not in (*PORT_PROTOCOLS, *ICMP_PROTOCOLS):
        return bytes(eth / ip / payload)
    l4 = {6: lambda: TCP(sport=p.sport, dport=p.dport, flags=p.tcp_flags),
          17: lambda: UDP(sport=p.sport, dport=p.dport), 132: lambda: SCTP(sport=p.sport, dport=p.dport),
          # ICMP and ICMPv6 alike (ICMPv6 may be probed over IPv4 too): type, code, checksum (unchecked)
          1: lambda: Raw(bytes([p.icmp_type, p.icmp_code, 0, 0])),
          58: lambda: Raw(bytes([p.icmp_type, p.icmp_code, 0, 0]))}[p.proto]()
    return bytes(eth / ip / l4 / payload)


def _address(raw: bytes, family: int) -> str:
    return str(ipaddress.ip_address(raw[:4] if family == 4 else raw))


def _edges(addr: np.ndarray, length: int, family: int) -> tuple[bytes, bytes]:
    """First and last address of a prefix (16 bytes each)."""
    bits = 32 if family == 4 else 128
    first = int.from_bytes(bytes(addr[: bits // 8]), "big")
    last = first | ((1 << (bits - length)) - 1)
    return tuple(a.to_bytes(bits // 8, "big").ljust(16, b"\0") for a in (first, last))  # type: ignore[return-value]


def edge_probes(cols: RuleColumns, rows: np.ndarray | None = None, seed: int = 7) -> list[Packet]:
    """For each rule (or those at `rows`): packets at the first and last addresses of its
    prefixes, at the ends of its port ranges and just outside them, with its protocol (or, for
    any protocol, one with ports and one without)."""
    rng = np.random.default_rng(seed)
    out: list[Packet] = []
    for i in (range(len(cols)) if rows is None else rows.tolist()):
        family = int(cols.family[i]) or int(rng.choice([4, 6]))
        if family == 6 and not cols.proto_any[i] and int(cols.proto[i]) in IPV6_EXTENSIONS:
            continue  # never a packet's protocol over IPv6
        s_first, s_last = _edges(cols.src_addr[i], int(cols.src_len[i]), family)
        d_first, d_last = _edges(cols.dst_addr[i], int(cols.dst_len[i]), family)
        protos = ([int(cols.proto[i])] if not cols.proto_any[i]
                  else [int(x) for x in rng.choice(ANY_PROTOS, 2, replace=False)])
        slo, shi, dlo, dhi = (int(cols.sport_lo[i]), int(cols.sport_hi[i]), int(cols.dport_lo[i]),
                              int(cols.dport_hi[i]))
        ports = [(slo, dlo), (shi, dhi), (slo, min(dhi + 1, 0xFFFF)), (max(slo - 1, 0), dhi)]
        corners = [(s_first, d_first), (s_last, d_last), (s_first, d_last), (s_last, d_first)]
        for proto in protos:
            for (src, dst), (sport, dport) in zip(corners, ports, strict=True):
                flags = TCP_NEW if proto == 6 else 0
                out.append(Packet(family, src, dst, proto, sport, dport, tcp_flags=flags))
        out.extend(_l4_probes(cols, i, family, s_first, d_first, slo, dlo))
    return out


def _l4_probes(cols: RuleColumns, i: int, family: int, src: bytes, dst: bytes, sport: int,
               dport: int) -> list[Packet]:
    """For a rule with an ICMP type/code or SYN: its own packet, ones that differ in that field
    only, and a later fragment."""
    proto = int(cols.proto[i])
    out = [Packet(family, src, dst, proto, fragment=True)]
    if cols.has_icmp_type[i] or cols.has_icmp_code[i]:
        kind, code = int(cols.icmp_type[i]), int(cols.icmp_code[i])
        for t, c in ((kind, code), ((kind + 1) % 256, code), (kind, (code + 1) % 256)):
            out.append(Packet(family, src, dst, proto, icmp_type=t, icmp_code=c))
    if cols.syn[i]:
        for flags in (TCP_NEW, *TCP_NOT_NEW):
            out.append(Packet(family, src, dst, proto, sport, dport, tcp_flags=flags))
    return out if len(out) > 1 else []


def tunnel_free(p: Packet) -> Packet:
    """The packet, moved off the UDP tunnel ports (inspected for decap before the ACL runs)."""
    if p.proto == 17 and p.dport in (4789, 6081):
        return Packet(p.family, p.src, p.dst, p.proto, p.sport, p.dport + 1, p.fragment, p.icmp_type,
                      p.icmp_code, p.tcp_flags)
    return p
