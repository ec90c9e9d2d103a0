"""Bulk map access (dataplane.kernel.bulk) against real maps: batched and element by element,
writes land in order, deletes are idempotent, refusals name the map and the element, and a
batched read returns what was written."""

from __future__ import annotations

import ctypes
import errno

import numpy as np
import pytest

from dataplane.kernel.bulk import MapWriter
from dataplane.match import compiler as cp


def _writer(dp, name: str) -> MapWriter:  # noqa: ANN001
    t = dp.program.table(name)
    return MapWriter(t.map_fd, name, ctypes.sizeof(t.Key), ctypes.sizeof(t.Leaf))


def _keys(n: int) -> np.ndarray:
    keys = np.zeros(n, dtype=cp.KEY)
    keys["sport"] = np.arange(n)
    keys["family"], keys["table"] = 4, 7
    return keys


def _buckets(first: int, n: int) -> np.ndarray:
    values = np.zeros(n, dtype=cp.BUCKET)
    values["count"] = 1
    values["slots"][:, 0] = np.arange(first, first + n)
    return values


def _read(writer: MapWriter) -> dict[bytes, int]:
    keys, values = writer.read_all(chunk=7)  # several chunks
    k = np.frombuffer(keys, dtype=cp.KEY)
    v = np.frombuffer(values, dtype=cp.BUCKET)
    return {key.tobytes(): int(value["slots"][0]) for key, value in zip(k, v, strict=True)}


@pytest.mark.root
@pytest.mark.parametrize("batch", [True, False], ids=["batched", "one by one"])
def test_updates_and_deletes_reach_the_map_in_order(dp, batch):
    writer = _writer(dp, "cls_buckets")
    writer.batch = batch
    keys = _keys(50)
    writer.update(keys.tobytes(), _buckets(100, 50).tobytes())
    writer.update(np.concatenate([keys[:1], keys[:1]]).tobytes(), _buckets(7, 2).tobytes())  # the later wins
    want = {k.tobytes(): 100 + i for i, k in enumerate(keys)}
    assert _read(writer) == want | {keys[0].tobytes(): 8}
    writer.delete(np.concatenate([keys[:10], keys[3:4], keys[20:21]]).tobytes())  # keys[3] twice: skipped
    writer.delete(keys[:10].tobytes())  # all gone: deleting is idempotent
    assert set(_read(writer)) == {k.tobytes() for i, k in enumerate(keys) if i >= 10 and i != 20}
    writer.delete(keys.tobytes())
    assert _read(writer) == {}


@pytest.mark.root
@pytest.mark.parametrize("batch", [True, False], ids=["batched", "one by one"])
def test_a_refused_element_names_the_map_and_the_element(dp, batch):
    writer = _writer(dp, "cls_rules")
    writer.batch = batch
    beyond = dp.program.table("cls_rules").max_entries  # an array has no such index
    refused = r"cls_rules: update of element 1 of 2 refused by the kernel: E2BIG"
    with pytest.raises(OSError, match=refused) as info:
        writer.update(np.array([0, beyond], dtype="=u4").tobytes(), bytes(2 * writer.value_size))
    assert info.value.errno == errno.E2BIG


@pytest.mark.root
def test_a_batched_read_of_an_array_gives_every_index(dp):
    writer = _writer(dp, "reason_stats")
    keys, values = writer.read_all(chunk=5)
    size = dp.program.table("reason_stats").max_entries
    assert np.frombuffer(keys, dtype="=u4").tolist() == list(range(size))
    assert len(values) == writer.value_size * len(keys) // 4


def test_sizes_must_be_whole_items():
    writer = MapWriter(-1, "m", key_size=8, value_size=4)
    with pytest.raises(ValueError, match="not a whole number of 8-byte items"):
        writer.update(bytes(12), bytes(4))
    with pytest.raises(ValueError, match="2 keys but 1 values"):
        writer.update(bytes(16), bytes(4))
