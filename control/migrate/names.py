"""The symbolic names iptables and nft print and accept: protocols, ICMP types and codes, TCP
flags, conntrack states. Built in (the tools print names from /etc/protocols and their own
tables; the machine reading the output may not be the one that wrote it), /etc/protocols as
the fallback for protocol names this table lacks.
"""

from __future__ import annotations

import socket

from dataplane import protocols

# Debian netbase's /etc/protocols, the names iptables-save prints (getprotobynumber), plus the
# aliases iptables and nft accept.
PROTOCOLS = {
    "ip": 0, "hopopt": 0, "icmp": 1, "igmp": 2, "ggp": 3, "ipencap": 4, "st": 5, "tcp": 6, "egp": 8,
    "igp": 9, "pup": 12, "udp": 17, "hmp": 20, "xns-idp": 22, "rdp": 27, "iso-tp4": 29, "dccp": 33,
    "xtp": 36, "ddp": 37, "idpr-cmtp": 38, "ipv6": 41, "ipv6-route": 43, "ipv6-frag": 44, "idrp": 45,
    "rsvp": 46, "gre": 47, "esp": 50, "ah": 51, "skip": 57, "ipv6-icmp": 58, "icmpv6": 58,
    "ipv6-nonxt": 59, "ipv6-opts": 60, "rspf": 73, "vmtp": 81, "eigrp": 88, "ospf": 89, "ospfigp": 89,
    "ax.25": 93, "ipip": 94, "etherip": 97, "encap": 98, "pim": 103, "ipcomp": 108, "vrrp": 112,
    "l2tp": 115, "isis": 124, "sctp": 132, "fc": 133, "mobility-header": 135, "mh": 135,
    "ipv6-mh": 135, "udplite": 136, "mpls-in-ip": 137, "manet": 138, "hip": 139, "shim6": 140,
    "wesp": 141, "rohc": 142, "ethernet": 143,
}
PORT_PROTOCOLS = frozenset(protocols.NUMBERS[n] for n in protocols.PORTED)  # whose ports Tidegate matches
ICMP, ICMPV6, TCP, UDP = (protocols.NUMBERS[n] for n in ("icmp", "icmpv6", "tcp", "udp"))


def protocol_number(name: str) -> int:
    """A protocol by name or number (0-255); ValueError naming it otherwise."""
    text = name.strip().lower()
    if text.isdigit():
        value = int(text)
        if value > 255:
            raise ValueError(f"protocol {name!r}: numbers go up to 255")
        return value
    if text in PROTOCOLS:
        return PROTOCOLS[text]
    try:
        return socket.getprotobyname(text)
    except OSError:
        raise ValueError(f"unknown protocol {name!r}") from None


# ICMP types and type/code pairs by iptables' names (iptables -p icmp -h) and nft's.
ICMP_TYPES = {
    "echo-reply": (0, None), "pong": (0, None), "destination-unreachable": (3, None),
    "network-unreachable": (3, 0), "host-unreachable": (3, 1), "protocol-unreachable": (3, 2),
    "port-unreachable": (3, 3), "fragmentation-needed": (3, 4), "source-route-failed": (3, 5),
    "network-unknown": (3, 6), "host-unknown": (3, 7), "network-prohibited": (3, 9),
    "host-prohibited": (3, 10), "tos-network-unreachable": (3, 11), "tos-host-unreachable": (3, 12),
    "communication-prohibited": (3, 13), "host-precedence-violation": (3, 14),
    "precedence-cutoff": (3, 15), "source-quench": (4, None), "redirect": (5, None),
    "network-redirect": (5, 0), "host-redirect": (5, 1), "tos-network-redirect": (5, 2),
    "tos-host-redirect": (5, 3), "echo-request": (8, None), "ping": (8, None),
    "router-advertisement": (9, None), "router-solicitation": (10, None),
    "time-exceeded": (11, None), "ttl-exceeded": (11, None), "ttl-zero-during-transit": (11, 0),
    "ttl-zero-during-reassembly": (11, 1), "parameter-problem": (12, None), "ip-header-bad": (12, 0),
    "required-option-missing": (12, 1), "timestamp-request": (13, None), "timestamp-reply": (14, None),
    "info-request": (15, None), "info-reply": (16, None), "address-mask-request": (17, None),
    "address-mask-reply": (18, None),
}
ICMPV6_TYPES = {
    "destination-unreachable": (1, None), "no-route": (1, 0), "communication-prohibited": (1, 1),
    "beyond-scope": (1, 2), "address-unreachable": (1, 3), "port-unreachable": (1, 4),
    "failed-policy": (1, 5), "reject-route": (1, 6), "packet-too-big": (2, None),
    "time-exceeded": (3, None), "ttl-exceeded": (3, None), "ttl-zero-during-transit": (3, 0),
    "ttl-zero-during-reassembly": (3, 1), "parameter-problem": (4, None), "bad-header": (4, 0),
    "unknown-header-type": (4, 1), "unknown-option": (4, 2), "echo-request": (128, None),
    "ping": (128, None), "echo-reply": (129, None), "pong": (129, None),
    "mld-listener-query": (130, None), "mld-listener-report": (131, None),
    "mld-listener-done": (132, None), "mld-listener-reduction": (132, None),
    "router-solicitation": (133, None), "nd-router-solicit": (133, None),
    "router-advertisement": (134, None), "nd-router-advert": (134, None),
    "neighbour-solicitation": (135, None), "neighbor-solicitation": (135, None),
    "nd-neighbor-solicit": (135, None), "neighbour-advertisement": (136, None),
    "neighbor-advertisement": (136, None), "nd-neighbor-advert": (136, None),
    "redirect": (137, None), "nd-redirect": (137, None), "router-renumbering": (138, None),
    "ind-neighbor-solicit": (141, None), "ind-neighbor-advert": (142, None),
    "mld2-listener-report": (143, None),
}
# nft's code names (`icmp code`, `icmpv6 code`, `icmpx code`)
ICMP_CODES = {
    "net-unreachable": 0, "host-unreachable": 1, "prot-unreachable": 2, "port-unreachable": 3,
    "frag-needed": 4, "net-prohibited": 9, "host-prohibited": 10, "admin-prohibited": 13,
}
ICMPV6_CODES = {
    "no-route": 0, "admin-prohibited": 1, "addr-unreachable": 3, "port-unreachable": 4,
    "policy-fail": 5, "reject-route": 6,
}


def icmp_type(text: str, family: int) -> tuple[int, int | None]:
    """(type, code or None) of "8", "3/4", "echo-request", "any" -> (-1, None)."""
    value = text.strip().lower()
    if value == "any":
        return -1, None
    if "/" in value:
        kind, _, code = value.partition("/")
        return _byte(kind, "ICMP type"), _byte(code, "ICMP code")
    if value.isdigit():
        return _byte(value, "ICMP type"), None
    table = ICMP_TYPES if family == 4 else ICMPV6_TYPES
    if value not in table:
        raise ValueError(f"unknown ICMP{'' if family == 4 else 'v6'} type {text!r}")
    return table[value]


def icmp_code(text: str | int, family: int) -> int:
    if isinstance(text, int):
        return _byte(str(text), "ICMP code")
    value = text.strip().lower()
    if value.isdigit():
        return _byte(value, "ICMP code")
    table = ICMP_CODES if family == 4 else ICMPV6_CODES
    if value not in table:
        raise ValueError(f"unknown ICMP code {text!r}")
    return table[value]


def _byte(text: str, what: str) -> int:
    if not text.isdigit() or int(text) > 255:
        raise ValueError(f"{what} {text!r}: expected 0-255")
    return int(text)


# TCP flags: bit values in the flags byte (RFC 793 / 3168 order)
TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20,
             "ece": 0x40, "cwr": 0x80}
TCP_FLAGS_ALL = 0xFF


def tcp_flag_mask(text: str) -> int:
    """"SYN,ACK" / "ALL" / "NONE" -> a bit mask."""
    value = text.strip().lower()
    if value == "all":
        return TCP_FLAGS_ALL
    if value == "none":
        return 0
    mask = 0
    for part in value.split(","):
        if part not in TCP_FLAGS:
            raise ValueError(f"unknown TCP flag {part!r} in {text!r}")
        mask |= TCP_FLAGS[part]
    return mask


CT_STATES = frozenset({"invalid", "new", "established", "related", "untracked", "snat", "dnat"})
