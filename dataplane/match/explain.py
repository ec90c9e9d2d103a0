"""The search of xdp/include/match.h, in Python, over what a table holds (compiler.Live): which rule
a packet gets, and the work the program does to find it (subtables probed past the prefilter,
candidates checked).

    found = search(table.current, Probe.of("10.1.2.3", "10.9.9.9", 6, 1234, 443))
    found.rule_id, found.subtables, found.candidates

For operators and the benchmark's explanation of its numbers; the programs are the authority
(tests/dataplane/match compares both with a naive reference).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import numpy as np

from dataplane import protocols
from dataplane.match import compiler as cp
from dataplane.match import prefilter as pf

PORT_PROTOCOLS = (6, 17, 132)
ICMP_PROTOCOLS = protocols.ICMP_NUMBERS


@dataclass(frozen=True)
class Probe:
    """A packet's fields as the classifier compares them (struct tg_probe)."""

    family: int
    src: bytes  # 16 bytes, IPv4 in the first four
    dst: bytes
    proto: int
    sport: int = 0
    dport: int = 0
    ports: bool = True  # False: a later fragment (or a protocol without ports)
    icmp_type: int = 0  # ICMP/ICMPv6; 0 otherwise
    icmp_code: int = 0
    tcp_flags: int = 0  # TCP; 0 otherwise
    l4: bool = True  # False: a later fragment (no transport header)

    @staticmethod
    def of(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0, fragment: bool = False,
           icmp_type: int = 0, icmp_code: int = 0, tcp_flags: int = 0) -> Probe:
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        ports = proto in PORT_PROTOCOLS and not fragment
        icmp = proto in ICMP_PROTOCOLS and not fragment
        return Probe(s.version, s.packed.ljust(16, b"\0"), d.packed.ljust(16, b"\0"), proto,
                     sport if ports else 0, dport if ports else 0, ports, icmp_type if icmp else 0,
                     icmp_code if icmp else 0, tcp_flags if proto == 6 and not fragment else 0, not fragment)


@dataclass(frozen=True)
class Found:
    slot: int | None
    rule_id: int | None
    subtables: int  # bucket lookups (hash probes)
    candidates: int  # rules checked against the packet


def _misses(r: Any, p: Probe, src: np.ndarray, dst: np.ndarray) -> bool:
    flags = int(r["flags"])
    if not flags & cp.F_LIVE or (int(r["family"]) and int(r["family"]) != p.family):
        return True
    if ((src & r["src_mask"]) != r["src"]).any() or ((dst & r["dst_mask"]) != r["dst"]).any():
        return True
    if flags & cp.F_PROTO and int(r["proto"]) != p.proto:
        return True
    word, mask = (p.icmp_type << 8 | p.icmp_code) | p.tcp_flags, int(r["l4_mask"])  # tg_probe.l4_word
    if mask and not p.l4 or word & mask != int(r["l4_want"]):
        return True
    if not flags & cp.F_PORTS:
        return False
    return not (p.ports and int(r["sport_lo"]) <= p.sport <= int(r["sport_hi"])
                and int(r["dport_lo"]) <= p.dport <= int(r["dport_hi"]))


class Searcher:
    """Searches one table state many times (its buckets and records indexed once)."""

    def __init__(self, live: cp.Live) -> None:
        self.live = live
        self.buckets = {k.tobytes(): b for k, b in zip(live.keys, live.buckets, strict=True)}
        self.records = dict(zip(live.slots.tolist(), live.records, strict=True))
        self.prefilter = pf.entries(pf.record_blocks(live.records),
                                    pf.live_ids(live.slots, live.keys, live.buckets))

    def maybe(self, p: Probe) -> int:
        """The prefilter's answer for `p`: a bit per subtable id that may hold its rule."""
        src = int(self.prefilter[pf.probe_index(p.src, p.family)])
        dst = int(self.prefilter[pf.probe_index(p.dst, p.family)]) >> pf.DST_SHIFT
        return src & dst & ((1 << pf.DST_SHIFT) - 1)

    def __call__(self, p: Probe) -> Found:
        """The rule the program finds for `p`, and its work."""
        src, dst = np.frombuffer(p.src, dtype=np.uint64), np.frombuffer(p.dst, dtype=np.uint64)
        best, found, probed, checked = cp.ORDER_NONE, None, 0, 0
        maybe = self.maybe(p)
        for st in self.live.tables if maybe else ():
            if int(st["best"]) > best:
                break
            if int(st["id"]) < pf.IDS and not maybe >> int(st["id"]) & 1:
                continue
            key = np.zeros(1, dtype=cp.KEY)
            key["src"], key["dst"] = src & st["src_mask"], dst & st["dst_mask"]
            key["sport"], key["dport"] = p.sport & int(st["sport_mask"]), p.dport & int(st["dport_mask"])
            key["family"], key["proto"] = p.family & int(st["family_mask"]), p.proto & int(st["proto_mask"])
            key["bank"], key["table"] = self.live.bank, st["id"]
            probed += 1
            bucket = self.buckets.get(key.tobytes())
            if bucket is None:
                continue
            for slot in bucket["slots"][: int(bucket["count"])].tolist():
                r = self.records.get(slot)
                if r is None or int(r["order"]) > best:
                    break
                checked += 1
                if not _misses(r, p, src, dst):
                    best, found = int(r["order"]), slot
                    break
        rule_id = None if found is None else int(self.records[found]["rule_id"])
        return Found(found, rule_id, probed, checked)


def search(live: cp.Live, p: Probe) -> Found:
    """The rule the program finds for `p` in `live`, and its work."""
    return Searcher(live)(p)
