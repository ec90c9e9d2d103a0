"""Parsing the ABI header (pure Python)."""

from __future__ import annotations

from dataplane import abi


def test_reason_and_event_enums_are_dense_from_unspecified():
    assert sorted(int(r) for r in abi.Reason) == list(range(abi.REASON_MAX))
    assert sorted(int(e) for e in abi.Event) == list(range(abi.EVENT_MAX))
    assert abi.Reason.UNSPECIFIED == abi.Event.UNSPECIFIED == 0


def test_the_header_lists_exactly_the_drop_reasons_as_dropping():
    drops = {r.name for r in abi.Reason if abi.is_drop(r)}
    assert drops == {r.name for r in abi.Reason if r.name.startswith("DROP_")}
    assert not abi.is_drop(abi.Reason.PASS_TUNNEL_NOT_IP)  # after the drops in the enum, still a pass


def test_defines_are_read_from_the_header():
    assert abi.define("TG_VXLAN_PORT_DEFAULT") == 4789
    assert abi.define("TG_GENEVE_PORT_DEFAULT") == 6081
    assert abi.SLOT_NONE == 0xFFFFFFFF


def test_unknown_define_names_the_header():
    import pytest

    with pytest.raises(KeyError, match="tidegate_abi.h"):
        abi.define("TG_NOT_A_THING")


def test_the_largest_vni_is_24_bits():
    assert abi.VNI_MAX == (1 << 24) - 1  # RFC 7348 5, RFC 8926 3.4


def test_tg_meta_is_read_from_the_header():
    import ctypes

    assert [name for name, _ in abi.Meta._fields_] == ["magic", "mark", "vni", "flags"]
    assert ctypes.sizeof(abi.Meta) == 16  # the header's _Static_assert, checked by abi.struct too
    raw = bytes(abi.Meta(magic=abi.META_MAGIC, mark=7, vni=100, flags=3))
    assert abi.Meta.from_buffer_copy(raw).vni == 100


def test_a_struct_abi_cannot_read_says_so():
    import pytest

    # tg_subtables holds an array of struct tg_subtable: a numpy dtype can, a flat ctypes type not
    subtables = abi.struct_dtype("tg_subtables")
    assert subtables.itemsize == subtables.fields["tables"][1] + abi.struct_dtype("tg_subtable").itemsize * (
        abi.define("TG_SUBTABLES_MAX"))
    with pytest.raises(ValueError, match="tg_subtables: the field tables is not a native-order"):
        abi.struct("tg_subtables")
    with pytest.raises(KeyError, match="struct tg_nothing is not defined in"):
        abi.struct("tg_nothing")


def test_struct_layouts_follow_the_header_size_asserts():
    import re

    sizes = re.compile(r"_Static_assert\(sizeof\(struct\s+(tg_\w+)\)\s*==\s*(\d+)\s*,")
    asserted = dict(sizes.findall(abi._header_text()))
    assert asserted, "the header asserts struct sizes"
    for name, size in asserted.items():
        assert abi.struct_dtype(name).itemsize == int(size), name
