"""The ABI header is the one definition: BCC's view of it and Python's parse must agree."""

from __future__ import annotations

import ctypes
import mmap

import pytest

from dataplane import abi
from dataplane.kernel.program import map_names

pytestmark = pytest.mark.root

PAGE_SIZE = mmap.PAGESIZE
BPF_F_MMAPABLE = 1 << 10  # include/uapi/linux/bpf.h

EXPECTED_LAYOUTS = {
    # map name: (key size, key fields, leaf size, leaf fields)
    "config": (4, None, 48, ["flags", "vxlan_port", "geneve_port", "unknown_vni_action",
                             "default_action", "if_mac", "event_rate", "event_burst", "ct_tcp_s",
                             "ct_tcp_closing_s", "ct_udp_s", "ct_icmp_s", "reject_rate", "reject_burst"]),
    "tunnels": (4, None, 48, ["ways"]),
    "tunnel_counters": (4, None, 16, ["packets", "bytes"]),
    # The classifier (docs/classifier.md); both tables have the same layouts.
    "match_bank": (4, None, 4, None),
    "match_scratch": (4, None, 232, ["p", "best", "slot", "vni", "meta_flags", "l4_off", "l3_end",
                                     "outer_len", "payload_end", "tunnel_type", "not_ip", "reason",
                                     "fragment", "l3_off", "counter", "t", "k", "k4", "fk4", "gen"]),
    # The ACL's flow cache (match.h): IPv4 probes in 24-byte keys, the others the probe itself.
    "match_gen": (4, None, 8, None),
    "acl_flows4": (24, ["src", "dst", "sport", "dport", "family", "proto", "ports", "reserved", "l4_word",
                        "reserved2"], 16, ["gen", "slot", "reserved"]),
    "acl_flows6": (48, ["src", "dst", "sport", "dport", "family", "proto", "ports", "reserved", "l4_word",
                        "reserved2"], 16, ["gen", "slot", "reserved"]),
    "acl_subtables": (4, None, 8 + 48 * 32, ["count", "reserved", "tables"]),
    "acl_buckets": (40, ["src", "dst", "sport", "dport", "family", "proto", "bank", "table"], 68,
                    ["count", "slots"]),
    # what IPv4 packets probe: the same key with addresses of 4 bytes
    "acl_buckets4": (16, ["src", "dst", "sport", "dport", "family", "proto", "bank", "table"], 68,
                     ["count", "slots"]),
    "acl_rules": (4, None, 96, ["src", "src_mask", "dst", "dst_mask", "order", "rule_id", "mark", "sport_lo",
                                "sport_hi", "dport_lo", "dport_hi", "family", "proto", "action", "flags",
                                "l4_want", "l4_mask"]),
    "cls_subtables": (4, None, 8 + 48 * 32, ["count", "reserved", "tables"]),
    "cls_buckets": (40, None, 68, None),
    "cls_buckets4": (16, None, 68, None),
    "cls_rules": (4, None, 96, None),
    "match_prefilter": (4, None, 8, None),  # source bits low, destination bits high (tidegate_abi.h)
    # The ring buffer's Leaf is the record it carries (maps.h, TG_RINGBUF).
    "policy_events": (4, None, 72, ["ts_ns", "ifindex", "rule_id", "vni", "length", "src", "dst", "sport",
                                    "dport", "reason", "action", "family", "proto", "flags", "reserved"]),
    "event_bucket": (4, None, 24, ["credit_ns", "last_ns", "refused_tick"]),
    # allow_established (conntrack.h) and the reject answers' pace
    "conntrack": (40, ["src", "dst", "sport", "dport", "proto", "family", "reserved"], 16,
                  ["seen_ns", "state", "reserved"]),
    "conntrack_live": (4, None, 8, None),
    "reject_bucket": (4, None, 24, ["credit_ns", "last_ns", "refused_tick"]),
}


def _fields(t: type) -> list[str]:
    return [f[0] for f in getattr(t, "_fields_", [])]


@pytest.mark.parametrize("name", sorted(EXPECTED_LAYOUTS))
def test_bcc_layout_matches_header(loaded_dataplane, name):
    table = loaded_dataplane.program.table(name)
    key_size, key_fields, leaf_size, leaf_fields = EXPECTED_LAYOUTS[name]
    leaf = getattr(table, "sLeaf", table.Leaf)  # per-CPU tables: Leaf is one sLeaf per CPU
    assert ctypes.sizeof(table.Key) == key_size
    assert ctypes.sizeof(leaf) == leaf_size
    if key_fields:
        assert _fields(table.Key) == key_fields
    if leaf_fields:
        assert _fields(leaf) == leaf_fields


# map -> (struct of its key or None, struct of its leaf or None): checked field by field below.
STRUCTS = {"config": (None, "tg_config"), "tunnels": (None, "tg_tunnel_bucket"),
           "match_scratch": (None, "tg_scratch"), "acl_subtables": (None, "tg_subtables"),
           "acl_buckets": ("tg_bucket_key", "tg_bucket"), "acl_buckets4": ("tg_bucket_key4", "tg_bucket"),
           "acl_rules": (None, "tg_rule"), "policy_events": (None, "tg_event_record"),
           "event_bucket": (None, "tg_event_bucket"), "reason_stats": (None, "tg_counter"),
           "acl_flows4": ("tg_flow_key4", "tg_flow"), "acl_flows6": ("tg_probe", "tg_flow")}


def _same_layout(ctype: type, dtype) -> None:  # noqa: ANN001
    """Offsets, sizes and names of a ctypes struct (BCC) and a numpy dtype (abi.struct_dtype)."""
    assert ctypes.sizeof(ctype) == dtype.itemsize, ctype
    assert _fields(ctype) == list(dtype.names)
    for name, (sub, offset, *_) in dtype.fields.items():
        member = getattr(ctype, name)
        assert (member.offset, member.size) == (offset, sub.itemsize), f"{ctype.__name__}.{name}"
        field_type = dict(ctype._fields_)[name]
        element = getattr(field_type, "_type_", None)
        if sub.base.fields is not None:  # a nested struct, or an array of them
            _same_layout(element if sub.shape else field_type, sub.base)


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_python_layouts_parsed_from_the_header_match_bcc(loaded_dataplane, name):
    table = loaded_dataplane.program.table(name)
    key, leaf = STRUCTS[name]
    if key:
        _same_layout(table.Key, abi.struct_dtype(key))
    if leaf:
        _same_layout(getattr(table, "sLeaf", table.Leaf), abi.struct_dtype(leaf))


def _offsets(t: type) -> list[tuple[str, int, int]]:
    return [(name, getattr(t, name).offset, getattr(t, name).size) for name in _fields(t)]


@pytest.mark.parametrize("name", sorted(n for n, (_, leaf) in STRUCTS.items() if leaf))
def test_abi_struct_reads_the_layout_bcc_generates(loaded_dataplane, name):
    """abi.struct (ctypes, for single values) lays out what BCC generates, where it applies."""
    table = loaded_dataplane.program.table(name)
    leaf = getattr(table, "sLeaf", table.Leaf)
    try:
        parsed = abi.struct(STRUCTS[name][1])
    except ValueError:
        pytest.skip(f"{STRUCTS[name][1]} has nested structs or big-endian fields: struct_dtype only")
    assert ctypes.sizeof(parsed) == ctypes.sizeof(leaf)
    assert _offsets(parsed) == _offsets(leaf)


def test_every_declared_map_is_loaded(loaded_dataplane):
    for name in map_names():
        assert loaded_dataplane.program.table(name) is not None


def test_event_ring_is_a_ring_buffer_of_the_configured_pages(loaded_dataplane):
    ring = loaded_dataplane.program.table("policy_events")
    assert type(ring).__name__ == "RingBuf"
    assert ring.max_entries == loaded_dataplane.settings.capacities.event_ring_pages * PAGE_SIZE


def test_counter_arrays_sized_by_enums(loaded_dataplane):
    assert loaded_dataplane.program.table("reason_stats").max_entries == abi.REASON_MAX
    assert loaded_dataplane.program.table("event_stats").max_entries == abi.EVENT_MAX


def test_the_prefilter_is_a_mapped_array_with_an_entry_per_table_bank_and_block(loaded_dataplane):
    from dataplane.kernel.bpf_info import map_info
    from dataplane.match import prefilter as pf

    table = loaded_dataplane.program.table(pf.MAP)
    info = map_info(table.map_fd)
    assert info.max_entries == pf.ENTRIES == abi.enums()["tg_table"]["TG_TABLE_MAX"] * pf.BANKS * pf.BLOCKS
    assert info.map_flags & BPF_F_MMAPABLE, "user space writes a bank's entries through a mapping"
