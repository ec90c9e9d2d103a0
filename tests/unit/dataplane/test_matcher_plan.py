"""The write planner, pure Python: applied op by op, every intermediate state of the maps must
judge every packet by the old rules or by the new ones, never by a mix."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.acl import acl_rule
from dataplane.matcher import SLOT_NONE, MatchCapacity, compile_rules, empty, simulate_lookup
from dataplane.matcher_plan import plan

from .rulegen import probes, reference, rules

CAP = MatchCapacity(slots=2048, src=8192, dst=16384, port=32768)


class FakeMaps:
    """The five maps as dicts; ops applied exactly as dataplane.tables executes them."""

    def __init__(self) -> None:
        self.slots: dict = {}
        self.src: dict = {}
        self.dst: dict = {}
        self.port: dict = {}

    def apply(self, op) -> None:  # noqa: ANN001
        verb, _, stage = op.kind.partition("_")
        table = self.slots if stage == "slot" else getattr(self, stage)
        if verb == "put":
            table[op.key] = op.value
        else:
            table.pop(op.key, None)

    def judge(self, probe):  # noqa: ANN001, ANN201
        slot = simulate_lookup(self.src, self.dst, self.port, *probe)
        if slot == SLOT_NONE:
            return None
        assert slot in self.slots, f"stage 3 points at slot {slot}, which holds no rule"
        return self.slots[slot]


def _load(compiled) -> FakeMaps:  # noqa: ANN001
    maps = FakeMaps()
    for op in plan(empty(), compiled).ops:
        maps.apply(op)
    return maps


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(old_rules=rules(max_rules=20), new_rules=rules(max_rules=20),
       packets=st.lists(probes(), min_size=1, max_size=12))
def test_every_intermediate_state_judges_by_old_or_new(old_rules, new_rules, packets):
    old = compile_rules(old_rules, empty(), CAP)
    new = compile_rules(new_rules, old, CAP)
    maps = _load(old)
    p = plan(old, new)
    expected = [(reference(old_rules, *pk), reference(new_rules, *pk)) for pk in packets]
    for index, op in enumerate(p.ops):
        if index == p.grace_index:
            break  # from here on only entries no packet can still reach are removed
        maps.apply(op)
        for pk, (before, after) in zip(packets, expected, strict=True):
            got = maps.judge(pk)
            assert got in (before, after), f"after op {index} ({op.kind}) {pk} judged by {got}"
    for op in p.ops[p.grace_index:] if p.grace_index >= 0 else ():
        maps.apply(op)
    for pk, (_, after) in zip(packets, expected, strict=True):
        assert maps.judge(pk) == after
    assert (maps.src, maps.dst, maps.port, maps.slots) == (dict(new.src), dict(new.dst), dict(new.port),
                                                           dict(new.slots)), "ends exactly at the new state"


def test_removals_come_after_the_grace_point():
    old = compile_rules([acl_rule(1, 1, src="10.0.0.0/8"), acl_rule(2, 2, dst="fd00::/8")], empty(), CAP)
    new = compile_rules([acl_rule(3, 1, src="10.1.0.0/16")], old, CAP)
    p = plan(old, new)
    kinds = [op.kind for op in p.ops]
    assert p.grace_index > 0
    assert all(k.startswith("put") or k == "del_src" for k in kinds[: p.grace_index])
    assert all(k.startswith("del") or k == "free_slot" for k in kinds[p.grace_index:])


def test_stage1_puts_go_longest_first_and_deletes_shortest_first():
    old = compile_rules([acl_rule(i, i, src=f"10.{i}.0.0/16") for i in range(1, 5)]
                        + [acl_rule(9, 9, src="10.0.0.0/8")], empty(), CAP)
    new = compile_rules([acl_rule(i, i, src=f"10.{i}.1.0/24", action="allow") for i in range(1, 5)]
                        + [acl_rule(8, 8, src="0.0.0.0/0")], old, CAP)
    p = plan(old, new)
    puts = [op.key.prefixlen for op in p.ops if op.kind == "put_src"]
    dels = [op.key.prefixlen for op in p.ops if op.kind == "del_src"]
    assert puts == sorted(puts, reverse=True) and dels == sorted(dels)


def test_an_unchanged_policy_plans_nothing_and_a_small_change_plans_little():
    base = [acl_rule(i, i, src=f"10.{i // 256}.{i % 256}.0/24") for i in range(500)]
    old = compile_rules(base, empty(), CAP)
    assert plan(old, compile_rules(base, old, CAP)).empty
    changed = compile_rules([*base[:-1], acl_rule(499, 499, src="10.1.243.0/24", action="allow")], old, CAP)
    p = plan(old, changed)
    assert 0 < len(p.ops) <= 12, [op.kind for op in p.ops]
