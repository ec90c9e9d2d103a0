"""How many LPM trie nodes the kernel visits for one key: the profile behind the ACL cost.

The kernel's BPF_MAP_TYPE_LPM_TRIE (kernel/bpf/lpm_trie.c) is a path-compressed binary trie:
its nodes are the inserted prefixes plus an "intermediate" node wherever two of them diverge.
A lookup walks from the root, one dependent pointer load per node, while the node's prefix
matches the key, then stops at the first node that does not match (or a missing child). So
the cost of a stage is the number of nodes on the key's path, which grows with how many
prefixes share the key's leading bits, roughly log2 of the entries for random prefixes.

This module rebuilds that path from the map's contents (read back from the kernel through
BCC, so it is what the program really walks) without building the trie: a prefix P of the key
is a node iff P was inserted or both P+0 and P+1 have entries below them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Walk:
    nodes: int  # nodes the lookup visits (the last may be a non-matching one)
    value: int | None  # the longest match's value, as the program would get it
    entries: int  # entries in the map


class Trie:
    """A snapshot of one LPM map: (prefix bits, prefix length) -> value, `width` key bits."""

    def __init__(self, entries: Iterable[tuple[bytes, int, int]], width_bytes: int) -> None:
        self.width = 8 * width_bytes
        self._values: dict[tuple[int, int], int] = {}
        for data, plen, value in entries:
            self._values[(self._masked(int.from_bytes(data, "big"), plen), plen)] = value
        self._sorted = sorted(self._values)

    def _masked(self, bits: int, plen: int) -> int:
        shift = self.width - plen
        return bits >> shift << shift

    def _below(self, bits: int, plen: int) -> bool:
        """Whether any entry lies strictly below the prefix (bits, plen)."""
        lo = bits
        hi = bits + (1 << (self.width - plen))
        start = bisect.bisect_left(self._sorted, (lo, plen + 1))
        return start < len(self._sorted) and self._sorted[start][0] < hi

    def walk(self, key: bytes) -> Walk:
        bits = int.from_bytes(key, "big")
        nodes, value = 0, None
        deepest = -1
        for plen in range(self.width + 1):
            prefix = self._masked(bits, plen)
            real = (prefix, plen) in self._values
            if real:
                value = self._values[(prefix, plen)]
            if real or (plen < self.width and self._branches(prefix, plen)):
                nodes += 1
                deepest = plen
        if deepest < 0:
            nodes = 1 if self._values else 0  # the root, which does not match
        elif deepest < self.width and self._path_continues(self._masked(bits, deepest + 1), deepest + 1):
            nodes += 1  # the child on the key's side: the root of a subtree the key is not in
        return Walk(nodes, value, len(self._values))

    def _branches(self, prefix: int, plen: int) -> bool:
        half = 1 << (self.width - plen - 1)
        zero = (prefix, plen + 1) in self._values or self._below(prefix, plen + 1)
        one = (prefix + half, plen + 1) in self._values or self._below(prefix + half, plen + 1)
        return zero and one

    def _path_continues(self, prefix: int, plen: int) -> bool:
        return (prefix, plen) in self._values or self._below(prefix, plen)


def read_trie(table: Any) -> Trie:
    """Every entry of a BCC LPM table (key: u32 prefixlen, then the data bytes)."""
    width = len(bytes(table.Key())) - 4
    entries = [(bytes(k)[4:], int(k.prefixlen), int(v.value)) for k, v in table.items()]
    return Trie(entries, width)


def key_bytes(table: Any, **fields: Any) -> bytes:
    """The data bytes of a full-length key of `table` with `fields` set (prefixlen excluded)."""
    key = table.Key()
    key.prefixlen = 8 * (len(bytes(key)) - 4)
    for name, value in fields.items():
        current = getattr(key, name)
        if isinstance(value, bytes):
            value = type(current)(*value)
        setattr(key, name, value)
    return bytes(key)[4:]
