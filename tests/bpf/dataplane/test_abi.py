"""The ABI header is the one definition: BCC's view of it and Python's parse must agree."""

from __future__ import annotations

import ctypes
import mmap

import pytest

from dataplane import abi
from dataplane.kernel.program import map_names

pytestmark = pytest.mark.root

PAGE_SIZE = mmap.PAGESIZE

EXPECTED_LAYOUTS = {
    # map name: (key size, key fields, leaf size, leaf fields)
    "config": (4, None, 48, ["flags", "vxlan_port", "geneve_port", "unknown_vni_action",
                             "default_action", "if_mac", "event_rate", "event_burst", "ct_tcp_s",
                             "ct_tcp_closing_s", "ct_udp_s", "ct_icmp_s", "reject_rate", "reject_burst"]),
    "tunnels": (4, None, 8, ["flags", "reserved"]),
    "acl_src": (24, ["prefixlen", "family", "addr", "reserved"], 4, None),
    "acl_dst": (28, ["prefixlen", "set", "family", "addr", "reserved"], 4, None),
    "acl_port": (12, ["prefixlen", "set", "proto", "port", "reserved"], 4, None),
    "acl_rules": (4, None, 8, ["rule_id", "action", "flags", "reserved"]),
    # The stages' fixed-depth forms (dataplane/matcher_layout.py); a list holds TG_LIST_MAX entries.
    "acl_src_bucket": (12, ["family", "reserved", "addr"], 168, ["count", "reserved", "entries"]),
    "acl_dst_list": (4, None, 168, ["count", "reserved", "entries"]),
    "acl_port_exact": (8, ["set", "proto", "port", "reserved"], 4, None),
    "match_flags": (4, None, 4, None),
    "match_hints": (4, None, 8, None),
    "cls_rules": (4, None, 8, ["classifier_id", "mark"]),
    # The ring buffer's Leaf is the record it carries (maps.h, TG_RINGBUF).
    "policy_events": (4, None, 72, ["ts_ns", "ifindex", "rule_id", "vni", "length", "src", "dst", "sport",
                                    "dport", "reason", "action", "family", "proto", "flags", "reserved"]),
    "event_bucket": (4, None, 16, ["credit_ns", "last_ns"]),
    # allow_established (conntrack.h) and the stages' scratch
    "conntrack": (40, ["src", "dst", "sport", "dport", "proto", "family", "reserved"], 16,
                  ["seen_ns", "state", "reserved"]),
    "conntrack_live": (4, None, 8, None),
    "stage_scratch": (4, None, 64, ["t", "l4_off", "l3_end", "l3_off", "reserved"]),
    "reject_bucket": (4, None, 16, ["credit_ns", "last_ns"]),
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


# map -> the struct its leaf is, read by abi.struct from the header: both readings must agree
PARSED_LEAVES = {"config": "tg_config", "tunnels": "tg_tunnel", "acl_rules": "tg_acl_rule",
                 "cls_rules": "tg_cls_rule", "policy_events": "tg_event_record",
                 "event_bucket": "tg_event_bucket"}


def _offsets(t: type) -> list[tuple[str, int, int]]:
    return [(name, getattr(t, name).offset, getattr(t, name).size) for name in _fields(t)]


@pytest.mark.parametrize("name", sorted(PARSED_LEAVES))
def test_abi_struct_reads_the_layout_bcc_generates(loaded_dataplane, name):
    table = loaded_dataplane.program.table(name)
    leaf = getattr(table, "sLeaf", table.Leaf)
    parsed = abi.struct(PARSED_LEAVES[name])
    assert ctypes.sizeof(parsed) == ctypes.sizeof(leaf)
    assert _offsets(parsed) == _offsets(leaf)


def test_prefix_list_entries_match_header(loaded_dataplane):
    leaf = loaded_dataplane.program.table("acl_dst_list").Leaf
    entry = dict(leaf._fields_)["entries"]
    assert entry._length_ == abi.define("TG_LIST_MAX")
    assert ctypes.sizeof(entry._type_) == 40
    assert _fields(entry._type_) == ["addr_hi", "addr_lo", "mask_hi", "mask_lo", "value", "family",
                                     "reserved"]


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
