"""The fixed-depth forms of the stages (dataplane.matcher_layout), pure Python: buckets, class
lists and exact ports give the reference's first match with any match_flags, and applied op by op
every intermediate state of the physical maps judges every packet by the old rules or the new."""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.acl import acl_rule
from dataplane.matcher import SLOT_NONE, MatchCapacity, compile_rules, empty
from dataplane.matcher_layout import (
    F_ALL,
    F_DST_LISTS,
    F_PORT_EXACT,
    F_SRC_BUCKETS,
    HINT_PORT,
    LIST_MAX,
    Maps,
    SrcIndex,
    bucket_hint,
    entry_from_words,
    entry_words,
    flags,
    lookup,
    translate,
)
from dataplane.matcher_plan import plan

from . import rulegen
from .rulegen import reference

CAP = MatchCapacity(slots=2048, src=8192, dst=16384, port=32768)
# Nested prefixes, several inside one bucket (10.1/16, fd00:1::/48) so that buckets overflow too.
PREFIXES = [None, "0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.0/28", "10.1.2.2/31",
            "10.1.2.3/32", "10.1.3.0/24", "10.1.128.0/17", "192.168.0.0/16", "::/0", "fd00::/8",
            "fd00:1::/32", "fd00:1::/48", "fd00:1::/64", "fd00:1::5/128"]
V4_ADDRS = ["10.1.2.3", "10.1.2.2", "10.1.2.9", "10.1.3.1", "10.1.200.1", "10.200.0.1", "192.168.4.4",
            "172.16.0.1"]
V6_ADDRS = ["fd00:1::5", "fd00:1::6", "fd00:1:0:1::1", "fd00:2::1", "2001:db8::1"]
FLAG_SETS = [0, F_SRC_BUCKETS, F_DST_LISTS, F_PORT_EXACT, F_ALL]


def rules() -> st.SearchStrategy[list]:
    return rulegen.rules(max_rules=24, prefixes=PREFIXES)


def probes() -> st.SearchStrategy[tuple]:
    return rulegen.probes(v4=V4_ADDRS, v6=V6_ADDRS)


class Physical:
    """The physical maps, written op by op as dataplane.tables executes a translated plan."""

    def __init__(self) -> None:
        self.maps = Maps()
        self.index = SrcIndex()
        self.current = empty()

    def ops(self, new):  # noqa: ANN001, ANN201
        p = translate(plan(self.current, new), new, self.index)
        self.current = new
        return p

    def load(self, compiled) -> None:  # noqa: ANN001
        for op in self.ops(compiled).ops:
            self.maps.apply(op.kind, op.key, op.value)

    def judge(self, probe, use: int):  # noqa: ANN001, ANN201
        slot = lookup(self.maps, *probe, use=use)
        if slot == SLOT_NONE:
            return None
        assert slot in self.maps.slots, f"slot {slot} holds no rule"
        return self.maps.slots[slot]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule_set=rules(), packets=st.lists(probes(), min_size=1, max_size=12))
def test_every_form_gives_the_first_match(rule_set, packets):
    phys = Physical()
    phys.load(compile_rules(rule_set, empty(), CAP))
    for pk in packets:
        want = reference(rule_set, *pk)
        for use in FLAG_SETS:
            assert phys.judge(pk, use) == want, f"{pk} with match_flags {use:#x}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(old_rules=rules(), new_rules=rules(), packets=st.lists(probes(), min_size=1, max_size=10),
       use=st.lists(st.sampled_from(FLAG_SETS), min_size=1, max_size=3))
def test_every_intermediate_state_judges_by_old_or_new(old_rules, new_rules, packets, use):
    phys = Physical()
    old = compile_rules(old_rules, empty(), CAP)
    phys.load(old)
    new = compile_rules(new_rules, old, CAP)
    p = phys.ops(new)
    expected = [(reference(old_rules, *pk), reference(new_rules, *pk)) for pk in packets]
    for index, op in enumerate(p.ops):
        if index == p.grace_index:
            break  # from here on only entries no packet can still reach are removed
        phys.maps.apply(op.kind, op.key, op.value)
        for pk, (before, after) in zip(packets, expected, strict=True):
            for u in use:
                got = phys.judge(pk, u)
                assert got in (before, after), f"after op {index} ({op.kind}) {pk} {u:#x} judged by {got}"
    for op in p.ops[p.grace_index:] if p.grace_index >= 0 else ():
        phys.maps.apply(op.kind, op.key, op.value)
    for pk, (_, after) in zip(packets, expected, strict=True):
        assert all(phys.judge(pk, u) == after for u in FLAG_SETS)
    fresh = Physical()
    fresh.load(new)
    phys.maps.hint = {w: v for w, v in phys.maps.hint.items() if v}  # words cleared to zero
    assert phys.maps == fresh.maps, "ends exactly where writing the new policy from scratch ends"


def test_removals_of_fixed_depth_forms_come_after_the_grace_point_except_buckets():
    old = compile_rules([acl_rule(1, 1, src="10.1.2.0/24", dst="10.9.0.0/16", proto=6, dport=(80, 80))],
                        empty(), CAP)
    new = compile_rules([acl_rule(2, 1, src="10.1.2.0/24", dst="10.8.0.0/16", proto=6, dport=(443, 443))],
                        old, CAP)
    phys = Physical()
    phys.load(old)
    p = phys.ops(new)
    kinds = [s.kind for s in p.steps]
    before, after = kinds[: p.grace_step], kinds[p.grace_step:]
    assert {"put_port_exact", "put_dst_list", "put_bucket"} <= set(before)
    assert {"del_port_exact", "del_dst_list"} <= set(after)
    assert not any(k == "del_bucket" for k in after), "an old bucket must be gone before the grace period"


def test_a_bucket_holds_its_prefixes_longest_first_and_the_one_enclosing_it():
    compiled = compile_rules([acl_rule(1, 1, src="10.0.0.0/8"), acl_rule(2, 2, src="10.1.2.0/24"),
                              acl_rule(3, 3, src="10.1.2.3/32"), acl_rule(4, 4, src="10.2.0.0/16")],
                             empty(), CAP)
    phys = Physical()
    phys.load(compiled)
    assert len(phys.maps.src_bucket) == 2  # 10.1/16 and 10.2/16; 10/8 is in no bucket
    assert all(phys.maps.hinted(*bucket_hint(b)) for b in phys.maps.src_bucket)
    element = next(e for b, e in phys.maps.src_bucket.items() if b.addr[:2] == bytes([10, 1]))
    assert [p.plen for p, _ in element] == [8 + 32, 8 + 24, 8 + 8]


def test_a_bucket_or_class_with_more_than_the_list_holds_is_left_to_the_trie():
    many = [acl_rule(i, i, src=f"10.1.{i}.0/24", dst=f"10.9.{i}.0/24") for i in range(1, LIST_MAX + 2)]
    broad = acl_rule(99, 0, src="10.1.0.0/16", dst=None)
    phys = Physical()
    rule_set = [*many, broad]
    phys.load(compile_rules(rule_set, empty(), CAP))
    assert not phys.maps.src_bucket, "more prefixes in 10.1/16 than a list holds"
    for i in range(1, LIST_MAX + 2):
        pk = (ipaddress.ip_address(f"10.1.{i}.1"), ipaddress.ip_address(f"10.9.{i}.1"), 6, 80)
        assert phys.judge(pk, F_ALL) == reference(rule_set, *pk)


def test_list_entries_round_trip_through_the_words_the_program_reads():
    compiled = compile_rules([acl_rule(1, 1, src="fd00:1::/64", dst="10.1.2.0/23"),
                              acl_rule(2, 2, dst="::/0")], empty(), CAP)
    phys = Physical()
    phys.load(compiled)
    for element in [*phys.maps.src_bucket.values(), *phys.maps.dst_list.values()]:
        for prefix, value in element:
            assert entry_from_words(entry_words(prefix, value)) == (prefix, value)


def test_hints_are_set_for_what_exists_and_cleared_when_it_goes():
    rule = acl_rule(1, 1, src="fd00:1:2::/64", proto=6, dport=(443, 443))
    phys = Physical()
    phys.load(compile_rules([rule], empty(), CAP))
    (bucket,) = phys.maps.src_bucket
    assert phys.maps.hinted(*bucket_hint(bucket)) and phys.maps.hinted(HINT_PORT, 443)
    assert not phys.maps.hinted(HINT_PORT, 444)
    phys.load(compile_rules([], phys.current, CAP))
    assert not any(phys.maps.hint.values())


def test_forms_are_used_only_once_their_trie_is_large_enough():
    small = compile_rules([acl_rule(1, 1, src="10.1.2.3/32", dst="10.9.9.9/32", proto=17, dport=(9, 9))],
                          empty(), CAP)
    assert flags(small) == 0 and flags(small, minimum=1) == F_ALL
    large = compile_rules([acl_rule(i, i, src=f"10.1.{i}.0/24", dst=f"10.9.{i}.0/24", proto=6, dport=(i, i))
                           for i in range(1, 40)], empty(), CAP)
    assert flags(large) == F_ALL
