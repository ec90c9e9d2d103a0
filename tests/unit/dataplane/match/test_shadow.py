"""dataplane.match.shadow: rules an earlier rule covers whole, against a pairwise reference; and
the compiler placing a set that fits only once they are left out of the buckets, through edits
that may bring a shadowed rule back."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane.acl import acl_rule
from dataplane.match import compiler as cp
from dataplane.match import planner
from dataplane.match.adapter import to_columns
from dataplane.match.columns import RuleColumns
from dataplane.match.shadow import shadowed

from ..reference_matcher import Packet
from ..rulegen import reference
from .model import Maps, maps_of

SLOW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CAP = cp.Capacity(4096, 8192, 8192)


def covers(cols: RuleColumns, e: int, r: int) -> bool:
    """Row e covers row r as shadow.py promises to find it, written out pair by pair."""
    same = (cols.family[e] == cols.family[r] and bytes(cols.src_addr[e]) == bytes(cols.src_addr[r])
            and cols.src_len[e] == cols.src_len[r] and bytes(cols.dst_addr[e]) == bytes(cols.dst_addr[r])
            and cols.dst_len[e] == cols.dst_len[r] and cols.proto_any[e] == cols.proto_any[r]
            and cols.proto[e] == cols.proto[r])
    ports = (cols.sport_lo[e] <= cols.sport_lo[r] and cols.sport_hi[e] >= cols.sport_hi[r]
             and cols.dport_lo[e] <= cols.dport_lo[r] and cols.dport_hi[e] >= cols.dport_hi[r])
    def asks_alike(f: str) -> bool:
        has = getattr(cols, f"has_{f}")
        return bool(not has[e] or (has[r] and getattr(cols, f)[e] == getattr(cols, f)[r]))

    l4 = asks_alike("icmp_type") and asks_alike("icmp_code") and (not cols.syn[e] or cols.syn[r])
    return bool(same and ports and l4)


@st.composite
def crowded(draw: st.DrawFn) -> list:
    """Rules over few addresses, protocols and port ranges, so that many cover one another."""
    n = draw(st.integers(0, 40))
    out = []
    for rid in range(1, n + 1):
        proto = draw(st.sampled_from([None, 6, 17, 1]))
        kw: dict = {"src": draw(st.sampled_from([None, "10.0.0.0/8", "10.1.0.0/16"])),
                    "dst": draw(st.sampled_from([None, "192.0.2.0/24"])), "proto": proto}
        if proto in (6, 17):
            lo = draw(st.sampled_from([0, 80, 1000]))
            kw["dport"] = (lo, lo + draw(st.sampled_from([0, 20, 5000])))
            if proto == 6 and draw(st.booleans()):
                kw["syn"] = True
        if proto == 1 and draw(st.booleans()):
            kw["icmp_type"] = draw(st.sampled_from([0, 8]))
            if draw(st.booleans()):
                kw["icmp_code"] = 0
        out.append(acl_rule(rid, draw(st.integers(1, 5)), draw(st.sampled_from(["allow", "deny"])), **kw))
    return out


@SLOW
@given(crowded())
def test_shadowed_rows_are_those_an_earlier_row_covers(rule_set):
    cols = to_columns(rule_set)
    expected = [any(covers(cols, e, r) for e in range(r)) for r in range(len(cols))]
    assert shadowed(cols).tolist() == expected


def _packet(dport: int, src: str = "10.1.2.3", proto: int = 6) -> Packet:
    return Packet(4, bytes(map(int, src.split("."))) + bytes(12), bytes([192, 0, 2, 7]) + bytes(12), proto,
                  40000, dport)


def _winner(maps: Maps, p: Packet) -> int | None:
    slot = maps.lookup(p)
    return None if slot is None else int(np.frombuffer(maps.rules[slot], dtype=cp.RULE)["rule_id"][0])


def _rid(rule) -> int | None:  # noqa: ANN001
    return None if rule is None else rule.rule_id


def test_a_set_that_fits_only_without_its_shadowed_rules_is_compiled_and_edited_as_the_reference():
    # 600 rules of one source, protocol and destination whose ranges all share their first bits:
    # past 32 subtables of 16 candidates, but rule i (i >= 2) lies inside rule i - 1's range.
    crowd = [acl_rule(i, 10, "deny" if i % 2 else "allow", src="10.0.0.0/8", proto=6, dport=(1, 1700 - i))
             for i in range(1, 601)]
    others = [acl_rule(1000, 20, "allow", proto=17), acl_rule(1001, 5, "deny", src="10.9.0.0/16")]
    rule_set = crowd + others
    compiled = planner.compile_rules(to_columns(rule_set), cp.Live(), CAP)
    maps = Maps()
    maps.write(compiled)
    live = compiled.live()
    assert maps_of(live).buckets == maps.buckets
    placed = int(live.buckets["count"].sum())
    assert placed == 3 and len(live) == len(rule_set), "shadowed rules keep a record, not a bucket"
    probes = [_packet(port) for port in (0, 1, 500, 1098, 1099, 1100, 1698, 1699, 1700)]
    probes += [_packet(53, proto=17), _packet(80, src="10.9.1.1")]

    def agree(rules: list, maps: Maps) -> None:
        for p in probes:
            assert _winner(maps, p) == _rid(reference(rules, p)), p

    agree(rule_set, maps)
    # Deleting the rule that shadows the rest brings rule 2 in: a full compile, not an edit.
    deleted = planner.delete_rules([1], live, CAP)
    assert deleted.edit is None and deleted.bank is not None
    maps.write(deleted)
    live, rule_set = deleted.live(), rule_set[1:]
    agree(rule_set, maps)
    # Adding a rule is still an edit; deleting one with shadowed rules held compiles in full.
    added = planner.add_rules(to_columns([acl_rule(2000, 1, "deny", src="10.1.0.0/16", proto=6)]), live, CAP)
    assert added.edit is not None
    maps.write(added)
    live, rule_set = added.live(), [*rule_set, acl_rule(2000, 1, "deny", src="10.1.0.0/16", proto=6)]
    agree(rule_set, maps)
    deleted = planner.delete_rules([1001], live, CAP)
    assert deleted.edit is None
    maps.write(deleted)
    agree([r for r in rule_set if r.rule_id != 1001], maps)
