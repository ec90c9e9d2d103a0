"""What one classifier table holds in its maps (pure): the layouts of its elements, read from the
ABI header, and the live state in its two forms, arrays (Live, after a full compile) and dicts
(Mirror, once rules are edited in place), each made from the other when first asked for."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from dataplane import abi
from dataplane.match import prefilter as pf

RULE = abi.struct_dtype("tg_rule")
KEY = abi.struct_dtype("tg_bucket_key")
BUCKET = abi.struct_dtype("tg_bucket")
SUBTABLES = abi.struct_dtype("tg_subtables")
SUBTABLE = abi.struct_dtype("tg_subtable")

Array = npt.NDArray[Any]


def empty_records() -> Array:
    return np.zeros(0, dtype=RULE)


def empty_keys() -> Array:
    return np.zeros(0, dtype=KEY)


class Live:
    """What the maps of one table hold: the bank the program searches, every live rule's record
    and slot, that bank's buckets (key and content) and subtables. `stale` are keys a failed
    change may have left in the other bank (removed before that bank is written again).

    Held as arrays after a full compile, or as dicts (Mirror) once a few
    rules have been edited in place; each form is made from the other when first asked for.
    Compared by identity: a compile is valid against the very Live it was made from."""

    def __init__(self, bank: int = 0, records: Array | None = None,
                 slots: npt.NDArray[np.uint32] | None = None, keys: Array | None = None,
                 buckets: Array | None = None, tables: Array | None = None, stale: Array | None = None,
                 mirror: Mirror | None = None) -> None:
        self.bank = bank
        self.stale = empty_keys() if stale is None else stale
        self._lock = threading.Lock()  # the mirror may be built in the background (table.py)
        self._mirror = mirror
        self._arrays: tuple[Array, npt.NDArray[np.uint32], Array, Array, Array] | None = None
        if mirror is None:
            self._arrays = (empty_records() if records is None else records,
                            np.zeros(0, dtype=np.uint32) if slots is None else slots,
                            empty_keys() if keys is None else keys,
                            np.zeros(0, dtype=BUCKET) if buckets is None else buckets,
                            np.zeros(0, dtype=SUBTABLE) if tables is None else tables)

    def _get(self) -> tuple[Array, npt.NDArray[np.uint32], Array, Array, Array]:
        if self._arrays is None:
            assert self._mirror is not None
            self._arrays = self._mirror.arrays()
        return self._arrays

    records = property(lambda self: self._get()[0], doc="(n,) RULE: every live rule's record")
    slots = property(lambda self: self._get()[1], doc="(n,) slots of those records")
    keys = property(lambda self: self._get()[2], doc="(m,) KEY: the live bank's buckets")
    buckets = property(lambda self: self._get()[3], doc="(m,) BUCKET: their contents")
    tables = property(lambda self: self._get()[4], doc="the live bank's subtables, by best")

    def mirror(self) -> Mirror:
        """The state as dicts (Mirror), made once."""
        with self._lock:
            if self._mirror is None:
                self._mirror = Mirror.of(self)
            return self._mirror

    def __len__(self) -> int:
        if self._arrays is None:
            assert self._mirror is not None
            return len(self._mirror.records)
        return len(self._arrays[1])


def _bits(words: Any) -> int:
    return int(np.unpackbits(np.asarray(words, dtype=np.uint64).view(np.uint8)).sum())


def tuple_of(table: Any) -> tuple[int, ...]:
    """A subtable's tuple (tuples.DIMS) from its masks (a 1-element SUBTABLE array)."""
    t = table[0]
    return (int(t["family_mask"] != 0), _bits(t["src_mask"]), _bits(t["dst_mask"]),
            int(t["proto_mask"] != 0), bin(int(t["sport_mask"])).count("1"),
            bin(int(t["dport_mask"])).count("1"))


@dataclass
class Mirror:
    """The live bank of one table as dicts, so that an edit touches what it changes only."""

    bank: int
    tables: list[Any]  # SUBTABLE records, by best
    buckets: dict[bytes, list[int]]  # key bytes -> slots, first-match order
    key_of: dict[int, bytes]  # slot -> its bucket's key
    records: dict[int, bytes]  # slot -> its record (every live slot)
    order: dict[int, int]  # slot -> its rule's order
    slot_of_id: dict[int, int]  # rule id -> slot
    per_table: dict[int, int] = field(default_factory=dict)  # subtable id -> buckets it has
    free_cursor: int = 0  # where the search for a free slot goes on (planner._free_slots)
    runs: pf.Runs = field(default_factory=pf.Runs)  # the rules' prefilter blocks, per subtable

    @staticmethod
    def of(live: Live) -> Mirror:
        recs = live.records
        slots = live.slots.tolist()
        keys = live.keys.view(f"V{KEY.itemsize}").tolist()
        counts = live.buckets["count"].astype(np.intp)
        members = [row[:c] for row, c in zip(live.buckets["slots"].tolist(), counts.tolist(), strict=True)]
        per_table: dict[int, int] = {}
        for t in live.keys["table"].tolist():
            per_table[t] = per_table.get(t, 0) + 1
        return Mirror(
            bank=live.bank,
            tables=[live.tables[i : i + 1].copy() for i in range(len(live.tables))],
            buckets=dict(zip(keys, members, strict=True)),
            key_of={s: k for k, m in zip(keys, members, strict=True) for s in m},
            records=dict(zip(slots, recs.view(f"V{RULE.itemsize}").tolist(), strict=True)),
            order=dict(zip(slots, recs["order"].tolist(), strict=True)),
            slot_of_id=dict(zip(recs["rule_id"].tolist(), slots, strict=True)),
            per_table=per_table,
            runs=pf.Runs.of(recs, live.slots, pf.live_ids(live.slots, live.keys, live.buckets)),
        )

    def arrays(self) -> tuple[Any, npt.NDArray[np.uint32], Any, Any, Any]:
        """(records, slots, keys, buckets, tables) as arrays (Live's other form)."""
        slots = np.array(list(self.records), dtype=np.uint32)
        recs = np.frombuffer(b"".join(self.records.values()), dtype=RULE).copy()
        keys = np.frombuffer(b"".join(self.buckets), dtype=KEY).copy()
        buckets = np.zeros(len(self.buckets), dtype=BUCKET)
        buckets["count"] = [len(m) for m in self.buckets.values()]
        for i, members in enumerate(self.buckets.values()):
            buckets["slots"][i, : len(members)] = members
        tables = np.concatenate(self.tables) if self.tables else np.zeros(0, dtype=SUBTABLE)
        return recs, slots, keys, buckets, tables
