"""The two bucket maps of a table (pure): IPv4 packets probe *_buckets4 (16-byte keys), the others
*_buckets (40 bytes). Which map a compiled bucket goes to, the key packing both ways, the counts
the capacity checks use (kept through edits), and refusals naming the map's setting."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.acl import acl_rule
from dataplane.match import compiler as cp
from dataplane.match import live as lv
from dataplane.match import planner
from dataplane.match.adapter import to_columns

from ..rulegen import rules
from .test_compiler import CAP, load


def address_bytes(keys: np.ndarray, name: str) -> list[bytes]:
    return [k.tobytes() for k in np.ascontiguousarray(keys[name]).view(np.uint8).reshape(len(keys), 16)]


def test_an_ipv4_and_an_ipv6_rule_of_one_subtable_go_to_a_map_each():
    live, _ = load([acl_rule(1, 1, src="10.1.0.0/16"), acl_rule(2, 2, src="2001::/16")])
    assert len(live.tables) == 1 and len(live.keys) == 2, "one subtable (/16 source), a bucket each"
    v4, v6 = lv.families(live.keys)
    assert sorted(live.keys["family"][v4].tolist()) == [4] and sorted(live.keys["family"][v6].tolist()) == [6]
    assert live.bucket_counts() == lv.count_buckets(live.keys) == (1, 1)
    packed = lv.keys4(live.keys[v4])[0]
    assert packed["src"].tobytes() == ipaddress.ip_address("10.1.0.0").packed  # the first 4 bytes as they are
    assert (packed["sport"], packed["family"], packed["bank"], packed["table"]) == \
        tuple(live.keys[v4][0][["sport", "family", "bank", "table"]].tolist())


def test_a_bucket_of_no_family_goes_to_both_and_none_with_bytes_past_the_fourth_to_ipv4():
    keys = np.zeros(3, dtype=cp.KEY)
    src = np.zeros((3, 16), dtype=np.uint8)
    src[1, 5] = 1  # a masked address byte no IPv4 packet has
    keys["src"] = src.view(np.uint64).reshape(3, 2)
    keys["family"] = [0, 0, 6]
    v4, v6 = lv.families(keys)
    assert v4.tolist() == [True, False, False] and v6.tolist() == [True, True, True]
    assert [lv.maps_of(k.tobytes()) for k in keys] == [(1, 1), (0, 1), (0, 1)]
    live, _ = load([acl_rule(1, 1, proto=17, dport=(53, 53))])  # any family: a bucket of no family
    assert live.keys["family"].tolist() == [0] and live.bucket_counts() == (1, 1)


@given(rules(max_rules=30))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_packing_keys_for_the_ipv4_map_is_undone_exactly(rule_set):
    live, _ = load(rule_set)
    v4, _ = lv.families(live.keys)
    ipv4 = live.keys[v4]
    assert lv.keys_of4(lv.keys4(ipv4)).tobytes() == ipv4.tobytes()
    assert all(a[4:] == bytes(12) for name in ("src", "dst") for a in address_bytes(ipv4, name))
    assert lv.count_buckets(live.keys) == (int(v4.sum()), int((live.keys["family"] != 4).sum()))


@given(rules(max_rules=20), st.lists(st.tuples(st.booleans(), st.integers(0, 40)), min_size=1, max_size=8))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_counts_an_edit_keeps_are_the_counts_of_the_keys(rule_set, steps):
    """The mirror's per-map counts, updated by each edit, equal a count of the keys it holds."""
    live, _ = load(rule_set)
    for i, (add, pick) in enumerate(steps):
        if add or not len(live):
            extra = [acl_rule(1000 + i, 1000 + i, src=f"10.{pick}.0.0/16"),
                     acl_rule(2000 + i, 2000 + i, src=f"2001:db8:{pick}::/48"),
                     acl_rule(3000 + i, 3000 + i, proto=6, dport=(pick, pick))]  # in both maps
            compiled = planner.add_rules(to_columns(extra), live, CAP)
        else:
            ids = sorted(int(r) for r in live.records["rule_id"])
            compiled = planner.delete_rules([ids[pick % len(ids)]], live, CAP)
        live = compiled.live()
        assert live.bucket_counts() == lv.count_buckets(live.keys)


def test_full_compiles_are_refused_naming_the_map_that_is_short():
    live, _ = load([acl_rule(i, i, src=f"10.{i}.0.0/16") for i in range(1, 4)])  # 3 IPv4 buckets
    new = to_columns([acl_rule(i, i, src=f"10.{i}.1.0/24") for i in range(10, 14)])
    with pytest.raises(ValueError, match=r"acl: the policy needs 4 more IPv4 buckets, 7 while the previous "
                                         r"policy's are still live, but the map acl_buckets4 holds 6: "
                                         r"raise capacities.acl_buckets4$"):
        cp.compile_full(new, live, cp.Capacity(rules=100, buckets=100, buckets4=6))
    v6 = to_columns([acl_rule(i, i, src=f"2001:db8:{i}::/48") for i in range(10, 14)])
    with pytest.raises(ValueError, match=r"raise capacities.cls_buckets$"):
        cp.compile_full(v6, live, cp.Capacity(rules=100, buckets=3, buckets4=100), "cls")
    compiled = cp.compile_full(v6, live, cp.Capacity(rules=100, buckets=4, buckets4=3))  # each fits
    assert compiled.live().bucket_counts() == (0, 4)


def test_edits_are_refused_naming_the_map_and_change_nothing():
    live, _ = load([acl_rule(i, i, src=f"10.{i}.0.0/16") for i in range(1, 4)])
    small = cp.Capacity(rules=100, buckets=1, buckets4=4)
    m = live.mirror()
    held = (m.bucket_counts, len(m.buckets), len(m.records))
    one = to_columns([acl_rule(50, 50, src="10.50.0.0/16")])
    assert planner.add_rules(one, live, small).edit is not None  # 4 of 4: fits
    two = to_columns([acl_rule(50, 50, src="10.50.0.0/16"), acl_rule(51, 51, src="10.51.0.0/16")])
    with pytest.raises(ValueError, match=r"acl: the policy needs 2 more IPv4 buckets, 5 with those the "
                                         r"table holds, but the map acl_buckets4 holds 4: "
                                         r"raise capacities.acl_buckets4$"):
        planner.add_rules(two, live, small)
    v6 = to_columns([acl_rule(60, 60, src="2001:db8::/32"), acl_rule(61, 61, src="2002:db8::/32")])
    with pytest.raises(ValueError, match=r"raise capacities.acl_buckets$"):
        planner.add_rules(v6, live, small)
    assert (m.bucket_counts, len(m.buckets), len(m.records)) == held
    assert live.bucket_counts() == (3, 0)
