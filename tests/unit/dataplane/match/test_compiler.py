"""The classifier's compiler and edit planner, pure Python: compiled policies searched the way the
program searches (model.py) give the naive reference's answer, every intermediate state of a
policy change answers as the old rules or as the new ones, and refusals name what to change."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.acl import acl_rule
from dataplane.match import compiler as cp
from dataplane.match import planner
from dataplane.match import prefilter as pf
from dataplane.match import tuples as tp
from dataplane.match.adapter import MatchRule, to_columns
from dataplane.match.explain import Probe, Searcher

from ..reference_matcher import Packet, first_match, first_match_slow
from ..rulegen import probes, reference, rules
from .model import Maps, maps_of

CAP = cp.Capacity(rules=4096, buckets=8192, buckets4=8192)
SLOW = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def winner(maps: Maps, p: Packet, bits_from: Maps | None = None) -> int | None:
    """Rule id the modelled program picks for the packet (its prefilter read in `bits_from`)."""
    slot = maps.lookup(p, bits_from)
    if slot is None:
        return None
    return int(np.frombuffer(maps.rules[slot], dtype=cp.RULE)["rule_id"][0])


def bits(maps: Maps, bank: int) -> np.ndarray:
    """The prefilter entries of `bank` (none written: all clear)."""
    return maps.prefilter.get(bank, np.zeros(pf.BLOCKS, dtype=pf.ENTRY))


def rid(rule: MatchRule | None) -> int | None:
    return None if rule is None else rule.rule_id


def load(rule_set: list[MatchRule]) -> tuple[cp.Live, Maps]:
    compiled = planner.compile_rules(to_columns(rule_set), cp.Live(), CAP)
    maps = Maps()
    maps.write(compiled)
    return compiled.live(), maps


@SLOW
@given(rule_set=rules(max_rules=40), packets=st.lists(probes(), min_size=1, max_size=20))
def test_the_reference_rule_by_rule_and_all_at_once_agree(rule_set, packets):
    cols = to_columns(rule_set)
    for p in packets:
        assert first_match(cols, p) == first_match_slow(cols, p)


@SLOW
@given(rule_set=rules(max_rules=60), packets=st.lists(probes(), min_size=1, max_size=20))
def test_a_compiled_policy_answers_as_the_reference(rule_set, packets):
    live, maps = load(rule_set)
    assert maps_of(live).buckets == maps.buckets, "what the table believes it wrote is what it wrote"
    for p in packets:
        assert winner(maps, p) == rid(reference(rule_set, p)), p


@SLOW
@given(old_rules=rules(max_rules=25), new_rules=rules(max_rules=25),
       packets=st.lists(probes(), min_size=1, max_size=12))
def test_every_state_of_a_change_answers_as_the_old_rules_or_the_new(old_rules, new_rules, packets):
    live, maps = load(old_rules)
    change = planner.compile_rules(to_columns(new_rules), live, CAP)
    expected = [(rid(reference(old_rules, p)), rid(reference(new_rules, p))) for p in packets]
    for step, state in enumerate(maps.write(change)):
        for p, (old, new) in zip(packets, expected, strict=True):
            assert winner(state, p) in (old, new), f"after write {step}: {p}"
    for p, (_, new) in zip(packets, expected, strict=True):
        assert winner(maps, p) == new
    after = change.live()
    assert maps_of(after).buckets == maps.buckets
    assert (bits(maps_of(after), after.bank) == bits(maps, after.bank)).all()


@st.composite
def edits(draw: st.DrawFn) -> tuple[list[MatchRule], list[MatchRule]]:
    """A rule set and the same set with a few rules added, removed or rewritten."""
    base = draw(rules(max_rules=30, min_rules=1))
    extra = [r for r in draw(rules(max_rules=4)) if r.rule_id not in {b.rule_id for b in base}]
    kept = [r for r in base if draw(st.integers(0, 5))]  # about one in six removed
    return base, kept + extra


@SLOW
@given(change=edits(), packets=st.lists(probes(), min_size=1, max_size=12))
def test_small_changes_are_edits_of_the_live_bank_and_never_mix(change, packets):
    old_rules, new_rules = change
    live, maps = load(old_rules)
    compiled = planner.compile_rules(to_columns(new_rules), live, CAP)
    assert compiled.unchanged or compiled.edit is not None, "a few rules: edited in place"
    expected = [(rid(reference(old_rules, p)), rid(reference(new_rules, p))) for p in packets]
    states = maps.write(compiled)
    for step, state in enumerate(states):
        assert state.bank == live.bank
        for p, (old, new) in zip(packets, expected, strict=True):
            assert winner(state, p) in (old, new), f"after write {step}: {p}"
            # A search reads the prefilter first and the rest later, never across a wait of the
            # writer's (quiesce): bits of any earlier state of the same epoch, the rest of this one.
            for early, read in enumerate(states[: step + 1]):
                if read.epoch == state.epoch:
                    assert winner(state, p, read) in (old, new), f"bits of write {early}, rest of {step}: {p}"
    for p, (_, new) in zip(packets, expected, strict=True):
        assert winner(maps, p) == new
    after = compiled.live()
    assert maps_of(after).buckets == maps.buckets
    assert (bits(maps_of(after), after.bank) == bits(maps, after.bank)).all(), \
        "an edit leaves exactly the bits its rules need"


@SLOW
@given(base=rules(max_rules=30), added=rules(max_rules=3),
       packets=st.lists(probes(), min_size=1, max_size=10))
def test_add_then_delete_by_id_is_the_same_as_compiling_the_sets(base, added, packets):
    ids = {r.rule_id for r in base}
    added = [r for r in added if r.rule_id not in ids]
    live, maps = load(base)
    compiled = planner.add_rules(to_columns(added), live, CAP)
    maps.write(compiled)
    live = compiled.live()
    for p in packets:
        assert winner(maps, p) == rid(reference(base + added, p))
    compiled = planner.delete_rules([r.rule_id for r in added], live, CAP)
    maps.write(compiled)
    for p in packets:
        assert winner(maps, p) == rid(reference(base, p))


def test_a_rule_whose_order_is_the_largest_there_is_still_matches():
    last = acl_rule(2**32 - 1, 2**32 - 1, "deny", proto=6)  # order 2^64-1: TG_ORDER_NONE itself
    probe = Packet.of("192.0.2.1", "192.0.2.2", 6, 1, 2)
    _, maps = load([acl_rule(1, 10, "allow", src="10.0.0.0/8"), last])
    assert winner(maps, probe) == 2**32 - 1
    live, maps = load([acl_rule(1, 10, "allow", src="10.0.0.0/8")])
    added = planner.add_rules(to_columns([last]), live, CAP)  # into a subtable of its own
    maps.write(added)
    assert winner(maps, probe) == 2**32 - 1


@SLOW
@given(rule_set=rules(max_rules=40), packets=st.lists(probes(), min_size=1, max_size=12))
def test_explain_finds_what_the_reference_finds(rule_set, packets):
    live, _ = load(rule_set)
    searcher = Searcher(live)
    for p in packets:
        src, dst = p.address("src"), p.address("dst")
        found = searcher(Probe.of(src, dst, p.proto, p.sport, p.dport, p.fragment, p.icmp_type, p.icmp_code,
                                  p.tcp_flags))
        assert found.rule_id == rid(reference(rule_set, p))
        assert found.subtables <= len(live.tables) and found.candidates <= found.subtables * tp.BUCKET_MAX


def test_adding_a_rule_with_an_id_held_replaces_it():
    live, maps = load([acl_rule(1, 10, "deny", src="10.0.0.0/8"), acl_rule(2, 20, "allow")])
    compiled = planner.add_rules(to_columns([acl_rule(1, 30, "deny", src="10.0.0.0/8")]), live, CAP)
    maps.write(compiled)
    assert winner(maps, Packet.of("10.1.1.1", "1.1.1.1", 6, 1, 80)) == 2
    assert len(compiled.live()) == 2


def test_a_rule_that_stays_keeps_its_slot_and_a_changed_one_gets_a_new_slot():
    a, b = acl_rule(1, 10, "deny", src="10.0.0.0/8"), acl_rule(2, 20, "allow", dst="10.0.0.0/8")
    first = planner.compile_rules(to_columns([a, b]), cp.Live(), CAP)
    live = first.live()
    slot_of = dict(zip(first.columns.rule_id.tolist(), first.slots.tolist(), strict=True))
    second = planner.compile_rules(to_columns([a, acl_rule(2, 20, "deny", dst="10.0.0.0/8")]), live, CAP)
    now = dict(zip(second.columns.rule_id.tolist(), second.slots.tolist(), strict=True))
    assert now[1] == slot_of[1]
    assert now[2] != slot_of[2] and second.freed.tolist() == [slot_of[2]]


def test_the_same_rules_again_write_nothing():
    rule_set = [acl_rule(i, i, "deny", src=f"10.{i}.0.0/16", proto=6, dport=(i, i)) for i in range(1, 50)]
    live, _ = load(rule_set)
    assert planner.compile_rules(to_columns(list(reversed(rule_set))), live, CAP).unchanged


def test_too_many_rules_are_refused_naming_the_setting_and_the_counts():
    live, _ = load([acl_rule(i, i, src=f"10.{i}.0.0/16") for i in range(3)])
    small = cp.Capacity(rules=5, buckets=100, buckets4=100)
    new = to_columns([acl_rule(i, i, src=f"10.{i}.1.0/24") for i in range(10, 13)])
    with pytest.raises(ValueError, match=r"acl: .*6 while the previous policy is still live.*holds 5: "
                                         r"raise capacities.acl_rules"):
        planner.compile_rules(new, live, small)
    with pytest.raises(ValueError, match=r"cls: .*IPv4 buckets.*raise capacities.cls_buckets4$"):
        cp.compile_full(new, live, cp.Capacity(rules=100, buckets=100, buckets4=4), "cls")


def test_rules_out_of_order_or_with_a_repeated_id_are_refused_naming_the_row():
    cols = to_columns([acl_rule(1, 10), acl_rule(2, 20)])
    backwards = cols.take([1, 0])
    with pytest.raises(ValueError, match=r"acl\[1\] \(rule 1\)\.order: not increasing"):
        planner.compile_rules(backwards, cp.Live(), CAP)
    twice = cols.take([0, 0])
    twice.order[1] += 1
    with pytest.raises(ValueError, match="rule id 1 is used 2 times"):
        planner.compile_rules(twice, cp.Live(), CAP)


@SLOW
@given(rule_set=rules(max_rules=80), cap=st.integers(1, 4), tables=st.integers(8, 32))
def test_assignment_bounds_buckets_and_subtables_and_fits_each_rule(rule_set, cap, tables):
    cols = to_columns(rule_set)
    tuples, fields = tp.rule_tuples(cols), tp.Fields.of(cols)
    try:
        a = tp.assign(tuples, fields, cap=cap, max_tables=tables)
    except tp.TooManySubtables as exc:
        assert "left over" in str(exc)
        return
    assert len(a.tuples) <= tables and (a.table_of >= 0).all()
    assert (tuples >= a.tuples[a.table_of]).all(), "a rule's subtable masks no more than the rule fixes"
    for t_id, t in enumerate(a.tuples):
        rows = np.flatnonzero(a.table_of == t_id)
        key = tp.masked(fields.take(rows), t)
        flat = np.concatenate([key.src, key.dst, np.stack([key.sport, key.dport, key.family, key.proto], 1)
                               .astype(np.uint64)], axis=1)
        _, counts = np.unique(flat, axis=0, return_counts=True)
        assert counts.max() <= cap


def test_rules_that_differ_only_in_non_prefix_port_ranges_beyond_the_bound_are_refused():
    # Ranges 1-1024 .. 1-1623: all share their first 5 bits, so all fall in one bucket of any subtable.
    crowd = [acl_rule(i, i, "deny", src="10.0.0.0/8", proto=6, dport=(1, 1023 + i)) for i in range(1, 601)]
    with pytest.raises(ValueError, match=r"acl: .*left over after 32 subtables.*rules\[\d+\].*port ranges"):
        planner.compile_rules(to_columns(crowd), cp.Live(), cp.Capacity(4096, 8192, 8192))


def test_port_prefix_lengths():
    lo = np.array([80, 0, 1024, 0, 8, 0], dtype=np.uint16)
    hi = np.array([80, 65535, 2047, 1023, 15, 1], dtype=np.uint16)
    assert tp.common_prefix(lo, hi).tolist() == [16, 0, 6, 6, 13, 15]


@pytest.mark.parametrize("column, proto, message", [
    ("has_icmp_type", 6, "acl[3] (rule 4).icmp_type: needs protocol icmp (1) or icmpv6 (58)"),
    ("has_icmp_code", None, "acl[3] (rule 4).icmp_code: needs protocol icmp (1) or icmpv6 (58)"),
    ("syn", 17, "acl[3] (rule 4).syn: needs protocol tcp (6)"),
    ("syn", None, "acl[3] (rule 4).syn: needs protocol tcp (6)"),
])
def test_icmp_fields_and_syn_without_their_protocol_are_refused_by_index(column, proto, message):
    """Columns can reach the compiler from any edge: it names the row and the field itself."""
    cols = to_columns([acl_rule(i, 1, "deny", proto=proto) for i in range(1, 6)])
    getattr(cols, column)[3] = True
    with pytest.raises(ValueError) as info:
        planner.compile_rules(cols, cp.Live(), CAP)
    assert str(info.value) == message


def test_records_round_trip_the_icmp_fields_and_syn():
    rule_set = [acl_rule(1, 1, "allow", proto=1, icmp_type=8, icmp_code=0),
                acl_rule(2, 2, proto=58, icmp_code=4),
                acl_rule(3, 3, proto=6, dport=(22, 22), syn=True), acl_rule(4, 4, proto=1)]
    cols = to_columns(rule_set)
    back = cp.columns_of(cp.records(cols))
    for name in ("has_icmp_type", "icmp_type", "has_icmp_code", "icmp_code", "syn"):
        assert np.array_equal(getattr(back, name), getattr(cols, name)), name
    recs = cp.records(cols)
    assert recs["l4_mask"].tolist() == [0xFFFF, 0x00FF, 0x17, 0]
    assert recs["l4_want"].tolist() == [0x0800, 4, 2, 0]


def test_an_edit_waits_between_setting_prefilter_bits_and_writing_buckets():
    """A search reads the prefilter first. Rule A (first) goes into a new subtable, whose bit the
    edit sets; rule B (second) into the live subtable of rule C, whose bit is set already. A
    search that read the bits before they were set skips A's subtable: were it to go on and see
    B's bucket it would answer B, neither the old answer (C) nor the new (A). So the writer waits
    for the searches under way between the bits and the buckets (a new epoch in the model)."""
    c = acl_rule(3, 50, "allow", src="10.0.0.0/8")
    a = acl_rule(1, 10, "deny", proto=17)
    b = acl_rule(2, 20, "deny", src="10.1.0.0/16")
    probe = Packet.of("10.1.2.3", "10.9.9.9", 17, 1000, 53)
    live, maps = load([c])
    compiled = planner.add_rules(to_columns([a, b]), live, CAP)
    assert compiled.edit is not None and compiled.edit.sets
    before = maps.copy()
    states = maps.write(compiled)
    assert winner(states[-1], probe) == 1 and winner(before, probe) == 3
    assert winner(states[-1], probe, before) == 2, "the hazard: the old bits with the new buckets"
    for j, state in enumerate(states):
        for read in [before, *states[: j + 1]]:
            if read.epoch == state.epoch:
                assert winner(state, probe, read) in (1, 3), f"bits of an earlier state, the rest of {j}"


def test_prefilter_blocks_of_prefixes_and_packets_agree():
    """A packet's block lies in the run of every prefix that holds its address (IPv4 short and
    long prefixes, IPv6 short and long, any family), and the runs are what tidegate_abi.h says."""
    import ipaddress

    cases = [("10.1.2.3", "10.0.0.0/8", 4), ("10.1.2.3", "10.1.2.0/24", 4), ("10.1.2.3", "0.0.0.0/0", 4),
             ("2001:db8:1::5", "2001:db8::/32", 6), ("2001:db8:1::5", "2001:db8:1::/48", 6),
             ("2001:db8:1::5", "2001::/16", 6), ("2001:db8:1::5", "::/0", 0), ("10.1.2.3", "::/0", 0)]
    for addr, prefix, family in cases:
        net = ipaddress.ip_network(prefix)
        raw = np.frombuffer(net.network_address.packed.ljust(16, b"\0"), dtype=np.uint8)[None, :]
        lo, hi = pf.blocks(raw, np.array([net.prefixlen]), np.array([family]))
        packet = ipaddress.ip_address(addr)
        index = pf.probe_index(packet.packed.ljust(16, b"\0"), packet.version)
        assert lo[0] <= index <= hi[0], (addr, prefix, index, lo[0], hi[0])
    lo, hi = pf.blocks(np.zeros((3, 16), dtype=np.uint8), np.array([8, 0, 0]), np.array([4, 6, 0]))
    assert (lo.tolist(), hi.tolist()) == ([0, pf.V6, 0], [255, pf.BLOCKS - 1, pf.BLOCKS - 1])
    assert pf.probe_index(bytes([10, 1, 2, 3]).ljust(16, b"\0"), 4) == 10 << 8 | 1
