"""Kernel VxLAN endpoints in namespaces, and tunnel packet builders over any outer/inner family.

The kernel device is the reference VxLAN peer (this kernel has no Geneve device: Geneve traffic
comes only from the builders). The device is created without a remote and with learning off;
one static all-zeros FDB entry then sends every unknown/broadcast inner frame (ARP included) to the
remote, i.e. a fixed point-to-point tunnel whose behaviour never depends on what was learnt.

The builders are pure functions returning bytes (BPF_PROG_TEST_RUN tests use them too). Header
encoding lives in `testbed.packets` (struct, byte-exact); this module adds the outer/inner frames,
a validated Geneve option type, and header decoders so tests can check fields by unpacking.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from dataplane import abi
from testbed import packets
from testbed.netns import Namespace, add_address, lookup_ifindex, set_up
from testbed.packets import ETH_P_TEB, GENEVE_PORT, VXLAN_FLAG_I, VXLAN_PORT

ALL_ZEROS_MAC = "00:00:00:00:00:00"
GENEVE_OPT_DATA_MAX = 31 * 4  # 5-bit Len in 4-byte words
GENEVE_OPT_LEN_MAX = 63  # 6-bit Opt Len in 4-byte words
GENEVE_TYPE_CRITICAL = 0x80
GENEVE_HEADER_LEN = 8
VXLAN_HEADER_LEN = 8
# Locally administered defaults, recognisable in captures.
OUTER_SRC_MAC = "02:00:00:00:01:01"
OUTER_DST_MAC = "02:00:00:00:01:02"
INNER_SRC_MAC = "02:00:00:00:02:01"
INNER_DST_MAC = "02:00:00:00:02:02"

Proto = Literal["udp", "tcp", "icmp"]

# --- kernel vxlan devices ----------------------------------------------------------------------


def _check_vni(vni: int) -> None:
    if not 0 <= vni <= abi.VNI_MAX:
        raise ValueError(f"VNI {vni} is not a 24-bit value")


def add_vxlan(ns: Namespace, ifname: str, *, vni: int, local: str, remote: str,
              underlay_dev: str | None = None, dstport: int = VXLAN_PORT, address: str | None = None,
              mac: str | None = None, up: bool = True) -> None:
    """A vxlan device in `ns` tunnelling to `remote` (IPv4 or IPv6 underlay, same family as local).

    `address` (CIDR) goes on the device; `mac` fixes its MAC (else random). Learning is off and
    the only FDB entry is all-zeros -> remote, so every inner frame goes to `remote`.
    """
    _check_vni(vni)
    loc, rem = ipaddress.ip_address(local), ipaddress.ip_address(remote)
    if loc.version != rem.version:
        raise ValueError(f"local {local} and remote {remote} differ in family")
    spec: dict[str, object] = {"ifname": ifname, "kind": "vxlan", "vxlan_id": vni,
                               "vxlan_port": dstport, "vxlan_learning": 0}
    spec["vxlan_local" if loc.version == 4 else "vxlan_local6"] = str(loc)
    if mac is not None:
        spec["address"] = mac
    with ns.ipr() as ipr:
        if underlay_dev is not None:
            spec["vxlan_link"] = lookup_ifindex(ipr, ns, underlay_dev)
        ipr.link("add", **spec)
    add_fdb(ns, ifname, remote)
    if address is not None:
        add_address(ns, ifname, address)
    if up:
        set_up(ns, ifname)


def add_fdb(ns: Namespace, ifname: str, remote: str, mac: str = ALL_ZEROS_MAC) -> None:
    """Append a static FDB entry `mac dst remote` (`bridge fdb append`); all-zeros = flood target."""
    with ns.ipr() as ipr:
        index = lookup_ifindex(ipr, ns, ifname)
        ipr.fdb("append", ifindex=index, lladdr=mac, dst=str(ipaddress.ip_address(remote)))


# --- frames ------------------------------------------------------------------------------------


def ether_ip(src: str, dst: str, *, src_mac: str = OUTER_SRC_MAC, dst_mac: str = OUTER_DST_MAC,
             ttl: int = 64) -> Packet:
    """Ether / IP or Ether / IPv6, by the family of `src` (which must match `dst`)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:
        raise ValueError(f"{src} and {dst} differ in family")
    l3 = IP(src=src, dst=dst, ttl=ttl) if s.version == 4 else IPv6(src=src, dst=dst, hlim=ttl)
    return Ether(src=src_mac, dst=dst_mac) / l3


def _l4(version: int, proto: Proto, sport: int, dport: int, ident: int) -> Packet:
    if proto == "udp":
        return UDP(sport=sport, dport=dport)
    if proto == "tcp":
        return TCP(sport=sport, dport=dport, flags="S")
    if version == 4:
        return ICMP(type="echo-request", id=ident, seq=1)
    return ICMPv6EchoRequest(id=ident, seq=1)


def inner_frame(src: str, dst: str, *, proto: Proto = "udp", sport: int = 40000, dport: int = 5000,
                payload: bytes = b"tidegate", src_mac: str = INNER_SRC_MAC, dst_mac: str = INNER_DST_MAC,
                ether: bool = True) -> bytes:
    """An inner packet: [Ether /] IPv4|IPv6 / UDP|TCP(SYN)|ICMP echo / payload, checksums filled.

    ether=False gives a bare IP packet, for Geneve with an IP protocol type instead of 0x6558.
    For ICMP, `sport` is used as the echo identifier.
    """
    outer = ether_ip(src, dst, src_mac=src_mac, dst_mac=dst_mac)
    pkt = outer / _l4(outer.payload.version, proto, sport, dport, sport) / payload
    return bytes(pkt if ether else pkt.payload)


def vxlan_packet(outer_src: str, outer_dst: str, vni: int, inner: bytes | Packet, *,
                 sport: int = packets.SOURCE_PORT, dport: int = VXLAN_PORT, flags: int = VXLAN_FLAG_I,
                 src_mac: str = OUTER_SRC_MAC, dst_mac: str = OUTER_DST_MAC) -> bytes:
    """Ether / IPv4|IPv6 / UDP / VxLAN(vni, flags) / inner. `flags=0` makes the invalid no-I case."""
    _check_vni(vni)
    outer = ether_ip(outer_src, outer_dst, src_mac=src_mac, dst_mac=dst_mac)
    return packets.vxlan(outer, vni, inner, dport=dport, flags=flags, sport=sport)


# --- Geneve ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneveOption:
    """One Geneve TLV (RFC 8926 3.5): `opt_type` is the 7-bit type, `critical` its top bit (0x80).

    `data` must be a whole number of 4-byte words, at most 124 bytes: the header's Len field
    counts words, so anything else cannot be encoded faithfully (pad explicitly if you mean it).
    """

    opt_class: int
    opt_type: int
    data: bytes = b""
    critical: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.opt_class <= 0xFFFF or not 0 <= self.opt_type < GENEVE_TYPE_CRITICAL:
            raise ValueError(f"option class {self.opt_class:#x} / type {self.opt_type:#x} out of range")
        if len(self.data) % 4 or len(self.data) > GENEVE_OPT_DATA_MAX:
            raise ValueError(f"option data of {len(self.data)} bytes is not 0..124 in 4-byte words")

    @property
    def type_byte(self) -> int:
        return self.opt_type | (GENEVE_TYPE_CRITICAL if self.critical else 0)

    def encode(self) -> bytes:
        return packets.geneve_option(self.opt_class, self.type_byte, self.data)


def geneve_packet(outer_src: str, outer_dst: str, vni: int, inner: bytes | Packet, *,
                  options: Sequence[GeneveOption | bytes] = (), oam: bool = False, critical: bool = False,
                  protocol: int = ETH_P_TEB, version: int = 0, opt_len_words: int | None = None,
                  sport: int = packets.SOURCE_PORT, dport: int = GENEVE_PORT,
                  src_mac: str = OUTER_SRC_MAC, dst_mac: str = OUTER_DST_MAC) -> bytes:
    """Ether / IPv4|IPv6 / UDP / Geneve(options, O, C, protocol) / inner.

    `opt_len_words` overrides the computed Opt Len (to build malformed packets); `version` too.
    Raw `bytes` options are taken as already-encoded TLVs (also for malformed cases).
    """
    _check_vni(vni)
    encoded = [o.encode() if isinstance(o, GeneveOption) else o for o in options]
    words = sum(len(o) for o in encoded) // 4 if opt_len_words is None else opt_len_words
    if not 0 <= words <= GENEVE_OPT_LEN_MAX or not 0 <= version <= 3:
        raise ValueError(f"Opt Len {words} words or version {version} does not fit its field")
    outer = ether_ip(outer_src, outer_dst, src_mac=src_mac, dst_mac=dst_mac)
    return packets.geneve(outer, vni, inner, options=encoded, dport=dport, sport=sport, oam=oam,
                          critical=critical, version=version, protocol=protocol, opt_len_words=words)


# --- decoders (for assertions) -----------------------------------------------------------------


@dataclass(frozen=True)
class GeneveHeader:
    version: int
    opt_len_words: int
    oam: bool
    critical: bool
    protocol: int
    vni: int
    reserved: int
    options: tuple[GeneveOption, ...]


def parse_geneve(hdr: bytes) -> GeneveHeader:
    """Decode a Geneve header (starting at its first byte) and walk its options by Opt Len."""
    b0, b1, protocol, vni_word = struct.unpack_from("!BBHI", hdr)
    opt_len = b0 & 0x3F
    end = GENEVE_HEADER_LEN + 4 * opt_len
    options, off = [], GENEVE_HEADER_LEN
    while off < end:
        opt_class, type_byte, len_byte = struct.unpack_from("!HBB", hdr, off)
        data_len = 4 * (len_byte & 0x1F)
        data = hdr[off + 4:off + 4 + data_len]
        critical = bool(type_byte & GENEVE_TYPE_CRITICAL)
        options.append(GeneveOption(opt_class, type_byte & ~GENEVE_TYPE_CRITICAL, data, critical))
        off += 4 + data_len
    if off != end:
        raise ValueError(f"options run to byte {off}, Opt Len says {end}")
    return GeneveHeader(version=b0 >> 6, opt_len_words=opt_len, oam=bool(b1 & 0x80),
                        critical=bool(b1 & 0x40), protocol=protocol, vni=vni_word >> 8,
                        reserved=vni_word & 0xFF, options=tuple(options))


def parse_vxlan(hdr: bytes) -> tuple[int, int]:
    """(flags, vni) of a VxLAN header starting at its first byte."""
    flags, vni_word = struct.unpack_from("!B3xI", hdr)
    return flags, vni_word >> 8


def tunnel_header_offset(frame: bytes) -> int:
    """Offset of the tunnel header in Ether / IPv4 (any IHL) | IPv6 (no ext. headers) / UDP / ..."""
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == 0x0800:
        return 14 + 4 * (frame[14] & 0x0F) + 8
    if ethertype == 0x86DD:
        return 14 + 40 + 8
    raise ValueError(f"not an IPv4/IPv6 frame (ethertype {ethertype:#06x})")
