"""The match modules of an iptables rule (`-m NAME --option VALUE`), as iptables-save prints them.

Each known option folds into the rule's `Cond` exactly (negations included); every other module
becomes an `Unsupported` condition carrying its text, so the rule stays in netfilter and the
order-safety analysis treats it as "could match anything its other conditions allow".
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from control.migrate import intervals as iv
from control.migrate import names
from control.migrate.ipset import Ipsets
from control.migrate.ir import FLAGS_TOP, ICMP_TOP, PORT_TOP, Cond, Unsupported

# Matches whose evaluation changes state: a packet that reaches them matters even if it is
# dropped later (limit tokens, recent lists, quotas, nth counters).
STATEFUL = frozenset({"limit", "hashlimit", "recent", "connlimit", "quota", "quota2", "statistic",
                      "nfacct", "set-update"})
PORT_MODULES = {"tcp": 6, "udp": 17, "sctp": 132}


@dataclass
class Ctx:
    family: int
    cond: Cond
    ipsets: Ipsets | None
    protocol: int | None = None  # -p, which also names the implicit module
    comment: str = ""


Handler = Callable[[Ctx, bool, list[str]], None]


def port_number(text: str, proto: str) -> int:
    if text.isdigit():
        value = int(text)
        if value > PORT_TOP:
            raise ValueError(f"port {text}: ports go up to 65535")
        return value
    try:
        return socket.getservbyname(text, proto)
    except OSError:
        raise ValueError(f"unknown port {text!r}") from None


def port_range(text: str, proto: str = "tcp") -> iv.Ivs:
    """"22", "80:443", ":1023", "1024:" (and "-" as iptables also accepts)."""
    sep = ":" if ":" in text else ("-" if "-" in text[1:] else None)
    if sep is None:
        value = port_number(text, proto)
        return iv.span(value, value)
    low, high = text.split(sep, 1)
    first = port_number(low, proto) if low else 0
    last = port_number(high, proto) if high else PORT_TOP
    if first > last:
        raise ValueError(f"port range {text!r} is reversed")
    return iv.span(first, last)


def port_list(text: str, proto: str = "tcp") -> iv.Ivs:
    out: iv.Ivs = iv.EMPTY
    for part in text.split(","):
        out = iv.union(out, port_range(part, proto))
    return out


def _negated(values: iv.Ivs, negate: bool, top: int) -> iv.Ivs:
    return iv.complement(values, top) if negate else values


def _proto_name(ctx: Ctx) -> str:
    return {6: "tcp", 17: "udp", 132: "sctp"}.get(ctx.protocol or 0, "tcp")


def _ports(dim: str) -> Handler:
    def handle(ctx: Ctx, negate: bool, args: list[str]) -> None:
        ctx.cond.restrict(dim, _negated(port_range(args[0], _proto_name(ctx)), negate, PORT_TOP))
    return handle


def _multiport(dim: str) -> Handler:
    def handle(ctx: Ctx, negate: bool, args: list[str]) -> None:
        values = port_list(args[0], _proto_name(ctx))
        if dim != "both":
            ctx.cond.restrict(dim, _negated(values, negate, PORT_TOP))
        elif negate:  # neither port in the list
            outside = iv.complement(values, PORT_TOP)
            ctx.cond.restrict("sport", outside)
            ctx.cond.restrict("dport", outside)
        else:  # either port in the list: two boxes
            ctx.cond.split([("sport", values), ("dport", values)])
    return handle


def flag_set(mask: int, comp: int) -> iv.Ivs:
    """Every flags byte f with f & mask == comp."""
    return iv.normalize((f, f) for f in range(FLAGS_TOP + 1) if f & mask == comp)


def _tcp_flags(ctx: Ctx, negate: bool, args: list[str]) -> None:
    mask, comp = names.tcp_flag_mask(args[0]), names.tcp_flag_mask(args[1])
    ctx.cond.restrict("flags", _negated(flag_set(mask, comp), negate, FLAGS_TOP))


def _syn(ctx: Ctx, negate: bool, args: list[str]) -> None:
    _tcp_flags(ctx, negate, ["FIN,SYN,RST,ACK", "SYN"])


def icmp_values(kind: int, code: int | None) -> iv.Ivs:
    if kind < 0:
        return iv.full(ICMP_TOP)
    if code is None:
        return iv.span(kind << 8, (kind << 8) | 0xFF)
    return iv.span((kind << 8) | code, (kind << 8) | code)


def _icmp(ctx: Ctx, negate: bool, args: list[str]) -> None:
    kind, code = names.icmp_type(args[0], ctx.family)
    ctx.cond.restrict("icmp", _negated(icmp_values(kind, code), negate, ICMP_TOP))


def address_range(text: str, family: int) -> iv.Ivs:
    import ipaddress

    first, _, last = text.partition("-")
    low, high = ipaddress.ip_address(first), ipaddress.ip_address(last or first)
    if low.version != family or high.version != family:
        raise ValueError(f"{text!r} is not an IPv{family} range")
    return iv.span(int(low), int(high))


def _iprange(dim: str) -> Handler:
    def handle(ctx: Ctx, negate: bool, args: list[str]) -> None:
        values = address_range(args[0], ctx.family)
        ctx.cond.restrict(dim, _negated(values, negate, iv.top_of(ctx.family)))
    return handle


def _match_set(ctx: Ctx, negate: bool, args: list[str]) -> None:
    name, flags = args[0], args[1].split(",")
    text = f"{'! ' if negate else ''}--match-set {name} {args[1]}"
    got = ctx.ipsets.addresses(name) if ctx.ipsets is not None else \
        f"ipset {name}: no `ipset save` output was given (--ipset)"
    if isinstance(got, str):
        ctx.cond.unsupported.append(Unsupported("-m set", f"{text}: {got}"))
        return
    family, values = got
    if family != ctx.family:
        ctx.cond.boxes = []  # the kernel refuses it; never matches
        return
    dim = "src" if flags[0] == "src" else "dst"
    ctx.cond.restrict(dim, _negated(values, negate, iv.top_of(family)))
    ctx.cond.notes.append(f"ipset {name} copied as saved ({iv.prefix_count(values, family)} prefixes): "
                          "later changes to the set do not reach Tidegate")


def _set_extra(ctx: Ctx, negate: bool, args: list[str]) -> None:
    ctx.cond.unsupported.append(Unsupported("-m set", "set counters or --return-nomatch"))


def _ctstate(ctx: Ctx, negate: bool, args: list[str]) -> None:
    states = frozenset(s.lower() for s in args[0].split(","))
    unknown = states - names.CT_STATES
    if unknown:
        raise ValueError(f"unknown conntrack state {', '.join(sorted(unknown))}")
    if negate:
        states = names.CT_STATES - states
    ctx.cond.ctstate = states if ctx.cond.ctstate is None else ctx.cond.ctstate & states


def _comment(ctx: Ctx, negate: bool, args: list[str]) -> None:
    ctx.comment = args[0]


# module -> option -> (number of values, handler)
MODULES: dict[str, dict[str, tuple[int, Handler]]] = {
    "tcp": {"--sport": (1, _ports("sport")), "--source-port": (1, _ports("sport")),
            "--dport": (1, _ports("dport")), "--destination-port": (1, _ports("dport")),
            "--tcp-flags": (2, _tcp_flags), "--syn": (0, _syn)},
    "udp": {"--sport": (1, _ports("sport")), "--source-port": (1, _ports("sport")),
            "--dport": (1, _ports("dport")), "--destination-port": (1, _ports("dport"))},
    "sctp": {"--sport": (1, _ports("sport")), "--source-port": (1, _ports("sport")),
             "--dport": (1, _ports("dport")), "--destination-port": (1, _ports("dport"))},
    "icmp": {"--icmp-type": (1, _icmp)},
    "icmp6": {"--icmpv6-type": (1, _icmp)},
    "multiport": {"--sports": (1, _multiport("sport")), "--source-ports": (1, _multiport("sport")),
                  "--dports": (1, _multiport("dport")), "--destination-ports": (1, _multiport("dport")),
                  "--ports": (1, _multiport("both"))},
    "iprange": {"--src-range": (1, _iprange("src")), "--dst-range": (1, _iprange("dst"))},
    "set": {"--match-set": (2, _match_set), "--return-nomatch": (0, _set_extra),
            "--update-counters": (0, _set_extra), "--update-subcounters": (0, _set_extra)},
    "conntrack": {"--ctstate": (1, _ctstate)},
    "state": {"--state": (1, _ctstate)},
    "comment": {"--comment": (1, _comment)},
}
# The protocol a module's options need (-p tcp -m tcp ...): the module restricts it too.
MODULE_PROTOCOL = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmp6": 58}


def module_option(ctx: Ctx, module: str, option: str) -> tuple[int, Handler] | None:
    return MODULES.get(module, {}).get(option)
