"""A reference of the XDP and TC programs, in Python, from docs/dataplane.md alone.

Used by the fuzz tests (test_xdp_hostile.py): any byte string goes in, and out comes what the
docs/dataplane.md says the programs do with it: the one reason it is counted under, the events, the frame
delivered, the metadata, the rule and classifier that match. It shares no code with the C and
reads every field from the bytes itself, so a disagreement is a bug in one of the two.

Also here: `check_well_formed`, the property every decapsulated frame the XDP program passes must
have whatever went in (Ethernet complete, at most two VLAN tags, an inner IP header that parses
and announces no more bytes than were delivered), stated without reference to the parser above.
"""

from __future__ import annotations

import ctypes
import ipaddress
import struct
from collections import Counter
from dataclasses import dataclass, field

from dataplane import abi
from dataplane.match.adapter import MatchRule

from . import reject_model

R = abi.Reason
E = abi.Event

ETH_HLEN = 14
ETH_ALEN = 6
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q, ETH_P_8021AD = 0x8100, 0x88A8
VLAN_TPIDS = (ETH_P_8021Q, ETH_P_8021AD)
VLAN_HLEN = 4
VLAN_MAX = 2  # docs/dataplane.md: "up to 2 VLAN tags"; a third is malformed
IPV4_HLEN = 20
IPV6_HLEN = 40
IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_DSTOPTS, IPPROTO_AH = 0, 43, 44, 60, 51
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6, IPPROTO_SCTP = 1, 6, 17, 58, 132
IPV6_EXT = (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_AH)
IPV6_EXT_MAX = 6  # docs/dataplane.md: "up to 6 extension headers"; a longer chain is malformed
L4_FIXED = {IPPROTO_TCP: 20, IPPROTO_UDP: 8, IPPROTO_SCTP: 4, IPPROTO_ICMP: 4, IPPROTO_ICMPV6: 4}
PORT_PROTOS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP)
TUNNEL_HLEN = 8  # VxLAN and Geneve fixed headers
GENEVE_OPT_HLEN = 4
VXLAN_FLAG_I = 0x08
GENEVE_FLAG_O, GENEVE_FLAG_C = 0x80, 0x40
GENEVE_OPT_CRITICAL = 0x80
ETH_P_TEB = 0x6558
META_LEN = ctypes.sizeof(abi.Meta)  # struct tg_meta
F_DECAPPED = abi.define("TG_META_F_DECAPPED")
F_CLASSIFIED = abi.define("TG_META_F_CLASSIFIED")
POLICY_EVENTS = (E.POLICY_SENT, E.POLICY_RATE_LIMITED, E.POLICY_RINGBUF_FULL)
# The ACL's flow cache: every packet the ACL judges moves exactly one of them, which one depends on
# the packets before it (a hit or a search), not on the packet alone.
FLOW_EVENTS = (E.FLOW_HIT, E.FLOW_MISS)


class Stop(Exception):
    """The packet's verdict is settled before the ACL: a drop reason (or PASS_NOT_IP)."""

    def __init__(self, reason: abi.Reason) -> None:
        super().__init__(reason.name)
        self.reason = reason


@dataclass
class Tuple5:
    family: int = 0
    src: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    proto: int = 0
    sport: int = 0
    dport: int = 0
    icmp_type: int = -1
    icmp_id: int = 0  # the echo identifier where the datagram holds one
    tcp_flags: int = 0
    l4_present: bool = True
    fragment: bool = False  # part of a fragmented datagram (an atomic IPv6 fragment is whole)
    l3_off: int = 0  # where the IP header starts in the frame
    l4_off: int = 0  # where the L4 header starts
    l3_end: int = 0  # where the IP datagram ends in the frame
    icmp_code: int = -1  # with icmp_type: of a first fragment or whole datagram; -1: none


@dataclass(frozen=True)
class Setup:
    """What the maps hold for a fuzz run (docs/dataplane.md: runtime config, tunnels, ACL, classifiers)."""

    default_action: str = "allow"
    unknown_vni_action: str = "pass"
    rewrite_inner_dmac: bool = True
    decap: bool = True
    strict_tunnel_ports: bool = False
    xdp_meta: bool = True  # built with XDP metadata (dataplane.kernel.features): else XDP does not classify
    vxlan_port: int = 4789
    geneve_port: int = 6081
    if_mac: bytes = b"\x02\xaa\x00\x00\x00\x01"
    tunnels: tuple[tuple[int, bool, bool], ...] = ()  # (vni, vxlan, geneve)
    acl: tuple[MatchRule, ...] = ()
    classifiers: tuple[MatchRule, ...] = ()
    allow_established: bool = False
    fragments: str = "judge"  # "first": a later fragment passes before the ACL (docs, "Fragments")
    reject_rate: int = 1_000_000_000  # reject answers per second: never short in a fuzz run; 0 none
    ct: frozenset[tuple[int, object, object, int, int, int]] = frozenset()  # recorded flows, alive


@dataclass
class Expected:
    reason: abi.Reason
    data: bytes  # the frame after the program (meaningful when passed)
    decapped: bool = False
    vni: int = 0  # the VNI the program read from a tunnel header (0: none)
    acl_rule: int | None = None
    cls_rule: int | None = None
    mark: int = 0
    meta: bool = False  # metadata written in front of the frame
    events: Counter[abi.Event] = field(default_factory=Counter)
    policy_event: bool = False  # exactly one of POLICY_EVENTS counted
    acl_judged: bool = False  # the ACL judged it: exactly one of FLOW_EVENTS counted
    tunnel_bytes: int = 0  # counted under `vni` (its tunnel_counters entry) when decapped
    judged: Tuple5 | None = None  # the tuple the ACL (or the flow table) judged
    answer: bytes | None = None  # a reject answer sent back with XDP_TX


def _need(buf: bytes, end: int) -> None:
    if end > len(buf):
        raise Stop(R.DROP_TRUNCATED)


def _parse_ipv4(buf: bytes, off: int, t: Tuple5) -> int:
    _need(buf, off + IPV4_HLEN)
    ver, ihl = buf[off] >> 4, buf[off] & 0xF
    if ver != 4 or ihl < 5:
        raise Stop(R.DROP_MALFORMED)
    _need(buf, off + ihl * 4)
    tot_len = struct.unpack_from("!H", buf, off + 2)[0]
    if tot_len < ihl * 4:
        raise Stop(R.DROP_MALFORMED)
    _need(buf, off + tot_len)  # the frame must hold the datagram its header announces
    t.l3_end = off + tot_len
    t.family, t.proto = 4, buf[off + 9]
    t.src = ipaddress.IPv4Address(buf[off + 12:off + 16])
    t.dst = ipaddress.IPv4Address(buf[off + 16:off + 20])
    frag = struct.unpack_from("!H", buf, off + 6)[0]
    t.l4_present = (frag & 0x1FFF) == 0
    t.fragment = (frag & 0x3FFF) != 0  # MF or an offset
    return off + ihl * 4


def _parse_ipv6(buf: bytes, off: int, t: Tuple5) -> int:
    _need(buf, off + IPV6_HLEN)
    if buf[off] >> 4 != 6:
        raise Stop(R.DROP_MALFORMED)
    t.l3_end = off + IPV6_HLEN + struct.unpack_from("!H", buf, off + 4)[0]
    _need(buf, t.l3_end)
    t.family, t.l4_present = 6, True
    t.src = ipaddress.IPv6Address(buf[off + 8:off + 24])
    t.dst = ipaddress.IPv6Address(buf[off + 24:off + 40])
    nexthdr, pos = buf[off + 6], off + IPV6_HLEN
    for _ in range(IPV6_EXT_MAX):
        if nexthdr not in IPV6_EXT:
            break
        _need(buf, pos + 2)
        if nexthdr == IPPROTO_FRAGMENT:
            _need(buf, pos + 8)
            frag = struct.unpack_from("!H", buf, pos + 2)[0]
            if frag & 0xFFF8:
                t.l4_present = False
            t.fragment = t.fragment or (frag & 0xFFF9) != 0  # offset or M: not atomic
            length = 8
        elif nexthdr == IPPROTO_AH:
            length = (buf[pos + 1] + 2) * 4  # RFC 4302: Payload Len in 32-bit words, minus 2
        else:
            length = (buf[pos + 1] + 1) * 8
        _need(buf, pos + length)
        nexthdr, pos = buf[pos], pos + length
        if not t.l4_present:
            break  # a non-first fragment: data follows its Fragment header
    if t.l4_present and nexthdr in IPV6_EXT:
        raise Stop(R.DROP_MALFORMED)  # the transport header lies past the walk: fail closed
    t.proto = nexthdr
    return pos


def parse_ip(buf: bytes, off: int, ethertype: int) -> tuple[Tuple5, int]:
    """IPv4/IPv6 + L4 at `off`: the tuple and the offset after the fixed L4 header."""
    t = Tuple5(l3_off=off)
    pos = _parse_ipv4(buf, off, t) if ethertype == ETH_P_IP else _parse_ipv6(buf, off, t)
    t.l4_off = pos
    if not t.l4_present or t.proto not in L4_FIXED:
        return t, pos
    _need(buf, pos + L4_FIXED[t.proto])
    if t.proto == IPPROTO_TCP:
        doff = buf[pos + 12] >> 4
        if doff < 5:
            raise Stop(R.DROP_MALFORMED)
        _need(buf[:t.l3_end], pos + doff * 4)  # options too, inside the datagram
        t.tcp_flags = buf[pos + 13]
    if t.proto in PORT_PROTOS:
        t.sport, t.dport = struct.unpack_from("!HH", buf, pos)
    if t.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        t.icmp_type, t.icmp_code = buf[pos], buf[pos + 1]  # docs/classifier.md: a rule may name them
        if pos + 8 <= min(len(buf), t.l3_end):
            t.icmp_id = struct.unpack_from("!H", buf, pos + 4)[0]
    return t, pos + L4_FIXED[t.proto]


def _ethertype(buf: bytes, off: int = 0) -> int:
    _need(buf, off + ETH_HLEN)
    return int(struct.unpack_from("!H", buf, off + 12)[0])


def parse_l2(buf: bytes, off: int = 0, max_tags: int = VLAN_MAX) -> tuple[int, int]:
    """Ethernet at `off` and up to `max_tags` VLAN tags (docs/dataplane.md, pipeline step 1): the ethertype
    after them and where the packet starts. A further tag is malformed."""
    ethertype, pos = _ethertype(buf, off), off + ETH_HLEN
    for i in range(VLAN_MAX):
        if ethertype not in VLAN_TPIDS:
            return ethertype, pos
        if i >= max_tags:
            raise Stop(R.DROP_MALFORMED)
        _need(buf, pos + VLAN_HLEN)
        ethertype, pos = struct.unpack_from("!H", buf, pos + 2)[0], pos + VLAN_HLEN
    if ethertype in VLAN_TPIDS:
        raise Stop(R.DROP_MALFORMED)
    return ethertype, pos


def _vni(buf: bytes, off: int) -> int:
    return int.from_bytes(buf[off:off + 3], "big")


@dataclass
class _Tunnel:
    kind: str = ""  # "vxlan" / "geneve"
    vni: int = 0
    outer_len: int = 0  # 0: not decapped
    payload_end: int = 0  # end of the outer UDP payload: the inner frame ends there
    not_ip: bool = False  # a tunnel we terminate whose payload is not IP: left encapsulated
    fragment: bool = False  # the first fragment of a datagram to a tunnel port: to the stack


def _admit(setup: Setup, tun: _Tunnel, ev: Counter[abi.Event]) -> bool:
    """True: decap. False: leave whole. Raises for unknown_vni_action = drop."""
    for vni, vxlan, geneve in setup.tunnels:
        if vni == tun.vni and (vxlan if tun.kind == "vxlan" else geneve):
            return True
    if setup.unknown_vni_action == "drop":
        raise Stop(R.DROP_UNKNOWN_VNI)
    ev[E.UNKNOWN_VNI_PASSED] += 1
    return False


def _geneve_options(buf: bytes, pos: int, opts_len: int) -> int:
    _need(buf, pos + opts_len)
    off = 0
    while off < opts_len:
        if buf[pos + off + 2] & GENEVE_OPT_CRITICAL:
            raise Stop(R.DROP_GENEVE_CRITICAL)
        off += GENEVE_OPT_HLEN + (buf[pos + off + 3] & 0x1F) * 4
    if off != opts_len:
        raise Stop(R.DROP_MALFORMED)
    return pos + opts_len


class NotTunnel(Exception):
    """UDP to a tunnel port that is no tunnel packet: plain UDP (docs: "Tunnel ports")."""


def _not_tunnel(setup: Setup, reason: abi.Reason) -> NotTunnel:
    """Dropped with `reason` under strict tunnel ports, else judged as plain UDP."""
    if setup.strict_tunnel_ports:
        raise Stop(reason)
    return NotTunnel(reason.name)


def _udp_payload_end(buf: bytes, pos: int, t: Tuple5, setup: Setup) -> int:
    """The UDP length bounds the tunnel payload, as the UDP stack bounds a datagram."""
    ulen = struct.unpack_from("!H", buf, pos - 4)[0]
    if ulen < 8:
        raise _not_tunnel(setup, R.DROP_MALFORMED)
    if pos - 8 + ulen > t.l3_end:
        raise _not_tunnel(setup, R.DROP_TRUNCATED)
    return int(pos - 8 + ulen)


def _tunnel_header(buf: bytes, pos: int, setup: Setup) -> None:
    """The tunnel's fixed header must lie in the UDP payload (`buf` ends with it)."""
    if pos + TUNNEL_HLEN > len(buf):
        raise _not_tunnel(setup, R.DROP_TRUNCATED)


def _tunnel(buf: bytes, pos: int, t: Tuple5, setup: Setup, tun: _Tunnel, ev: Counter[abi.Event]) -> None:
    """docs/dataplane.md, "Tunnels": sets tun.outer_len when the packet is to be decapped. Everything read
    from the tunnel header to the inner Ethernet header must lie inside the UDP payload."""
    if not setup.decap or t.proto != IPPROTO_UDP or not t.l4_present:
        return
    if t.dport not in (setup.vxlan_port, setup.geneve_port):
        return
    if t.fragment:
        tun.fragment = True  # one piece of the datagram: the stack reassembles it
        return
    try:
        _tunnel_packet(buf, pos, t, setup, tun, ev)
    except NotTunnel:
        ev[E.TUNNEL_PORT_PLAIN] += 1
        tun.kind, tun.vni = "", 0


def _tunnel_packet(buf: bytes, pos: int, t: Tuple5, setup: Setup, tun: _Tunnel,
                   ev: Counter[abi.Event]) -> None:
    tun.payload_end = _udp_payload_end(buf, pos, t, setup)
    buf = buf[:tun.payload_end]
    _tunnel_header(buf, pos, setup)
    if t.dport == setup.vxlan_port:
        if not buf[pos] & VXLAN_FLAG_I:
            raise _not_tunnel(setup, R.DROP_MALFORMED)
        tun.kind, tun.vni = "vxlan", _vni(buf, pos + 4)
        if not _admit(setup, tun, ev):
            return
        end = pos + TUNNEL_HLEN
    else:
        if buf[pos] >> 6:
            raise _not_tunnel(setup, R.DROP_GENEVE_VERSION)
        tun.kind, tun.vni = "geneve", _vni(buf, pos + 4)
        if buf[pos + 1] & GENEVE_FLAG_O or struct.unpack_from("!H", buf, pos + 2)[0] != ETH_P_TEB:
            ev[E.TUNNEL_NOT_DECAPPED] += 1
            return
        if not _admit(setup, tun, ev):
            return
        if buf[pos + 1] & GENEVE_FLAG_C:
            raise Stop(R.DROP_GENEVE_CRITICAL)
        end = _geneve_options(buf, pos + TUNNEL_HLEN, (buf[pos] & 0x3F) * 4)
    ethertype, l3 = parse_l2(buf, end)  # buf ends with the UDP payload: so must the tags
    if ethertype not in (ETH_P_IP, ETH_P_IPV6):
        tun.not_ip = True  # docs/dataplane.md: only IP payloads are decapped; the rest passes encapsulated
        ev[E.TUNNEL_NOT_DECAPPED] += 1
        return
    parse_ip(buf, l3, ethertype)  # the inner packet is parsed whole before anything is stripped
    tun.outer_len = end


def first_match(rules: tuple[MatchRule, ...], t: Tuple5) -> MatchRule | None:
    assert t.src is not None and t.dst is not None
    icmp = (t.icmp_type, t.icmp_code) if t.icmp_type >= 0 else None
    hits = [r for r in rules if r.matches(t.src, t.dst, t.proto, t.dport, icmp=icmp, tcp_flags=t.tcp_flags)]
    return min(hits, key=lambda r: (r.priority, r.rule_id)) if hits else None


def _judge(buf: bytes, setup: Setup, x: Expected) -> None:
    """Fills x, raising Stop where docs/dataplane.md settles the verdict early."""
    ethertype, l3 = parse_l2(buf)
    if ethertype not in (ETH_P_IP, ETH_P_IPV6):
        raise Stop(R.PASS_NOT_IP)
    t, pos = parse_ip(buf, l3, ethertype)
    tunnel_stage = setup.decap and t.proto == IPPROTO_UDP and t.l4_present and \
        t.dport in (setup.vxlan_port, setup.geneve_port)
    tun = _Tunnel()
    _tunnel(buf, pos, t, setup, tun, x.events)
    x.vni = tun.vni
    if tun.outer_len:
        x.decapped, x.tunnel_bytes = True, len(buf)
        x.events[E.DECAP_VXLAN if tun.kind == "vxlan" else E.DECAP_GENEVE] += 1
        inner = bytearray(buf[tun.outer_len:tun.payload_end])
        if setup.rewrite_inner_dmac and not inner[0] & 0x01:
            inner[:ETH_ALEN] = setup.if_mac
            x.events[E.INNER_DMAC_REWRITTEN] += 1
        x.data = bytes(inner)
        ethertype, l3 = parse_l2(x.data)
        assert ethertype in (ETH_P_IP, ETH_P_IPV6), "checked before the decap"
        t, _ = parse_ip(x.data, l3, ethertype)  # parsed before the decap: cannot fail here
    x.judged = t
    if setup.fragments == "first" and not t.l4_present:
        x.reason = R.PASS_LATER_FRAGMENT  # its datagram is judged by the first fragment (docs, "Fragments")
        _classify(t, setup, x)
        return
    if setup.allow_established and ct_key(t, leaving=False) in setup.ct:
        x.reason = R.PASS_ESTABLISHED  # a reply of a recorded flow: before the ACL (docs, "Established")
        _classify(t, setup, x)
        return
    _acl(t, setup, x)  # the inner packet if decapped, else the packet itself
    if x.reason == R.DROP_REJECTED:
        _reject(buf, t, setup, x, tunnel_stage)
    if tun.not_ip and not abi.is_drop(x.reason):
        x.reason = R.PASS_TUNNEL_NOT_IP  # the policy event (a logged rule) keeps the ACL's reason
    elif tun.fragment and not abi.is_drop(x.reason):
        x.reason = R.PASS_TUNNEL_FRAGMENT


DROPPED_BY = {abi.Action.DENY: R.DROP_DENIED, abi.Action.REJECT: R.DROP_REJECTED}


def _acl(t: Tuple5, setup: Setup, x: Expected) -> None:
    x.acl_judged = True
    rule = first_match(setup.acl, t)
    if rule is None:
        x.reason = R.DROP_DEFAULT if setup.default_action == "deny" else R.PASS_DEFAULT
        x.policy_event = x.reason == R.DROP_DEFAULT
    else:
        action, flags = rule.payload  # type: ignore[misc]
        x.acl_rule = rule.rule_id
        x.reason = DROPPED_BY.get(action, R.PASS_ALLOWED)
        x.policy_event = x.reason in DROPPED_BY.values() or bool(flags & abi.define("TG_RULE_F_LOG"))
    if not abi.is_drop(x.reason):
        _classify(t, setup, x)


def _reject(buf: bytes, t: Tuple5, setup: Setup, x: Expected, tunnel_stage: bool) -> None:
    """docs "Reject": answered where one is due, the pace allows and the ingress entry judged the
    packet (a tunnel stage's packets are dropped unanswered)."""
    assert t.src is not None and t.dst is not None
    due = not tunnel_stage and reject_model.answerable(buf, t.family, t.src.packed, t.dst.packed, t.proto,
                                                       t.l4_present, t.tcp_flags, t.icmp_type)
    if not due:
        x.events[E.REJECT_UNANSWERED] += 1
    elif not setup.reject_rate:
        x.events[E.REJECT_RATE_LIMITED] += 1
    else:
        x.events[E.REJECT_SENT] += 1
        x.answer = reject_model.answer(buf, t.family, t.src.packed, t.dst.packed, t.proto, t.l3_off, t.l4_off,
                                       t.l3_end)


def _classify(t: Tuple5, setup: Setup, x: Expected) -> None:
    if not setup.xdp_meta:
        return  # without metadata XDP does not classify: TC does
    x.meta = True
    cls = first_match(setup.classifiers, t)
    if cls is not None:
        x.cls_rule, x.mark = cls.rule_id, int(cls.payload)  # type: ignore[call-overload]
        x.events[E.CLASSIFIED] += 1


CtTuple = tuple[int, object, object, int, int, int]  # family, src, dst, proto, sport, dport


def ct_key(t: Tuple5, leaving: bool) -> CtTuple | None:
    """The flow-table key of a packet arriving (a reply, as it is) or leaving (its replies'
    tuple: ends swapped); ICMP echo: port 0 and the identifier. None: no tracked flow."""
    if not t.l4_present:
        return None
    if t.proto in (IPPROTO_TCP, IPPROTO_UDP):
        ports = (t.dport, t.sport) if leaving else (t.sport, t.dport)
    elif t.icmp_type == {IPPROTO_ICMP: (0, 8), IPPROTO_ICMPV6: (129, 128)}.get(t.proto, (-2, -2))[leaving]:
        ports = (0, t.icmp_id)
    else:
        return None
    src, dst = (t.dst, t.src) if leaving else (t.src, t.dst)
    return (t.family, src, dst, t.proto, *ports)


def tc_egress_expected(buf: bytes, setup: Setup) -> CtTuple | None:
    """The flow TC egress records for a leaving frame (docs, "Established"): its replies' key,
    when the headers parse (no decap: what leaves is what it is) and it may open a flow."""
    if not setup.allow_established:
        return None
    try:
        ethertype, l3 = parse_l2(buf)
        if ethertype not in (ETH_P_IP, ETH_P_IPV6):
            return None
        t, _ = parse_ip(buf, l3, ethertype)
    except Stop:
        return None
    if t.proto == IPPROTO_TCP and t.tcp_flags & 0x05:
        return None  # a FIN or RST opens nothing
    return ct_key(t, leaving=True)


def xdp_expected(buf: bytes, setup: Setup) -> Expected:
    """What docs/dataplane.md says the XDP program does with `buf`."""
    x = Expected(reason=R.UNSPECIFIED, data=buf)
    try:
        _judge(buf, setup, x)
    except Stop as stop:
        x.reason = stop.reason
    return x


def meta_flags(x: Expected) -> int:
    return (F_DECAPPED if x.decapped else 0) | (F_CLASSIFIED if x.mark else 0)


def tc_expected_mark(buf: bytes, setup: Setup, mark_in: int) -> tuple[int, int | None]:
    """TC without metadata (docs/dataplane.md, pipeline step 5): (skb mark after, classifier that matched).

    TC classifies the packet as it is (no decap) when its headers parse; otherwise, or when no
    classifier matches, the mark the packet came with stays.
    """
    try:
        ethertype, l3 = parse_l2(buf)  # no tag in skb->vlan_tci under BPF_PROG_TEST_RUN
        if ethertype not in (ETH_P_IP, ETH_P_IPV6):
            return mark_in, None
        t, _ = parse_ip(buf, l3, ethertype)
    except Stop:
        return mark_in, None
    cls = first_match(setup.classifiers, t)
    if cls is None:
        return mark_in, None
    return int(cls.payload), cls.rule_id  # type: ignore[call-overload]


def check_well_formed(frame: bytes) -> str | None:
    """None when `frame` is a complete Ethernet frame whose IP header parses and announces no
    more bytes than the frame holds, behind at most two VLAN tags; else what is wrong. A
    decapsulated frame is always IP."""
    if len(frame) < ETH_HLEN:
        return f"{len(frame)} bytes: no complete Ethernet header"
    ethertype, off = struct.unpack_from("!H", frame, 12)[0], ETH_HLEN
    for _ in range(VLAN_MAX):
        if ethertype not in VLAN_TPIDS:
            break
        if len(frame) < off + VLAN_HLEN:
            return f"VLAN tag cut at {len(frame) - off} bytes"
        ethertype, off = struct.unpack_from("!H", frame, off + 2)[0], off + VLAN_HLEN
    l3 = frame[off:]
    if ethertype == ETH_P_IP:
        if len(l3) < IPV4_HLEN:
            return f"IPv4 header cut at {len(l3)} bytes"
        ihl, tot_len = (l3[0] & 0xF) * 4, struct.unpack_from("!H", l3, 2)[0]
        if l3[0] >> 4 != 4 or ihl < IPV4_HLEN:
            return f"IPv4 version {l3[0] >> 4}, header length {ihl}"
        if not ihl <= tot_len <= len(l3):
            return f"IPv4 total length {tot_len}: header {ihl}, {len(l3)} bytes delivered"
    elif ethertype == ETH_P_IPV6:
        if len(l3) < IPV6_HLEN or l3[0] >> 4 != 6:
            return f"IPv6 header cut or version {l3[0] >> 4 if l3 else None}"
        payload_len = struct.unpack_from("!H", l3, 4)[0]
        if IPV6_HLEN + payload_len > len(l3):
            return f"IPv6 payload length {payload_len}: {len(l3) - IPV6_HLEN} bytes delivered"
    else:
        return f"ethertype {ethertype:#06x} after {(off - ETH_HLEN) // VLAN_HLEN} tags: not IP"
    return None
