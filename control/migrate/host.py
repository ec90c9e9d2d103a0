"""What the import needs to know about the machine besides its rules.

XDP judges every packet arriving on the attach interfaces, before the routing decision; netfilter's
INPUT sees only packets for this host, FORWARD only the others. So the translator needs the
host's local destinations (its local routing table: own addresses, broadcasts, anycast) and
whether it forwards at all. Both come from the machine (in a named namespace with --netns), or
from the command line for a policy prepared elsewhere. The live rule sets (iptables-save,
ip6tables-save, nft -j list ruleset, ipset save) can be read the same way.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass, field

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

    def local_prefixes(self, family: int) -> list[str]:
        return iv.prefixes(self.local[family], family)


def local_from_prefixes(prefixes: list[str]) -> dict[int, iv.Ivs]:
    out = {4: iv.EMPTY, 6: iv.EMPTY}
    for text in prefixes:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise HostError(f"--local {text!r}: not an address or prefix") from None
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
