"""Sets of integers as sorted, disjoint, non-adjacent inclusive ranges: addresses, ports,
protocol numbers, ICMP type/code pairs and TCP flag bytes are all sets of this kind.

An `Ivs` is a tuple of (low, high) pairs; () is the empty set. Every operation is exact, which
is what lets the order-safety analysis say "cannot overlap" only when it is true, and what turns
negations (`! -s 10.0.0.0/8`) and address ranges (`-m iprange`) into covering prefixes.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

Ivs = tuple[tuple[int, int], ...]
EMPTY: Ivs = ()

ADDR_BITS = {4: 32, 6: 128}


def full(top: int) -> Ivs:
    return ((0, top),)


def span(low: int, high: int) -> Ivs:
    return ((low, high),) if low <= high else EMPTY


def normalize(pairs: Iterable[tuple[int, int]]) -> Ivs:
    """Sorted, merged (overlapping or adjacent ranges joined); empty ranges dropped."""
    out: list[list[int]] = []
    for low, high in sorted(p for p in pairs if p[0] <= p[1]):
        if out and low <= out[-1][1] + 1:
            if high > out[-1][1]:
                out[-1][1] = high
        else:
            out.append([low, high])
    return tuple((a, b) for a, b in out)


def union(a: Ivs, b: Ivs) -> Ivs:
    if not a:
        return b
    if not b:
        return a
    return normalize(a + b)


def intersect(a: Ivs, b: Ivs) -> Ivs:
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        low = max(a[i][0], b[j][0])
        high = min(a[i][1], b[j][1])
        if low <= high:
            out.append((low, high))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def overlaps(a: Ivs, b: Ivs) -> bool:
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i][0] <= b[j][1] and b[j][0] <= a[i][1]:
            return True
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return False


def complement(a: Ivs, top: int) -> Ivs:
    out = []
    nxt = 0
    for low, high in a:
        if low > nxt:
            out.append((nxt, low - 1))
        nxt = high + 1
    if nxt <= top:
        out.append((nxt, top))
    return tuple(out)


def subtract(a: Ivs, b: Ivs, top: int) -> Ivs:
    return intersect(a, complement(b, top))


def is_full(a: Ivs, top: int) -> bool:
    return a == ((0, top),)


def contains(outer: Ivs, inner: Ivs) -> bool:
    return intersect(outer, inner) == inner


def size(a: Ivs) -> int:
    return sum(high - low + 1 for low, high in a)


# --- addresses -------------------------------------------------------------------------------------

def top_of(family: int) -> int:
    return (1 << ADDR_BITS[family]) - 1


def prefix_span(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Ivs:
    low = int(network.network_address)
    return ((low, low | ((1 << (network.max_prefixlen - network.prefixlen)) - 1)),)


def range_prefixes(low: int, high: int, bits: int) -> list[tuple[int, int]]:
    """The fewest prefixes (address, length) that cover low..high exactly."""
    out = []
    while low <= high:
        # the largest block aligned at `low` that does not run past `high`
        step = (low & -low).bit_length() - 1 if low else bits
        while step > 0 and low + (1 << step) - 1 > high:
            step -= 1
        out.append((low, bits - step))
        low += 1 << step
    return out


def prefixes(a: Ivs, family: int) -> list[str]:
    """Covering prefixes of an address set, as text ("10.0.0.0/8", "2001:db8::/32")."""
    bits = ADDR_BITS[family]
    cls = ipaddress.IPv4Network if family == 4 else ipaddress.IPv6Network
    return [str(cls((addr, plen))) for low, high in a for addr, plen in range_prefixes(low, high, bits)]


def prefix_count(a: Ivs, family: int) -> int:
    bits = ADDR_BITS[family]
    return sum(len(range_prefixes(low, high, bits)) for low, high in a)


def parse_prefix(text: str, family: int) -> Ivs | None:
    """"10.0.0.0/8" or "10.1.2.3" (host bits allowed, as iptables takes them) of `family`, parsed
    with inet_pton; None for anything else (the caller's slower path says what is wrong)."""
    address, _, length = text.partition("/")
    bits = ADDR_BITS[family]
    if length and not (length.isdigit() and int(length) <= bits):
        return None
    try:
        packed = socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, address)
    except (OSError, ValueError):
        return None
    plen = int(length) if length else bits
    host = (1 << (bits - plen)) - 1
    low = int.from_bytes(packed, "big") & ~host
    return ((low, low | host),)


def address_text(value: int, family: int) -> str:
    return str(ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value))
