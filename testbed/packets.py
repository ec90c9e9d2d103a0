"""Byte-exact tunnel packet builders (VxLAN RFC 7348, Geneve RFC 8926) for tests and traffic.

Geneve is built by hand with struct rather than scapy's contrib class so every bit (Opt Len,
the O and C flags, critical option types, deliberately wrong lengths) is under the caller's
control: the kernel here has no Geneve device, so these builders are the Geneve peer.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from scapy.layers.inet import UDP
from scapy.packet import Packet, Raw

VXLAN_PORT = 4789
GENEVE_PORT = 6081
VXLAN_FLAG_I = 0x08
ETH_P_TEB = 0x6558
GENEVE_OPT_UNIT = 4
GENEVE_FLAG_O = 0x80
GENEVE_FLAG_C = 0x40
GENEVE_VERSION_SHIFT = 6
VNI_SHIFT = 8  # the VNI sits in the top 24 bits of its 32-bit word
SOURCE_PORT = 49152  # first dynamic port: a stand-in for the flow-hash source port


def vxlan_header(vni: int, flags: int = VXLAN_FLAG_I) -> bytes:
    return struct.pack("!B3xI", flags, vni << VNI_SHIFT)


def vxlan(outer: Packet, vni: int, inner: Packet | bytes, dport: int = VXLAN_PORT,
          flags: int = VXLAN_FLAG_I, sport: int = SOURCE_PORT) -> bytes:
    """outer (Ether/IP or Ether/IPv6) + UDP + VxLAN + inner frame."""
    return bytes(outer / UDP(sport=sport, dport=dport) / Raw(vxlan_header(vni, flags) + bytes(inner)))


def geneve_option(opt_class: int, opt_type: int, data: bytes) -> bytes:
    """One TLV: class, type (0x80 = critical), length in 4-byte words; data padded to words."""
    pad = (-len(data)) % GENEVE_OPT_UNIT
    body = data + b"\0" * pad
    return struct.pack("!HBB", opt_class, opt_type, len(body) // GENEVE_OPT_UNIT) + body


def geneve_header(vni: int, options: Sequence[bytes] = (), oam: bool = False, critical: bool = False,
                  version: int = 0, protocol: int = ETH_P_TEB, opt_len_words: int | None = None) -> bytes:
    opts = b"".join(options)
    words = len(opts) // GENEVE_OPT_UNIT if opt_len_words is None else opt_len_words
    flags = (GENEVE_FLAG_O if oam else 0) | (GENEVE_FLAG_C if critical else 0)
    return struct.pack("!BBHI", (version << GENEVE_VERSION_SHIFT) | words, flags, protocol,
                       vni << VNI_SHIFT) + opts


def geneve(outer: Packet, vni: int, inner: Packet | bytes, options: Sequence[bytes] = (),
           dport: int = GENEVE_PORT, sport: int = SOURCE_PORT, **header: int | bool | None) -> bytes:
    """outer + UDP + Geneve (with options) + inner frame. `header` goes to geneve_header."""
    hdr = geneve_header(vni, options, **header)  # type: ignore[arg-type]
    return bytes(outer / UDP(sport=sport, dport=dport) / Raw(hdr + bytes(inner)))
