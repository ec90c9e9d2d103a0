"""The answer a reject rule sends (docs/dataplane.md, "Reject"), written from the description
alone: which packets get one, and the exact bytes of it. Used by the hostile-packet reference
(hostile_model.py); checksums are computed by RFC 1071 (testbed.probes.checksum), not taken from
the program.
"""

from __future__ import annotations

import struct

from testbed.probes import checksum

ETH_ALEN = 6
TTL = 64
IPV4_DF = 0x4000
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_ICMPV6 = 1, 6, 58
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
ICMP_ERRORS = (3, 4, 5, 11, 12)  # RFC 1122 3.2.2: no error about an error
QUOTE_MAX = 124


def answerable(buf: bytes, family: int, src: bytes, dst: bytes, proto: int, l4_present: bool, tcp_flags: int,
               icmp_type: int) -> bool:
    """Whether an answer is due: not to a multicast or broadcast frame or address, a non-first
    fragment, an RST, or an ICMP/ICMPv6 error."""
    if buf[0] & 0x01 or not l4_present:
        return False
    if family == 4:
        if dst[0] & 0xF0 == 0xE0 or dst == b"\xff\xff\xff\xff":
            return False
        if src[0] & 0xF0 >= 0xE0 or src == bytes(4):
            return False
    elif dst[0] == 0xFF or src[0] == 0xFF:
        return False
    if proto == IPPROTO_TCP:
        return not tcp_flags & TCP_RST
    if proto == IPPROTO_ICMP:
        return icmp_type not in ICMP_ERRORS
    if proto == IPPROTO_ICMPV6:
        return icmp_type >= 128
    return True


def _swapped_l2(buf: bytes, l3_off: int) -> bytes:
    return buf[ETH_ALEN:2 * ETH_ALEN] + buf[:ETH_ALEN] + buf[2 * ETH_ALEN:l3_off]


def _ip(family: int, src: bytes, dst: bytes, proto: int, payload: int) -> bytes:
    """The answer's IP header: from the rejected packet's destination back to its source."""
    if family == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload, 0, IPV4_DF, TTL, proto, 0, dst, src)
        return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return struct.pack("!IHBB16s16s", 6 << 28, payload, proto, TTL, dst, src)


def _pseudo(family: int, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if family == 4:
        return struct.pack("!4s4sBBH", dst, src, 0, proto, length)
    return struct.pack("!16s16sI3xB", dst, src, length, proto)


def answer(buf: bytes, family: int, src: bytes, dst: bytes, proto: int, l3_off: int, l4_off: int,
           l3_end: int) -> bytes:
    """The frame the program sends back for `buf` (an answerable packet judged as rejected)."""
    if proto == IPPROTO_TCP:
        sport, dport, seq, ack_seq, off_flags = struct.unpack_from("!HHIIH", buf, l4_off)
        doff, flags = off_flags >> 12, off_flags & 0xFF
        occupied = l3_end - l4_off - doff * 4 + bool(flags & TCP_SYN) + bool(flags & TCP_FIN)
        if flags & TCP_ACK:  # RFC 9293 3.10.7.1: <SEQ=SEG.ACK><CTL=RST>
            rst_seq, rst_ack, rst_flags = ack_seq, 0, TCP_RST
        else:  # <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
            rst_seq, rst_ack, rst_flags = 0, (seq + occupied) & 0xFFFFFFFF, TCP_RST | TCP_ACK
        tcp = struct.pack("!HHIIBBHHH", dport, sport, rst_seq, rst_ack, 5 << 4, rst_flags, 0, 0, 0)
        csum = checksum(_pseudo(family, src, dst, IPPROTO_TCP, len(tcp)) + tcp)
        tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
        return _swapped_l2(buf, l3_off) + _ip(family, src, dst, IPPROTO_TCP, len(tcp)) + tcp
    icmp_proto = IPPROTO_ICMP if family == 4 else IPPROTO_ICMPV6
    quote = buf[l3_off:l3_off + min(l3_end - l3_off, QUOTE_MAX) // 4 * 4]
    head = struct.pack("!BBHI", *((3, 13) if family == 4 else (1, 1)), 0, 0)
    pseudo = _pseudo(family, src, dst, icmp_proto, len(head) + len(quote)) if family == 6 else b""
    head = head[:2] + struct.pack("!H", checksum(pseudo + head + quote)) + head[4:]
    return _swapped_l2(buf, l3_off) + _ip(family, src, dst, icmp_proto, len(head) + len(quote)) + head + quote
