"""`ipset save` output -> address sets, for `-m set --match-set NAME src|dst`.

Address sets (hash:ip, hash:net, bitmap:ip, and list:set of those) become exact address sets
(`nomatch` entries of hash:net carved out, the longest prefix deciding as the kernel does).
Sets of other types (hash:ip,port, hash:net,iface, ...) are read but not usable: rules on
them stay in netfilter. A set is copied as saved: entries added later (fail2ban, timeouts)
do not reach the imported policy, which the report says per rule.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, field

from control.migrate import intervals as iv
from control.migrate.intervals import Ivs

ADDRESS_TYPES = frozenset({"hash:ip", "hash:net", "bitmap:ip"})


class IpsetError(ValueError):
    """A line of `ipset save` output that does not parse; the message names the line."""


@dataclass
class IpSet:
    name: str
    kind: str
    family: int = 4
    entries: list[tuple[int, int, bool]] = field(default_factory=list)  # (low, high, nomatch)
    members: list[str] = field(default_factory=list)  # list:set
    timeout: bool = False  # entries expire: the copy ages differently

    @property
    def usable(self) -> bool:
        return self.kind in ADDRESS_TYPES or self.kind == "list:set"


@dataclass
class Ipsets:
    sets: dict[str, IpSet] = field(default_factory=dict)

    def addresses(self, name: str, _seen: frozenset[str] = frozenset()) -> tuple[int, Ivs] | str:
        """(family, exact address set) of set `name`, or the reason it cannot be used."""
        found = self.sets.get(name)
        if found is None:
            return f"ipset {name} is not in the ipset save output (give it with --ipset)"
        if not found.usable:
            return f"ipset {name} is of type {found.kind} (only address sets can be imported)"
        if found.kind == "list:set":
            return self._list(found, _seen | {name})
        return found.family, _resolve(found.entries, found.family)

    def _list(self, found: IpSet, seen: frozenset[str]) -> tuple[int, Ivs] | str:
        family, total = found.family, iv.EMPTY
        for member in found.members:
            if member in seen:
                return f"ipset {found.name}: list:set loop through {member}"
            got = self.addresses(member, seen)
            if isinstance(got, str):
                return got
            family = got[0]
            total = iv.union(total, got[1])
        return family, total


def _resolve(entries: list[tuple[int, int, bool]], family: int) -> Ivs:
    """Entries from the widest to the narrowest: a narrower entry overrides a wider one, as the
    kernel's longest-prefix lookup does (a `nomatch` /32 inside a matched /24 is a hole)."""
    result = iv.EMPTY
    top = iv.top_of(family)
    for low, high, nomatch in sorted(entries, key=lambda e: -(e[1] - e[0])):
        span = iv.span(low, high)
        result = iv.subtract(result, span, top) if nomatch else iv.union(result, span)
    return result


def _entry(text: str, family: int) -> tuple[int, int]:
    try:
        if "-" in text:
            first, last = (ipaddress.ip_address(p) for p in text.split("-", 1))
            return int(first), int(last)
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an address, prefix or range: {exc}") from None
    if net.version != family:
        raise ValueError(f"{text!r} is not an IPv{family} entry")
    low, high = iv.prefix_span(net)[0]
    return low, high


def parse(text: str, name: str = "ipset save") -> Ipsets:
    out = Ipsets()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line)
            _line(out, words)
        except ValueError as exc:
            raise IpsetError(f"{name}: line {number}: {exc}: {line[:80]!r}") from None
    return out


def _line(out: Ipsets, words: list[str]) -> None:
    verb = words[0]
    if verb == "create":
        if len(words) < 3:
            raise ValueError("create needs a name and a type")
        options = words[3:]
        family = 6 if _option(options, "family") == "inet6" else 4
        out.sets[words[1]] = IpSet(words[1], words[2], family, timeout="timeout" in options)
    elif verb == "add":
        if len(words) < 3:
            raise ValueError("add needs a set and an entry")
        found = out.sets.get(words[1])
        if found is None:
            raise ValueError(f"add to {words[1]}, which no create line made")
        if found.kind == "list:set":
            found.members.append(words[2])
        elif found.kind in ADDRESS_TYPES:
            low, high = _entry(words[2], found.family)
            found.entries.append((low, high, "nomatch" in words[3:]))
            found.timeout = found.timeout or "timeout" in words[3:]
    else:
        raise ValueError(f"{verb!r}: ipset save prints only create and add lines")


def _option(words: list[str], key: str) -> str | None:
    for i, word in enumerate(words[:-1]):
        if word == key:
            return words[i + 1]
    return None
