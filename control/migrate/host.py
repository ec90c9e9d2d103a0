"""What the import needs to know about the machine besides its rules.

XDP judges every packet arriving on the attach interfaces, before the routing decision; netfilter's
INPUT sees only packets for this host, FORWARD only the others. So the translator needs the
host's local destinations (its local routing table: own addresses, broadcasts, anycast) and
whether it forwards at all. Both come from the machine (in a named namespace with --netns), or
from the command line for a policy prepared elsewhere. The live rule sets (iptables-save,
ip6tables-save, nft -j list ruleset, ipset save) can be read the same way.

For a conntrack ESTABLISHED rule (control/migrate/established.py) two more: which addresses
this host routes out by the attach interface and by it only (Tidegate records a flow as it
leaves, so only replies from those are in its table), and netfilter's conntrack timeouts.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass, field
from typing import Any

from control.migrate import intervals as iv

MULTICAST = {4: ipaddress.ip_network("224.0.0.0/4"), 6: ipaddress.ip_network("ff00::/8")}
LIMITED_BROADCAST = ipaddress.ip_network("255.255.255.255/32")
LOOPBACK = {4: ipaddress.ip_network("127.0.0.0/8"), 6: ipaddress.ip_network("::1/128")}
LOCAL_TYPES = ("local", "broadcast", "anycast")
TIMEOUT = 30.0


class HostError(RuntimeError):
    """A fact about the machine could not be read; the message says which and how to give it."""


@dataclass
class Host:
    interfaces: tuple[str, ...] = ()             # where Tidegate is (to be) attached
    local: dict[int, iv.Ivs] = field(default_factory=lambda: {4: iv.EMPTY, 6: iv.EMPTY})
    forwarding: dict[int, bool] = field(default_factory=lambda: {4: False, 6: False})
    source: str = ""  # how the facts were learnt, for the report
    # Addresses whose traffic this host sends out by the attach interface and by no other
    # (empty: none known); per family, why it is empty when it is.
    routed_back: dict[int, iv.Ivs] = field(default_factory=lambda: {4: iv.EMPTY, 6: iv.EMPTY})
    routed_back_why: dict[int, str] = field(default_factory=dict)
    # netfilter's conntrack timeouts (sysctl name without nf_conntrack_ -> seconds); missing ones
    # are the kernel's defaults (established.NF_DEFAULTS)
    conntrack_timeouts: dict[str, int] = field(default_factory=dict)
    conntrack_source: str = "the kernel's defaults"

    def local_prefixes(self, family: int) -> list[str]:
        return iv.prefixes(self.local[family], family)


def local_from_prefixes(prefixes: list[str], option: str = "--local") -> dict[int, iv.Ivs]:
    out = {4: iv.EMPTY, 6: iv.EMPTY}
    for text in prefixes:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise HostError(f"{option} {text!r}: not an address or prefix") from None
        out[net.version] = iv.union(out[net.version], iv.prefix_span(net))
    return out


def _run(cmd: list[str], netns: str | None) -> str:
    full = (["ip", "netns", "exec", netns, *cmd] if netns else cmd)
    try:
        done = subprocess.run(full, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except FileNotFoundError:
        raise HostError(f"{cmd[0]}: not installed (Debian packages iproute2, iptables, nftables, "
                        "ipset)") from None
    except subprocess.TimeoutExpired:
        raise HostError(f"{' '.join(cmd)}: no answer within {TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        where = f" in namespace {netns}" if netns else ""
        raise HostError(f"{' '.join(cmd)}{where} failed: {done.stderr.strip()[:300]}")
    return done.stdout


def read_local(netns: str | None = None) -> dict[int, iv.Ivs]:
    """The local routing table's local, broadcast and anycast destinations, plus the limited
    broadcast; loopback prefixes left out (the stack drops them as martians off loopback)."""
    out = {4: iv.prefix_span(LIMITED_BROADCAST), 6: iv.EMPTY}
    for family, flag in ((4, "-4"), (6, "-6")):
        routes = json.loads(_run(["ip", flag, "-j", "route", "show", "table", "local"], netns) or "[]")
        for route in routes:
            if route.get("type") not in LOCAL_TYPES:
                continue
            net = ipaddress.ip_network(route["dst"], strict=False)
            if net.subnet_of(LOOPBACK[family]):  # type: ignore[arg-type]
                continue
            out[family] = iv.union(out[family], iv.prefix_span(net))
    return out


def read_forwarding(netns: str | None = None) -> dict[int, bool]:
    paths = {4: "/proc/sys/net/ipv4/ip_forward", 6: "/proc/sys/net/ipv6/conf/all/forwarding"}
    return {family: _run(["cat", path], netns).strip() == "1" for family, path in paths.items()}


LIVE = (("iptables", ["iptables-save"]), ("ip6tables", ["ip6tables-save"]),
        ("iptables-legacy", ["iptables-legacy-save"]), ("ip6tables-legacy", ["ip6tables-legacy-save"]),
        ("nft", ["nft", "-j", "list", "ruleset"]), ("ipset", ["ipset", "save"]))


def read_live(netns: str | None = None) -> dict[str, str]:
    """The machine's rule sets, as the tools print them: both iptables backends (their tables are
    all in the kernel at once), nftables, ipsets; a tool that is missing is left out, and so is
    the legacy backend when it holds no table."""
    out: dict[str, str] = {}
    for key, cmd in LIVE:
        try:
            text = _run(cmd, netns)
        except HostError as exc:
            if "not installed" in str(exc):
                continue
            raise
        if key.endswith("-legacy") and not any(line.startswith("*") for line in text.splitlines()):
            continue
        out[key] = text
    return out


# The policy routing rules every host has; any other rule may send a reply out by another interface
# than the main table says (ip rule: from, fwmark, iif, uidrange, l3mdev ...).
DEFAULT_RULES = {(0, "local"), (32766, "main"), (32767, "default")}


def routed_via(routes: list[dict[str, Any]], ifname: str, family: int) -> iv.Ivs:
    """The addresses whose route in `routes` (a main table as `ip -j route show` prints it) leaves
    by `ifname` and only by it. The longest matching prefix decides; a prefix with a route of
    another type (blackhole, unreachable, ...), another device, several next hops not all by
    `ifname`, or several routes (metrics) not all by it counts as leaving elsewhere, and so do
    addresses no route covers."""
    top = iv.top_of(family)
    only: dict[tuple[int, int], bool] = {}
    spans: dict[tuple[int, int], iv.Ivs] = {}
    for route in routes:
        dst = route.get("dst", "")
        net = ipaddress.ip_network("0.0.0.0/0" if family == 4 else "::/0") if dst == "default" else \
            ipaddress.ip_network(dst, strict=False)
        if net.version != family:
            continue
        hops = route.get("nexthops") or [route]
        ok = route.get("type", "unicast") == "unicast" and all(h.get("dev") == ifname for h in hops)
        key = (net.prefixlen, int(net.network_address))
        only[key] = only.get(key, True) and ok
        spans[key] = iv.prefix_span(net)
    out = iv.EMPTY
    for key in sorted(only):
        out = iv.union(out, spans[key]) if only[key] else iv.subtract(out, spans[key], top)
    return out


def read_routed_back(interfaces: tuple[str, ...], netns: str | None = None) -> tuple[dict[int, iv.Ivs],
                                                                                     dict[int, str]]:
    """Per family: the addresses this host routes out by the one attach interface only (its main
    table, when no policy routing rule could choose another), and why a family has none."""
    out, why = {4: iv.EMPTY, 6: iv.EMPTY}, {}
    if len(interfaces) != 1:
        text = ("no attach interface is given" if not interfaces else
                f"{len(interfaces)} attach interfaces: each records its own flows, and a reply may "
                "arrive by another than its flow left by")
        return out, {4: text, 6: text}
    for family, flag in ((4, "-4"), (6, "-6")):
        rules = json.loads(_run(["ip", flag, "-j", "rule", "show"], netns) or "[]")
        extra = [r for r in rules if (r.get("priority"), r.get("table")) not in DEFAULT_RULES
                 or r.get("src", "all") != "all" or set(r) - {"priority", "src", "table"}]
        if extra:
            first = extra[0]
            why[family] = (f"IPv{family} policy routing (ip rule {first.get('priority')}: "
                           f"{json.dumps(first, separators=(',', ':'))[:120]}) may send replies out by "
                           "another interface than the routes say")
            continue
        routes = json.loads(_run(["ip", flag, "-j", "route", "show", "table", "main"], netns) or "[]")
        out[family] = routed_via(routes, interfaces[0], family)
        if not out[family]:
            why[family] = f"no IPv{family} route leaves by {interfaces[0]}"
    return out, why


CONNTRACK_SYSCTLS = "/proc/sys/net/netfilter/nf_conntrack_*timeout*"


def read_conntrack_timeouts(netns: str | None = None) -> tuple[dict[str, int], str]:
    """netfilter's conntrack timeouts (nf_conntrack_tcp_timeout_established -> tcp_timeout_established),
    or {} when conntrack is not loaded there (its defaults then apply once it is)."""
    text = _run(["sh", "-c", f"grep -H . {CONNTRACK_SYSCTLS} 2>/dev/null; true"], netns)
    out = {}
    for line in text.splitlines():
        path, _, value = line.partition(":")
        name = path.rsplit("/", 1)[-1].removeprefix("nf_conntrack_")
        if value.strip().isdigit():
            out[name] = int(value)
    where = f"the namespace {netns}" if netns else "this machine"
    return out, (f"read from {where}" if out else f"the kernel's defaults (no conntrack sysctls in {where})")
