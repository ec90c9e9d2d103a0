"""A rule set given as columns (RuleColumns, e.g. a ClassBench set: testbed.classbench) rendered
for each engine the control-plane benchmark compares: the daemon's API (AclRule messages, or one
packed AclColumns), `iptables-restore` and `nft -f` input.

Rows are in judging order; IPv4 or IPv6 (ClassBench's IPv6 variants): iptables-restore input is
then ip6tables-restore input, the nft table of family ip6 (inet when a set holds both). A /0
prefix and the port range 0-65535 are written as "any" (left out), the same meaning in every
engine for the set's packets.
"""

from __future__ import annotations

import socket
from typing import Any

import numpy as np

from dataplane import abi
from dataplane.match.columns import PORT_ANY, RuleColumns

DENY = int(abi.Action["DENY"])
NAMES = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp"}
PORTED = (6, 17, 132)


def _prefixes(cols: RuleColumns, side: str) -> list[str]:
    addr = getattr(cols, f"{side}_addr")
    length = getattr(cols, f"{side}_len").tolist()
    def text(a: bytes, family: int) -> str:
        return socket.inet_ntop(socket.AF_INET6, a) if family == 6 else socket.inet_ntoa(a[:4])

    return [f"{text(a, family)}/{n}" if n else ""
            for a, n, family in zip(map(bytes, addr), length, cols.family.tolist(), strict=True)]


def families(cols: RuleColumns) -> set[int]:
    """The IP families the set's rules name (4, 6)."""
    return {int(f) for f in np.unique(cols.family)} & {4, 6} or {4}


def _ports(cols: RuleColumns, side: str) -> list[tuple[int, int] | None]:
    lo, hi = getattr(cols, f"{side}_lo").tolist(), getattr(cols, f"{side}_hi").tolist()
    return [None if (a, b) == PORT_ANY else (a, b) for a, b in zip(lo, hi, strict=True)]


def _rows(cols: RuleColumns) -> list[tuple[Any, ...]]:
    """(id, priority, deny, src, dst, protocol or None, sport, dport) per row."""
    order = cols.order.tolist()
    proto = [None if a else p for a, p in zip(cols.proto_any.tolist(), cols.proto.tolist(), strict=True)]
    return list(zip(cols.rule_id.tolist(), [o >> 32 for o in order], (cols.action == DENY).tolist(),
                    _prefixes(cols, "src"), _prefixes(cols, "dst"), proto, _ports(cols, "sport"),
                    _ports(cols, "dport"), strict=True))


def messages(cols: RuleColumns) -> list[Any]:
    """The rules as tidegate.v1 AclRule messages (what a client sends ApplyPolicy)."""
    from control.rpc.api import pb2

    out = []
    for rule_id, priority, deny, src, dst, proto, sport, dport in _rows(cols):
        match = pb2.Match(src=src, dst=dst)
        if proto is not None:
            match.protocol_number = proto
        for field, ports in (("sport", sport), ("dport", dport)):
            if ports is not None:
                getattr(match, field).CopyFrom(pb2.PortRange(low=ports[0], high=ports[1]))
        action = pb2.ACTION_DENY if deny else pb2.ACTION_ALLOW
        out.append(pb2.AclRule(id=rule_id, priority=priority, action=action, match=match))
    return out


def packed(cols: RuleColumns) -> Any:
    """The rules as one AclColumns message (the API's packed form)."""
    from control.rpc.acl_wire import PACKED_NO_PREFIX, PACKED_PROTO_ANY
    from control.rpc.api import pb2

    def lengths(side: str) -> bytes:
        n = getattr(cols, f"{side}_len")
        return np.where(n == 0, PACKED_NO_PREFIX, n).astype(np.uint8).tobytes()

    named = (cols.src_len > 0) | (cols.dst_len > 0)
    order = cols.order
    return pb2.AclColumns(
        id=cols.rule_id.tolist(), priority=(order >> np.uint64(32)).tolist(),
        action=np.where(cols.action == DENY, pb2.ACTION_DENY, pb2.ACTION_ALLOW).tolist(),
        family=np.where(named, cols.family, 0).astype(np.uint8).tobytes(),
        src_addr=cols.src_addr.tobytes(), src_len=lengths("src"), dst_addr=cols.dst_addr.tobytes(),
        dst_len=lengths("dst"),
        protocol=np.where(cols.proto_any, PACKED_PROTO_ANY, cols.proto.astype(np.int64)).tolist(),
        sport_low=cols.sport_lo.tolist(), sport_high=cols.sport_hi.tolist(),
        dport_low=cols.dport_lo.tolist(), dport_high=cols.dport_hi.tolist())


def _range(ports: tuple[int, int], sep: str) -> str:
    return str(ports[0]) if ports[0] == ports[1] else f"{ports[0]}{sep}{ports[1]}"


def iptables_restore(cols: RuleColumns, chain: str = "PREROUTING") -> str:
    """`iptables-restore` input: the rules in order in the raw table's `chain` (for a set of IPv6
    rules, `ip6tables-restore` input: the same syntax)."""
    lines = ["*raw", f":{chain} ACCEPT [0:0]"]
    for _id, _prio, deny, src, dst, proto, sport, dport in _rows(cols):
        parts = [f"-A {chain}"]
        parts += [f"-s {src}"] if src else []
        parts += [f"-d {dst}"] if dst else []
        if proto is not None:
            parts.append(f"-p {NAMES.get(proto, proto)}")
            if proto == 132 and (sport or dport):
                parts.append("-m sctp")
        parts += [f"--sport {_range(sport, ':')}"] if sport else []
        parts += [f"--dport {_range(dport, ':')}"] if dport else []
        parts.append("-j DROP" if deny else "-j ACCEPT")
        lines.append(" ".join(parts))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def nft_chain(cols: RuleColumns, table: str) -> str:
    """`nft -f` input: table `table` with a prerouting chain (priority raw) of the rules in order."""
    body = []
    kinds = families(cols)
    for (_id, _prio, deny, src, dst, proto, sport, dport), family in zip(_rows(cols), cols.family.tolist(),
                                                                         strict=True):
        ip = "ip6" if family == 6 else "ip"
        parts = [f"{ip} saddr {src}"] if src else []
        parts += [f"{ip} daddr {dst}"] if dst else []
        if proto in PORTED and (sport or dport):
            name = NAMES[proto]
            parts += [f"{name} sport {_range(sport, '-')}"] if sport else []
            parts += [f"{name} dport {_range(dport, '-')}"] if dport else []
        elif proto is not None:
            parts.append(f"meta l4proto {proto}")
        body.append(f"    {' '.join(parts)} counter {'drop' if deny else 'accept'}")
    family_name = "inet" if len(kinds) > 1 else "ip6" if kinds == {6} else "ip"
    head = [f"table {family_name} {table} {{", "  chain prerouting {",
            "    type filter hook prerouting priority raw; policy accept;"]
    return "\n".join([*head, *body, "  }", "}"]) + "\n"
