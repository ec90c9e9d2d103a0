"""What one classifier table holds in its maps (pure): the layouts of its elements, read from the
ABI header, and the live state in its two forms, arrays (Live, after a full compile) and dicts
(Mirror, once rules are edited in place), each made from the other when first asked for."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from dataplane import abi
from dataplane.match import prefilter as pf

RULE = abi.struct_dtype("tg_rule")
KEY = abi.struct_dtype("tg_bucket_key")
KEY4 = abi.struct_dtype("tg_bucket_key4")  # the *_buckets4 maps' key: an IPv4 packet's probe
BUCKET = abi.struct_dtype("tg_bucket")
SUBTABLES = abi.struct_dtype("tg_subtables")
SUBTABLE = abi.struct_dtype("tg_subtable")

Array = npt.NDArray[Any]


def empty_records() -> Array:
    return np.zeros(0, dtype=RULE)


def empty_keys() -> Array:
    return np.zeros(0, dtype=KEY)


FAMILY_V4, FAMILY_V6 = abi.define("TG_FAMILY_V4"), abi.define("TG_FAMILY_V6")
_ADDR4 = KEY4["src"].itemsize  # address bytes an IPv4 key keeps
_TAIL = [name for name in KEY4.names or () if name not in ("src", "dst")]  # fields both keys end with
_AT = {name: spec[1] for name, spec in (KEY.fields or {}).items()}  # tg_bucket_key's offsets
_HIGH = [slice(_AT[a] + _ADDR4, _AT[a] + KEY[a].itemsize) for a in ("src", "dst")]  # bytes 4-15
_FAMILY_AT = _AT["family"]


def _address_bytes(keys: Array, name: str) -> npt.NDArray[np.uint8]:
    return np.ascontiguousarray(keys[name]).view(np.uint8).reshape(len(keys), KEY[name].itemsize)


def families(keys: Array) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Which of these buckets (tg_bucket_key) go into the IPv4 map (*_buckets4) and which into
    the other (*_buckets): each into the map of every family whose packets can probe it. A key
    of the family, or of none (a subtable whose masks leave the family out: in both maps); for
    IPv4 none with an address byte past the fourth set (no IPv4 packet has one)."""
    src, dst = _address_bytes(keys, "src"), _address_bytes(keys, "dst")
    short = ~(src[:, _ADDR4:].any(axis=1) | dst[:, _ADDR4:].any(axis=1))
    return (keys["family"] != FAMILY_V6) & short, keys["family"] != FAMILY_V4


def maps_of(key: bytes) -> tuple[int, int]:
    """families() of one key's bytes, as (in the IPv4 map, in the other): 1 or 0 each."""
    family = key[_FAMILY_AT]
    short = not any(key[_HIGH[0]]) and not any(key[_HIGH[1]])
    return int(family != FAMILY_V6 and short), int(family != FAMILY_V4)


def count_buckets(keys: Array) -> tuple[int, int]:
    """Entries these buckets take in (the IPv4 map, the other)."""
    v4, v6 = families(keys)
    return int(v4.sum()), int(v6.sum())


def keys4(keys: Array) -> Array:
    """Keys (tg_bucket_key) of buckets of the IPv4 map as it holds them (tg_bucket_key4)."""
    out = np.zeros(len(keys), dtype=KEY4)
    for name in ("src", "dst"):
        out[name] = np.ascontiguousarray(_address_bytes(keys, name)[:, :_ADDR4]).view(KEY4[name]).ravel()
    for name in _TAIL:
        out[name] = keys[name]
    return out


def keys_of4(keys: Array) -> Array:
    """keys4 inverted: the tg_bucket_key of tg_bucket_key4s (the other address bytes zero)."""
    out = np.zeros(len(keys), dtype=KEY)
    for name in ("src", "dst"):
        wide = np.zeros((len(keys), KEY[name].itemsize), dtype=np.uint8)
        wide[:, :_ADDR4] = np.ascontiguousarray(keys[name]).view(np.uint8).reshape(len(keys), _ADDR4)
        out[name] = wide.view(KEY[name].base).reshape(out[name].shape)
    for name in _TAIL:
        out[name] = keys[name]
    return out


class Live:
    """What the maps of one table hold: the bank the program searches, every live rule's record
    and slot, that bank's buckets (key and content) and subtables. `stale` are keys a failed
    change may have left in the other bank (removed before that bank is written again).

    Held as arrays after a full compile, or as dicts (Mirror) once a few
    rules have been edited in place; each form is made from the other when first asked for.
    Compared by identity: a compile is valid against the very Live it was made from.

    `token` names the content (stale aside): two Lives with the same token hold the same rules
    in the same slots, buckets and bank (a table that starts empty in bank 0, and one compile
    written to each of several tables, give them the same token); anything else, such as what
    adopt() read back, gets a token of its own. A compile against one is a compile against the
    other (control.apply.reconcile compiles a policy once for every interface)."""

    def __init__(self, bank: int = 0, records: Array | None = None,
                 slots: npt.NDArray[np.uint32] | None = None, keys: Array | None = None,
                 buckets: Array | None = None, tables: Array | None = None, stale: Array | None = None,
                 mirror: Mirror | None = None, token: object = None) -> None:
        self.bank = bank
        nothing = records is None and slots is None and keys is None and buckets is None and mirror is None
        self.token = token if token is not None else ("empty", bank) if nothing else object()
        self.stale = empty_keys() if stale is None else stale
        self._lock = threading.Lock()  # the mirror may be built in the background (table.py)
        self._mirror = mirror
        self._arrays: tuple[Array, npt.NDArray[np.uint32], Array, Array, Array] | None = None
        self._counts: tuple[int, int] | None = None  # count_buckets of the arrays' keys
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

    def bucket_counts(self) -> tuple[int, int]:
        """Entries the live bank's buckets and the stale ones take in (the IPv4 map, the other)."""
        with self._lock:
            mirror = self._mirror
        if mirror is not None:
            held = mirror.bucket_counts
        else:
            if self._counts is None:
                self._counts = count_buckets(self._get()[2])
            held = self._counts
        stale = count_buckets(self.stale)
        return held[0] + stale[0], held[1] + stale[1]

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


def tuple_of(table: Any) -> tuple[int, ...]:
    """A subtable's tuple (tuples.DIMS) from its masks (a 1-element SUBTABLE array)."""
    return _tuple_of(table.tobytes())


@functools.lru_cache(maxsize=4096)
def _tuple_of(record: bytes) -> tuple[int, ...]:
    t = np.frombuffer(record, dtype=SUBTABLE)[0]
    src, dst = (sum(int(w).bit_count() for w in t[name].tolist()) for name in ("src_mask", "dst_mask"))
    return (int(t["family_mask"] != 0), src, dst, int(t["proto_mask"] != 0), int(t["sport_mask"]).bit_count(),
            int(t["dport_mask"]).bit_count())


K = TypeVar("K")
V = TypeVar("V")


class Overlay(Generic[K, V]):
    """A dict over a read-only base, looked up on demand (`find`: the base's value or None),
    and the entries written since (`changed`; None: a base entry deleted). Building one costs
    what indexing the base costs, not a Python object per entry. Values are never None."""

    def __init__(self, find: Callable[[K], V | None], size: int) -> None:
        self._find = find
        self.changed: dict[K, V | None] = {}
        self._size = size

    def get(self, key: K, default: Any = None) -> Any:
        found = self.changed[key] if key in self.changed else self._find(key)
        return default if found is None else found

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def __getitem__(self, key: K) -> V:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found  # type: ignore[no-any-return]

    def __setitem__(self, key: K, value: V) -> None:
        if key not in self:
            self._size += 1
        self.changed[key] = value

    def pop(self, key: K, default: Any = None) -> Any:
        found = self.get(key)
        if found is None:
            return default
        self._size -= 1
        if self._find(key) is not None:
            self.changed[key] = None
        else:
            del self.changed[key]
        return found

    def __delitem__(self, key: K) -> None:
        if self.pop(key) is None:
            raise KeyError(key)

    def __len__(self) -> int:
        return self._size

    def written(self) -> list[tuple[K, V]]:
        """The entries written since (not the deletions)."""
        return [(k, v) for k, v in self.changed.items() if v is not None]


def _row_of(values: npt.NDArray[Any]) -> Callable[[int], int | None]:
    """value -> its row, for distinct non-negative integers (slots): an array indexed by value."""
    rows = np.full(int(values.max()) + 1 if len(values) else 0, -1, dtype=np.int64)
    rows[values.astype(np.intp)] = np.arange(len(values))

    def find(value: int) -> int | None:
        if 0 <= value < len(rows):
            row = int(rows[value])
            return row if row >= 0 else None
        return None
    return find


def _sorted_find(values: npt.NDArray[Any], answers: npt.NDArray[Any]) -> Callable[[int], int | None]:
    """value -> answers[its row], for distinct integers of any size (rule ids): a binary search."""
    order = np.argsort(values, kind="stable")
    ordered, answer = values[order].astype(np.int64), answers[order]

    def find(value: int) -> int | None:
        i = int(np.searchsorted(ordered, value)) if -(2**63) <= value < 2**63 else len(ordered)
        return int(answer[i]) if i < len(ordered) and int(ordered[i]) == value else None
    return find


@dataclass
class Mirror:
    """The live bank of one table as dicts (Overlays over the arrays of the last full compile),
    so that an edit touches what it changes only."""

    bank: int
    tables: list[Any]  # SUBTABLE records, by best
    buckets: Overlay[bytes, list[int]]  # key bytes -> slots, first-match order
    key_of: Overlay[int, bytes]  # slot -> its bucket's key
    records: Overlay[int, bytes]  # slot -> its record (every live slot)
    order: Overlay[int, int]  # slot -> its rule's order
    slot_of_id: Overlay[int, int]  # rule id -> slot
    per_table: dict[int, int] = field(default_factory=dict)  # subtable id -> buckets it has
    bucket_counts: tuple[int, int] = (0, 0)  # entries the buckets take in (the IPv4 map, the other)
    free_cursor: int = 0  # where the search for a free slot goes on (planner._free_slots)
    base: tuple[Array, npt.NDArray[np.uint32], Array, Array] | None = None  # (records, slots, keys, buckets)
    runs: pf.Runs = field(default_factory=pf.Runs)  # the rules' prefilter blocks, per subtable

    @staticmethod
    def of(live: Live) -> Mirror:
        """Indexes over the arrays (a few milliseconds for 100,000 rules); values are read from
        them when asked for."""
        recs, slots, keys, buckets = live.records, live.slots, live.keys, live.buckets
        counts = buckets["count"].astype(np.intp)
        members = buckets["slots"][np.arange(buckets["slots"].shape[1])[None, :] < counts[:, None]]
        bucket_rows = np.repeat(np.arange(len(keys)), counts)  # the bucket of each of `members`
        key_rows = dict(zip(keys.view(f"V{KEY.itemsize}").ravel().tolist(), range(len(keys)), strict=True))
        rule_row, member_row = _row_of(slots), _row_of(members)
        slot_of_id = _sorted_find(recs["rule_id"], slots)

        def bucket(key: bytes) -> list[int] | None:
            row = key_rows.get(key)
            return None if row is None else buckets["slots"][row, : counts[row]].tolist()  # type: ignore[no-any-return]

        def record(slot: int) -> bytes | None:
            row = rule_row(slot)
            return None if row is None else recs[row : row + 1].tobytes()

        def order(slot: int) -> int | None:
            row = rule_row(slot)
            return None if row is None else int(recs["order"][row])

        def key_of(slot: int) -> bytes | None:
            row = member_row(slot)
            return None if row is None else keys[bucket_rows[row] : bucket_rows[row] + 1].tobytes()

        tables, per_table = np.unique(keys["table"], return_counts=True)
        return Mirror(
            bank=live.bank,
            tables=[live.tables[i : i + 1].copy() for i in range(len(live.tables))],
            buckets=Overlay(bucket, len(keys)),
            key_of=Overlay(key_of, len(members)),
            records=Overlay(record, len(slots)),
            order=Overlay(order, len(slots)),
            slot_of_id=Overlay(slot_of_id, len(slots)),
            per_table=dict(zip(tables.tolist(), per_table.tolist(), strict=True)),
            bucket_counts=count_buckets(keys),
            free_cursor=int(slots.max()) + 1 if len(slots) else 0,  # every slot past the last held is free
            base=(recs, slots, keys, buckets),
            runs=pf.Runs.of(recs, live.slots, pf.live_ids(live.slots, live.keys, live.buckets)),
        )

    def arrays(self) -> tuple[Any, npt.NDArray[np.uint32], Any, Any, Any]:
        """(records, slots, keys, buckets, tables) as arrays (Live's other form): the base's rows
        no edit touched, then what edits wrote."""
        assert self.base is not None
        recs, slots, keys, buckets = self.base
        records = self.records.written()
        changed = self.records.changed
        kept = ~np.isin(slots, np.fromiter(changed, dtype=np.int64, count=len(changed)))
        new_slots = np.array([s for s, _ in records], dtype=np.uint32)
        new_recs = np.frombuffer(b"".join(r for _, r in records), dtype=RULE)
        touched = np.zeros(len(keys), dtype=bool)
        key_view = keys.view(f"V{KEY.itemsize}").ravel()
        if self.buckets.changed:
            touched = np.isin(key_view, np.array(list(self.buckets.changed), dtype=key_view.dtype))
        written = self.buckets.written()
        new_keys = np.frombuffer(b"".join(k for k, _ in written), dtype=KEY)
        contents = np.zeros(len(written), dtype=BUCKET)
        for i, (_, members) in enumerate(written):
            contents["count"][i] = len(members)
            contents["slots"][i, : len(members)] = members
        tables = np.concatenate(self.tables) if self.tables else np.zeros(0, dtype=SUBTABLE)
        return (np.concatenate([recs[kept], new_recs]), np.concatenate([slots[kept], new_slots]),
                np.concatenate([keys[~touched], new_keys]), np.concatenate([buckets[~touched], contents]),
                tables)
