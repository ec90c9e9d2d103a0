"""A model of the maps the classifier searches, and of the search itself (xdp/include/match.h),
in Python: the pure tests run compiled policies and every intermediate state of their writes
through it, the kernel tests run the same policies through the real program. Buckets are written
as dataplane.match.table writes them, into the map of each family that can probe them
(live.families); the search builds an IPv4 packet's 16-byte key on its own, as match.h does."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dataplane.match import compiler as cp
from dataplane.match import live as lv
from dataplane.match import prefilter as pf
from dataplane.match import tuples as tp

from ..reference_matcher import Packet

U64 = 0xFFFFFFFFFFFFFFFF


@dataclass
class Maps:
    """match_bank, the subtables and buckets maps, the rules array and the prefilter (per bank) of
    one table; `epoch` counts the writer's waits for the searches under way (quiesce): a search
    never spans one."""

    bank: int = 0
    subtables: dict[int, bytes] = field(default_factory=dict)
    buckets: dict[bytes, bytes] = field(default_factory=dict)  # *_buckets: tg_bucket_key bytes
    rules: dict[int, bytes] = field(default_factory=dict)
    prefilter: dict[int, np.ndarray] = field(default_factory=dict)
    epoch: int = 0
    buckets4: dict[bytes, bytes] = field(default_factory=dict)  # *_buckets4: tg_bucket_key4 bytes

    def put(self, key: bytes, value: bytes) -> None:
        """A bucket (its tg_bucket_key) into the maps of the families that can probe it."""
        v4, v6 = lv.maps_of(key)
        if v4:
            self.buckets4[lv.keys4(np.frombuffer(key, dtype=cp.KEY)).tobytes()] = value
        if v6:
            self.buckets[key] = value

    def drop(self, key: bytes) -> None:
        v4, v6 = lv.maps_of(key)
        if v4:
            del self.buckets4[lv.keys4(np.frombuffer(key, dtype=cp.KEY)).tobytes()]
        if v6:
            del self.buckets[key]

    def write_full(self, c: cp.Compiled) -> list[Maps]:
        """Writes a full compile as dataplane.match.table does; returns the state after each write."""
        assert c.bank is not None
        states = []
        for slot, rec in zip(c.slots[c.fresh].tolist(), c.records[c.fresh], strict=True):
            self.rules[slot] = rec.tobytes()
            states.append(self.copy())
        for k, v in zip(c.bank.keys, c.bank.buckets, strict=True):
            self.put(k.tobytes(), v.tobytes())
            states.append(self.copy())
        self.prefilter[c.bank.number] = c.bank.prefilter.copy()
        states.append(self.copy())
        self.subtables[c.bank.number] = c.bank.subtables.tobytes()  # to a place no search reads,
        self.bank = c.bank.number  # which match_bank then names: one write
        states.append(self.copy())
        self.epoch += 1
        for k in c.base.keys:
            self.drop(k.tobytes())
        self.subtables.pop(c.base.bank, None)
        for slot in c.freed.tolist():
            self.rules[slot] = bytes(cp.RULE.itemsize)
        states.append(self.copy())
        return states

    def write_edit(self, c: cp.Compiled) -> list[Maps]:
        e = c.edit
        bank = c.base.bank
        states = []

        def step() -> None:
            states.append(self.copy())

        for slot, rec in e.records:
            self.rules[slot] = rec
            step()
        entries = self.prefilter.setdefault(bank, np.zeros(pf.BLOCKS, dtype=pf.ENTRY))
        before = entries.copy()
        for which, lo, hi, tid in e.sets:
            entries[lo : hi + 1] |= np.uint64(pf.bit(tid, which))
        if (entries != before).any():
            step()
            self.epoch += 1  # dataplane.match.table waits here for the searches under way
        if e.tables_before is not None:
            self.subtables[bank] = e.tables_before
            step()
        for key, content in e.gains:
            self.put(key, _bucket(content))
            step()
        for key, content in e.losses:
            if content:
                self.put(key, _bucket(content))
            else:
                self.drop(key)
            step()
        if e.tables_after is not None:
            self.subtables[bank] = e.tables_after
            step()
        for which, blocks, tid in e.clears:
            entries[blocks] &= ~np.uint64(pf.bit(tid, which))
            step()
        self.epoch += 1
        for slot in e.freed:  # after the table's quiesce: no search reads them any more
            self.rules[slot] = bytes(cp.RULE.itemsize)
        step()
        return states

    def write(self, c: cp.Compiled) -> list[Maps]:
        if c.unchanged:
            return [self.copy()]
        return self.write_edit(c) if c.edit is not None else self.write_full(c)

    def copy(self) -> Maps:
        return Maps(self.bank, dict(self.subtables), dict(self.buckets), dict(self.rules),
                    {b: e.copy() for b, e in self.prefilter.items()}, self.epoch, dict(self.buckets4))

    def maybe(self, p: Packet, bank: int) -> int:
        """The prefilter's bits for the packet in `bank` (match.h tg_prefilter)."""
        entries = self.prefilter.get(bank)
        if entries is None:
            return 0
        src = int(entries[pf.probe_index(p.src, p.family)])
        dst = int(entries[pf.probe_index(p.dst, p.family)]) >> pf.DST_SHIFT
        return src & dst & 0xFFFFFFFF

    def lookup(self, p: Packet, bits_from: Maps | None = None) -> int | None:
        """The slot match.h finds for the packet, or None; `bits_from`: an earlier state whose
        prefilter the search read (it reads the bits first, everything else later)."""
        maybe = (bits_from or self).maybe(p, self.bank)
        raw = self.subtables.get(self.bank)
        if raw is None or not maybe:
            return None
        subtables = np.frombuffer(raw, dtype=cp.SUBTABLES)[0]
        src = np.frombuffer(p.src, dtype=np.uint64)
        dst = np.frombuffer(p.dst, dtype=np.uint64)
        sport, dport = (p.sport, p.dport) if p.ports else (0, 0)
        best, found = U64, None
        for st in subtables["tables"][: int(subtables["count"])]:
            if int(st["best"]) > best:
                break
            if int(st["id"]) < pf.IDS and not maybe >> int(st["id"]) & 1:
                continue
            bucket = self._bucket_for(p, st, src, dst, sport, dport)
            if bucket is None:
                continue
            b = np.frombuffer(bucket, dtype=cp.BUCKET)[0]
            for slot in b["slots"][: int(b["count"])].tolist():
                if slot not in self.rules:
                    break
                r = np.frombuffer(self.rules[slot], dtype=cp.RULE)[0]
                if int(r["order"]) > best:
                    break
                if _matches(r, p, src, dst, sport, dport):
                    best, found = int(r["order"]), slot
                    break
        return found


    def _bucket_for(self, p: Packet, st: np.void, src: np.ndarray, dst: np.ndarray, sport: int,
                    dport: int) -> bytes | None:
        """The bucket the packet's key names in subtable `st`: in buckets4 for an IPv4 packet."""
        key = np.zeros(1, dtype=lv.KEY4 if p.family == 4 else cp.KEY)
        if p.family == 4:  # bytes 0-3 of each address under the mask
            for name, addr in (("src", p.src), ("dst", p.dst)):
                mask = np.ascontiguousarray(st[f"{name}_mask"]).view(np.uint8)[:4]
                masked = bytes(np.frombuffer(addr[:4], np.uint8) & mask)
                key[name] = np.frombuffer(masked, dtype=lv.KEY4[name])
        else:
            key["src"], key["dst"] = src & st["src_mask"], dst & st["dst_mask"]
        key["sport"], key["dport"] = sport & int(st["sport_mask"]), dport & int(st["dport_mask"])
        key["family"], key["proto"] = p.family & int(st["family_mask"]), p.proto & int(st["proto_mask"])
        key["bank"], key["table"] = self.bank, st["id"]
        return (self.buckets4 if p.family == 4 else self.buckets).get(key.tobytes())


def _bucket(content: list[int]) -> bytes:
    b = np.zeros(1, dtype=cp.BUCKET)
    b["count"] = len(content)
    b["slots"][0, : len(content)] = content
    return b.tobytes()


def _matches(r: np.void, p: Packet, src: np.ndarray, dst: np.ndarray, sport: int, dport: int) -> bool:
    flags = int(r["flags"])
    if not flags & cp.F_LIVE:
        return False
    if int(r["family"]) and int(r["family"]) != p.family:
        return False
    if ((src & r["src_mask"]) != r["src"]).any() or ((dst & r["dst_mask"]) != r["dst"]).any():
        return False
    if flags & cp.F_PROTO and int(r["proto"]) != p.proto:
        return False
    # the program's probe: the parser reads ICMP type/code and TCP flags only from a first fragment
    # (or a whole datagram) of those protocols; 0 otherwise
    icmp = p.proto in (1, 58) and not p.fragment
    icmp_type, icmp_code = (p.icmp_type, p.icmp_code) if icmp else (0, 0)
    tcp_flags = p.tcp_flags if p.proto == 6 and not p.fragment else 0
    mask = int(r["l4_mask"])
    if mask and p.fragment:
        return False
    if ((icmp_type << 8 | icmp_code) | tcp_flags) & mask != int(r["l4_want"]):
        return False
    if not flags & cp.F_PORTS:
        return True
    return p.ports and int(r["sport_lo"]) <= sport <= int(r["sport_hi"]) and \
        int(r["dport_lo"]) <= dport <= int(r["dport_hi"])


def maps_of(live: cp.Live) -> Maps:
    """The maps holding `live`."""
    m = Maps(live.bank)
    for slot, rec in zip(live.slots.tolist(), live.records, strict=True):
        m.rules[slot] = rec.tobytes()
    for k, v in zip(live.keys, live.buckets, strict=True):
        m.put(k.tobytes(), v.tobytes())
    m.prefilter[live.bank] = pf.entries(pf.record_blocks(live.records),
                                        pf.live_ids(live.slots, live.keys, live.buckets))
    if len(live.tables):
        s = np.zeros(1, dtype=cp.SUBTABLES)
        s["count"] = len(live.tables)
        s["tables"][0, : len(live.tables)] = live.tables
        m.subtables[live.bank] = s.tobytes()
    return m


assert tp.BUCKET_MAX > 0
