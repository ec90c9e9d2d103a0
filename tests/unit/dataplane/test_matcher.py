"""The rule compiler, pure Python: its LPM structure must pick the reference first match."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.acl import acl_rule
from dataplane.matcher import (
    SET_F_RULESET,
    SLOT_NONE,
    MatchCapacity,
    MatchRule,
    compile_rules,
    empty,
    port_prefixes,
)

from .rulegen import probes, reference, rules

CAP = MatchCapacity(slots=1024, src=4096, dst=8192, port=16384)
A = ipaddress.ip_address


def _winner(compiled, probe):  # noqa: ANN001, ANN202
    slot = compiled.lookup(*probe)
    return None if slot == SLOT_NONE else compiled.slots[slot]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule_set=rules(), packets=st.lists(probes(), min_size=1, max_size=20))
def test_compiled_lookup_is_the_first_match(rule_set, packets):
    compiled = compile_rules(rule_set, empty(), CAP)
    for probe in packets:
        assert _winner(compiled, probe) == reference(rule_set, *probe), probe


@given(lo=st.integers(0, 65535), span=st.integers(0, 65535))
def test_port_prefixes_cover_the_range_exactly(lo, span):
    hi = min(lo + span, 65535)
    covered = []
    for port, plen in port_prefixes(lo, hi):
        size = 1 << (16 - plen)
        assert port % size == 0, "blocks are aligned"
        covered.append((port, port + size - 1))
    assert covered[0][0] == lo and covered[-1][1] == hi
    assert all(a[1] + 1 == b[0] for a, b in zip(covered, covered[1:], strict=False))
    assert len(covered) <= 2 * 16


def test_recompiling_the_same_rules_changes_nothing():
    rule_set = [acl_rule(1, 1, src="10.0.0.0/8", proto=6, dport=(80, 90)), acl_rule(2, 2, dst="fd00::/8")]
    first = compile_rules(rule_set, empty(), CAP)
    again = compile_rules(list(reversed(rule_set)), first, CAP)
    assert again == first
    assert compile_rules(rule_set, empty(), CAP) == first, "deterministic from scratch"


def test_new_contents_never_reuse_ids_the_previous_policy_holds():
    old = compile_rules([acl_rule(1, 1, src="10.0.0.0/8")], empty(), CAP)
    new = compile_rules([acl_rule(1, 1, src="10.0.0.0/8", action="allow")], old, CAP)
    assert not set(old.slots) & set(new.slots)
    assert not set(old.classes.values()) & set(new.classes.values())
    assert not set(old.rulesets.values()) & set(new.rulesets.values())


def test_unchanged_rules_keep_their_slots():
    keep = acl_rule(7, 1, src="10.1.0.0/16")
    old = compile_rules([keep, acl_rule(8, 2)], empty(), CAP)
    new = compile_rules([keep, acl_rule(9, 3, dst="10.0.0.0/8")], old, CAP)
    slot = next(s for s, r in old.slots.items() if r == keep)
    assert new.slots[slot] == keep


@pytest.mark.parametrize("kwargs,field", [
    ({"proto": 1, "dport": (1, 2)}, "dport needs proto"),
    ({"proto": None, "dport": (1, 2)}, "dport needs proto"),
    ({"proto": 6, "dport": (9, 3)}, "dport range 9-3"),
    ({"proto": 6, "dport": (0, 70000)}, "dport range"),
    ({"proto": 256}, "proto must be"),
    ({"src": "10.0.0.1/8"}, "host bits"),
])
def test_invalid_rules_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        acl_rule(5, 1, **kwargs)


def test_rule_errors_name_the_rule():
    with pytest.raises(ValueError, match="rule 99: priority"):
        MatchRule(rule_id=99, priority=-1)


def test_duplicate_rule_ids_are_refused():
    with pytest.raises(ValueError, match="rule 3: rule_id is used twice"):
        compile_rules([acl_rule(3, 1), acl_rule(3, 2, src="10.0.0.0/8")], empty(), CAP)


def test_capacity_is_checked_with_the_previous_policy_still_live():
    small = MatchCapacity(slots=3, src=100, dst=100, port=100)
    old = compile_rules([acl_rule(1, 1), acl_rule(2, 2)], empty(), small)
    with pytest.raises(ValueError, match="rule slots.*holds 3.*capacities.acl_rules"):
        compile_rules([acl_rule(3, 1), acl_rule(4, 2)], old, small)
    with pytest.raises(ValueError, match="capacities.cls_rules"):
        compile_rules([acl_rule(3, 1), acl_rule(4, 2)], old, small, "cls")


def test_a_policy_too_large_for_a_stage_is_refused_naming_the_map():
    tight = MatchCapacity(slots=100, src=100, dst=100, port=4)
    with pytest.raises(ValueError, match="acl_port.*capacities.acl_port"):
        compile_rules([acl_rule(i, i, proto=6, dport=(i, i)) for i in range(1, 10)], empty(), tight)


def test_a_cross_product_blowup_is_refused_before_it_is_built():
    broad = [acl_rule(i, i, dst=f"10.{i // 256}.{i % 256}.0/24") for i in range(2000)]
    narrow = [acl_rule(10_000 + i, 5000 + i, src=f"172.16.{i // 256}.{i % 256}/32") for i in range(2000)]
    with pytest.raises(ValueError, match="narrow the broad rules"):
        compile_rules(broad + narrow, empty(), MatchCapacity(slots=8192, src=8192, dst=8192, port=8192))


def test_one_lookup_structure_serves_both_families():
    v4_any = acl_rule(1, 1, src="0.0.0.0/0", action="allow")
    compiled = compile_rules([v4_any], empty(), CAP)
    assert compiled.lookup(A("1.2.3.4"), A("5.6.7.8"), 6, 80) != SLOT_NONE
    assert compiled.lookup(A("::1"), A("::2"), 6, 80) == SLOT_NONE


def test_a_class_whose_rules_ignore_the_destination_skips_stage_2():
    ports = [acl_rule(1, 1, src="10.0.0.0/8", proto=6, dport=(22, 22)), acl_rule(2, 2, src="10.1.0.0/16")]
    compiled = compile_rules(ports, empty(), CAP)
    assert not compiled.dst, "stage 1 names the ruleset: no stage-2 entry"
    assert all(v & SET_F_RULESET for v in compiled.src.values())
    assert compiled.lookup(A("10.1.2.3"), A("::1"), 6, 22) != SLOT_NONE, "any destination, of either family"
    with_dst = compile_rules([*ports, acl_rule(3, 3, src="10.1.0.0/16", dst="192.168.0.0/16")], compiled, CAP)
    assert {k.set for k in with_dst.dst} == {with_dst.src[k] for k in with_dst.src if k.prefixlen == 8 + 16}
