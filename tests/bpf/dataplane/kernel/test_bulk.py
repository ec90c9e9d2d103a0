"""Bulk map writes (dataplane.kernel.bulk): the bytes are what ctypes would make, the kernel gets them.

The pure tests use a structure made up here (the packer is generic); the BPF tests check the
layouts of BCC's real Key/Leaf types and write real maps, batched and element by element.
"""

from __future__ import annotations

import ctypes
import errno

import pytest

from dataplane.kernel.bulk import Layout, MapWriter
from dataplane.matcher import DstKey, PortKey, SrcKey


class _Sample(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("kind", ctypes.c_uint8), ("addr", ctypes.c_uint8 * 5),
                ("pad", ctypes.c_uint8 * 2), ("wide", ctypes.c_uint64), ("small", ctypes.c_int16)]


def _by_ctypes(prefixlen: int, kind: int, addr: bytes, wide: int, small: int) -> bytes:
    s = _Sample()
    s.prefixlen, s.kind, s.wide, s.small = prefixlen, kind, wide, small
    s.addr = (ctypes.c_uint8 * 5)(*addr)
    return bytes(s)


def test_a_layout_packs_what_ctypes_holds_with_the_rest_zeroed():
    layout = Layout(_Sample, ("prefixlen", "kind", "addr", "wide", "small"))
    rows = [(40, 4, b"\x0a\x01\x02\x03\x04", 2**64 - 1, -2), (0, 0, bytes(5), 0, 0)]
    assert layout.size == ctypes.sizeof(_Sample)
    assert layout.pack(rows) == b"".join(_by_ctypes(*row) for row in rows)
    assert layout.zeros(3) == bytes(3 * ctypes.sizeof(_Sample))


def test_a_scalar_layout_packs_values_back_to_back():
    assert Layout(ctypes.c_uint32).pack([1, 2**32 - 1]) == bytes((ctypes.c_uint32 * 2)(1, 2**32 - 1))


def test_fields_out_of_memory_order_are_refused():
    with pytest.raises(TypeError, match="memory order"):
        Layout(_Sample, ("kind", "prefixlen"))


def test_only_integers_and_byte_arrays_are_packed():
    class Nested(ctypes.Structure):
        _fields_ = [("inner", _Sample)]

    with pytest.raises(TypeError, match="not an integer or byte-array field"):
        Layout(Nested, ("inner",))


# --- the real maps ------------------------------------------------------------------------------


def _key_bytes(table, **fields) -> bytes:  # noqa: ANN001
    key = table.Key()
    for name, value in fields.items():
        setattr(key, name, type(getattr(key, name))(*value) if isinstance(value, bytes) else value)
    return bytes(key)


@pytest.mark.root
def test_the_stage_layouts_match_bccs_types(dp):
    src, dst, port = (dp.program.table(n) for n in ("acl_src", "acl_dst", "acl_port"))
    addr = bytes(range(16))
    assert Layout(src.Key, SrcKey._fields).pack([SrcKey(40, 4, addr)]) == \
        _key_bytes(src, prefixlen=40, family=4, addr=addr)
    assert Layout(dst.Key, DstKey._fields).pack([DstKey(72, 7, 6, addr)]) == \
        _key_bytes(dst, prefixlen=72, set=7, family=6, addr=addr)
    assert Layout(port.Key, ("prefixlen", "set", "proto", "port")).pack([(56, 9, 17, b"\x12\x34")]) == \
        _key_bytes(port, prefixlen=56, set=9, proto=17, port=b"\x12\x34")
    assert PortKey._fields == ("prefixlen", "set", "proto", "port")


def _writer(dp, name: str) -> tuple[MapWriter, Layout, object]:  # noqa: ANN001
    t = dp.program.table(name)
    writer = MapWriter(t.map_fd, name, ctypes.sizeof(t.Key), ctypes.sizeof(t.Leaf))
    return writer, Layout(t.Key, SrcKey._fields), t


def _contents(table) -> dict:  # noqa: ANN001
    return {bytes(k): int(v.value) for k, v in table.items()}


@pytest.mark.root
@pytest.mark.parametrize("batch", [True, False], ids=["batched", "one by one"])
def test_updates_and_deletes_reach_the_map_in_order(dp, batch):
    writer, layout, table = _writer(dp, "cls_src")
    writer.batch = batch
    keys = [SrcKey(40, 4, bytes([10, i]) + bytes(14)) for i in range(50)]
    values = Layout(ctypes.c_uint32).pack(range(100, 150))
    writer.update(layout.pack(keys), values)
    writer.update(layout.pack(keys[:1] * 2), Layout(ctypes.c_uint32).pack([7, 8]))  # the later write wins
    want = {layout.pack([k]): 100 + i for i, k in enumerate(keys)}
    assert _contents(table) == want | {layout.pack(keys[:1]): 8}
    writer.delete(layout.pack([*keys[:10], keys[3], keys[20]]))  # keys[3] twice: already gone, skipped
    writer.delete(layout.pack(keys[:10]))  # all gone: deleting is idempotent
    assert set(_contents(table)) == {layout.pack([k]) for k in keys[10:] if k != keys[20]}
    writer.delete(layout.pack(keys))
    assert _contents(table) == {}


@pytest.mark.root
@pytest.mark.parametrize("batch", [True, False], ids=["batched", "one by one"])
def test_a_refused_element_names_the_map_and_the_element(dp, batch):
    writer, layout, table = _writer(dp, "cls_src")
    writer.batch = batch
    good, bad = SrcKey(40, 4, bytes(16)), SrcKey(9999, 4, bytes(16))  # prefixlen beyond the key
    refused = r"cls_src: update of element 1 of 2 refused by the kernel: EINVAL"
    with pytest.raises(OSError, match=refused) as info:
        writer.update(layout.pack([good, bad]), Layout(ctypes.c_uint32).pack([1, 2]))
    assert info.value.errno == errno.EINVAL
    writer.delete(layout.pack([good]))
    assert _contents(table) == {}


def test_sizes_must_be_whole_items():
    writer = MapWriter(-1, "m", key_size=8, value_size=4)
    with pytest.raises(ValueError, match="not a whole number of 8-byte items"):
        writer.update(bytes(12), bytes(4))
    with pytest.raises(ValueError, match="2 keys but 1 values"):
        writer.update(bytes(16), bytes(4))
