"""nft's JSON match expressions (`{"match": {"op", "left", "right"}}`) folded into a rule's Cond.

Understood exactly: ip/ip6 saddr and daddr, ip protocol, meta l4proto and nfproto, the ports of
tcp/udp/sctp (and `th` with a port protocol), icmp/icmpv6 type and code, tcp flags (plain, with
a mask, `in`), ct state, meta iifname/iif/oifname/oif, and their right-hand sides: values,
prefixes, ranges, anonymous and named sets, and concatenations of those. Anything else is an
`Unsupported` condition with its JSON, so the rule stays in netfilter.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, replace
from typing import Any

from control.migrate import intervals as iv
from control.migrate import names
from control.migrate.iptables_matches import flag_set, icmp_values, port_number
from control.migrate.ir import FLAGS_TOP, ICMP_TOP, PORT_TOP, PROTO_TOP, Box, Cond, Iface, Unsupported

NamedSets = dict[str, list[Any]]
FAMILY_OF = {"ip": 4, "ip6": 6, "ipv4": 4, "ipv6": 6}
L4 = {"tcp": 6, "udp": 17, "sctp": 132, "udplite": 136, "dccp": 33}


@dataclass(frozen=True)
class Field:
    """What a left-hand side names: a Box dimension (with the protocol/family it implies), or
    one of the other conditions ("family", "iif", "oif", "ctstate")."""

    dim: str
    family: int | None = None  # the IP family the field belongs to (ip saddr: 4)
    proto: int | None = None   # the protocol it implies (tcp dport: 6)
    mask: int | None = None    # tcp flags & MASK
    kind: str = ""             # "addr", "port", "proto", "icmp", "icmpcode", "flags"


class NotUnderstood(Exception):
    """An expression outside what this module reads: the rule gets an Unsupported condition."""


def _payload(p: dict[str, Any]) -> Field:
    proto, name = p.get("protocol"), p.get("field")
    if proto in ("ip", "ip6") and name in ("saddr", "daddr"):
        return Field("src" if name == "saddr" else "dst", FAMILY_OF[proto], kind="addr")
    if proto == "ip" and name == "protocol":
        return Field("proto", 4, kind="proto")
    if proto in L4 and name in ("sport", "dport"):
        return Field(name, None, L4[proto], kind="port")
    if proto == "th" and name in ("sport", "dport"):
        return Field(name, None, None, kind="port")
    if proto in ("icmp", "icmpv6") and name in ("type", "code"):
        family, number = (4, names.ICMP) if proto == "icmp" else (6, names.ICMPV6)
        return Field("icmp", family, number, kind="icmp" if name == "type" else "icmpcode")
    if proto == "tcp" and name == "flags":
        return Field("flags", None, names.TCP, kind="flags")
    raise NotUnderstood(f"{proto} {name}")


def field_of(left: Any) -> Field:
    if isinstance(left, dict):
        if "payload" in left:
            return _payload(left["payload"])
        if "meta" in left:
            key = left["meta"].get("key")
            if key == "l4proto":
                return Field("proto", kind="proto")
            if key in ("nfproto", "protocol"):
                return Field("family", kind="family")
            if key in ("iifname", "iif"):
                return Field("iif")
            if key in ("oifname", "oif"):
                return Field("oif")
            raise NotUnderstood(f"meta {key}")
        if "ct" in left and left["ct"].get("key") == "state" and "dir" not in left["ct"]:
            return Field("ctstate")
        if "&" in left:
            inner, mask = left["&"]
            found = field_of(inner)
            if found.kind == "flags":
                return Field("flags", None, names.TCP, _flags(mask), kind="flags")
    raise NotUnderstood(json.dumps(left)[:80])


def _flags(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return names.tcp_flag_mask(value) if "," in value or value in names.TCP_FLAGS else int(value, 0)
    if isinstance(value, list):
        mask = 0
        for part in value:
            mask |= _flags(part)
        return mask
    if isinstance(value, dict) and "|" in value:
        return _flags(value["|"])
    raise NotUnderstood(f"flags {value!r}")


def _scalar(value: Any, f: Field, family: int) -> iv.Ivs:
    if f.kind == "addr":
        return _address(value, f.family or family)
    if f.kind == "port":
        number = value if isinstance(value, int) else port_number(str(value), "tcp")
        return iv.span(number, number)
    if f.kind == "proto":
        number = value if isinstance(value, int) else names.protocol_number(str(value))
        return iv.span(number, number)
    if f.kind == "icmp":
        table = names.ICMP_TYPES if family == 4 else names.ICMPV6_TYPES
        kind = value if isinstance(value, int) else table.get(str(value), (None,))[0]
        if kind is None:
            raise NotUnderstood(f"icmp type {value!r}")
        return icmp_values(kind, None)
    if f.kind == "icmpcode":
        code = names.icmp_code(value, family)
        return iv.normalize(((t << 8) | code, (t << 8) | code) for t in range(256))
    if f.kind == "flags":
        bits = _flags(value)
        if f.mask is not None:
            return flag_set(f.mask, bits)
        return iv.span(bits, bits)
    raise NotUnderstood(f.kind)


def _address(value: Any, family: int) -> iv.Ivs:
    if isinstance(value, dict) and "prefix" in value:
        net = ipaddress.ip_network(f"{value['prefix']['addr']}/{value['prefix']['len']}", strict=False)
    elif isinstance(value, dict) and "range" in value:
        low, high = (ipaddress.ip_address(a) for a in value["range"])
        if low.version != family:
            return iv.EMPTY
        return iv.span(int(low), int(high))
    elif isinstance(value, str):
        net = ipaddress.ip_network(value, strict=False)
    else:
        raise NotUnderstood(f"address {value!r}")
    if net.version != family:
        return iv.EMPTY
    return iv.prefix_span(net)


def values_of(right: Any, f: Field, family: int, sets: NamedSets) -> iv.Ivs:
    """The right-hand side as an integer set: a value, prefix, range, {set}, or @named set."""
    if isinstance(right, str) and right.startswith("@"):
        if right[1:] not in sets:
            raise NotUnderstood(f"set {right} (not in the ruleset)")
        right = {"set": sets[right[1:]]}
    if isinstance(right, dict) and "set" in right:
        out: iv.Ivs = iv.EMPTY
        for element in right["set"]:
            out = iv.union(out, values_of(element, f, family, sets))
        return out
    if isinstance(right, dict) and "elem" in right:  # {"elem": {"val": ..., "timeout": ...}}
        return values_of(right["elem"]["val"], f, family, sets)
    if isinstance(right, dict) and "range" in right and f.kind != "addr":
        low, high = (_scalar(v, f, family)[0] for v in right["range"])
        return iv.span(low[0], high[1])
    if isinstance(right, list) and f.kind == "flags":
        return _scalar(right, f, family)
    return _scalar(right, f, family)


TOPS = {"proto": PROTO_TOP, "sport": PORT_TOP, "dport": PORT_TOP, "icmp": ICMP_TOP, "flags": FLAGS_TOP}


def apply_match(cond: Cond, match: dict[str, Any], sets: NamedSets) -> None:
    """Fold one match statement into `cond`; NotUnderstood if it cannot be read exactly."""
    op, left, right = match.get("op", "=="), match["left"], match["right"]
    if isinstance(left, dict) and "concat" in left:
        _concat(cond, op, left["concat"], right, sets)
        return
    f = field_of(left)
    if f.dim in ("iif", "oif", "family", "ctstate"):
        _other(cond, f, op, right, sets)
        return
    if f.dim == "flags" and op == "in" and f.mask is None:  # tcp flags syn: any of these set
        bits = _flags(right if not isinstance(right, dict) else right.get("set", right))
        values = iv.normalize((v, v) for v in range(FLAGS_TOP + 1) if v & bits)
        _restrict(cond, f, values, negate=False)
        return
    if op not in ("==", "!=", "in") and f.kind in ("port", "proto"):
        _compare(cond, f, op, right)
        return
    if op not in ("==", "!=", "in"):
        raise NotUnderstood(f"operator {op}")
    for family in sorted({b.family for b in cond.boxes}):
        if f.family is not None and f.family != family:
            continue
        values = values_of(right, f, family, sets)
        _restrict(cond, f, values, negate=op == "!=", family=family)


def _compare(cond: Cond, f: Field, op: str, right: Any) -> None:
    number = int(right)
    top = TOPS[f.dim]
    spans = {"<": (0, number - 1), "<=": (0, number), ">": (number + 1, top), ">=": (number, top)}
    if op not in spans:
        raise NotUnderstood(f"operator {op}")
    _restrict(cond, f, iv.span(*spans[op]), negate=False)


def _restrict(cond: Cond, f: Field, values: iv.Ivs, negate: bool, family: int | None = None) -> None:
    out = []
    for box in cond.boxes:
        if f.family is not None and box.family != f.family:
            continue  # ip saddr never matches an IPv6 packet
        if family is not None and box.family != family:
            out.append(box)
            continue
        limited = box.restrict("proto", iv.span(f.proto, f.proto)) if f.proto is not None else box
        if limited is None:
            continue
        top = limited.top(f.dim)
        final = limited.restrict(f.dim, iv.complement(values, top) if negate else values)
        if final is not None:
            out.append(final)
    cond.boxes = out


def _other(cond: Cond, f: Field, op: str, right: Any, sets: NamedSets) -> None:
    items = right["set"] if isinstance(right, dict) and "set" in right else [right]
    if isinstance(right, str) and right.startswith("@"):
        if right[1:] not in sets:
            raise NotUnderstood(f"set {right}")
        items = sets[right[1:]]
    if isinstance(right, list):
        items = right
    words = [str(i) for i in items]
    negate = op == "!="
    if f.dim == "family":
        wanted = {FAMILY_OF.get(w, 0) for w in words}
        cond.boxes = [b for b in cond.boxes if (b.family in wanted) != negate]
    elif f.dim == "ctstate":
        states = frozenset(w.lower() for w in words)
        if negate:
            states = names.CT_STATES - states
        cond.ctstate = states if cond.ctstate is None else cond.ctstate & states
    elif len(words) == 1 or negate:  # iifname "eth0"; != { a, b }: none of them
        target = cond.iif if f.dim == "iif" else cond.oif
        target.extend(Iface(_ifname(w), negate) for w in words)
    else:
        raise NotUnderstood(f"{f.dim} in a set of several names")


def _ifname(word: str) -> str:
    return word[:-1] + "+" if word.endswith("*") else word


def _concat(cond: Cond, op: str, parts: list[Any], right: Any, sets: NamedSets) -> None:
    """ip saddr . tcp dport { 1.1.1.1 . 22, ... }: one box per element."""
    if op == "!=":
        raise NotUnderstood("!= on a concatenation")
    fields = [field_of(p) for p in parts]
    if any(f.dim in ("iif", "oif", "family", "ctstate") for f in fields):
        raise NotUnderstood("concatenation with interfaces or states")
    if isinstance(right, str) and right.startswith("@"):
        right = {"set": sets.get(right[1:], [])}
    elements = right["set"] if isinstance(right, dict) and "set" in right else [right]
    out: list[Box] = []
    for element in elements:
        values = element["concat"] if isinstance(element, dict) and "concat" in element else None
        if values is None or len(values) != len(fields):
            raise NotUnderstood("concatenation element")
        trial = Cond(list(cond.boxes))
        for part, value in zip(parts, values, strict=True):
            apply_match(trial, {"op": "==", "left": part, "right": value}, sets)
        out.extend(b for b in trial.boxes if b not in out)
    cond.boxes = out


PORTED = iv.normalize((p, p) for p in L4.values())


def finish(cond: Cond) -> None:
    """`th dport` without a port protocol reads two bytes of any transport header: the rule
    stays in netfilter, and what it may match is widened to every packet of a protocol
    without ports (an ICMP checksum may read as port 53)."""
    out: list[Box] = []
    for box in cond.boxes:
        ported = box.sport is not None or box.dport is not None
        if not ported or (box.proto is not None and iv.contains(PORTED, box.proto)):
            out.append(box)
            continue
        if not any(u.what == "th sport/dport" for u in cond.unsupported):
            cond.unsupported.append(Unsupported("th sport/dport", "transport ports of any protocol"))
        portless = replace(box, sport=None, dport=None)
        others = iv.complement(PORTED, PROTO_TOP)
        for part in (box.restrict("proto", PORTED), portless.restrict("proto", others)):
            if part is not None:
                out.append(part)
    cond.boxes = out


def unsupported(cond: Cond, what: str, expr: Any, stateful: bool = False) -> None:
    cond.unsupported.append(Unsupported(what, json.dumps(expr, separators=(",", ":"))[:200], stateful))
