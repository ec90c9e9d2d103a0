"""The fixed-depth forms of the match stages (buckets, class lists, exact ports) through the real
XDP program: forced on for small rule sets (normally only large tries turn them on), the ACL and
the classifiers give the reference's first match and count the winning rule, as with the tries.
"""

from __future__ import annotations

import ctypes
import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataplane import abi
from dataplane.acl import acl_rule
from dataplane.matcher import ANY, prefix_of
from dataplane.matcher_layout import FIXED_DEPTH_MIN, LIST_MAX, EntryWords, entry_words, flags
from dataplane.tables import ListLayout

from . import test_marks as marks
from .test_xdp_acl import A4, _tcp, _udp, assert_verdict, configure, expected_for, flows, rule_sets

pytestmark = pytest.mark.root


@pytest.fixture
def fixed_dp(dp):  # noqa: ANN001, ANN201
    """The data plane with every fixed-depth form in use whatever the rule count."""
    dp.acl.fixed_depth_min = dp.classifiers.fixed_depth_min = 1
    try:
        yield dp
    finally:
        dp.acl.fixed_depth_min = dp.classifiers.fixed_depth_min = FIXED_DEPTH_MIN
        dp.acl.replace([])
        dp.classifiers.replace([])


def _flags(dp, table) -> int:  # noqa: ANN001
    t = dp.program.table("match_flags")
    return int(t[t.Key(table.names.table)].value)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(rules=rule_sets(), packets=st.lists(flows(), min_size=1, max_size=10),
       default=st.sampled_from(["allow", "deny"]))
def test_random_rule_sets_agree_with_the_reference(fixed_dp, rules, packets, default):
    configure(fixed_dp, default)
    fixed_dp.acl.replace(rules)
    assert _flags(fixed_dp, fixed_dp.acl) == flags(fixed_dp.acl.current, minimum=1)
    for flow in packets:
        reason, rule_id = expected_for(rules, default, flow)
        assert_verdict(fixed_dp, flow.frame(), reason, rule_id, f"{flow} under default {default}")


def test_an_update_switches_between_buckets_lists_and_tries(fixed_dp):
    configure(fixed_dp, "allow")
    few = [acl_rule(1, 10, "deny", src=f"{A4}/32", dst="10.2.0.0/16", proto=6, dport=(80, 80))]
    fixed_dp.acl.replace(few)
    assert_verdict(fixed_dp, _tcp(80).frame(), abi.Reason.DROP_DENIED, 1)
    # More source prefixes in 10.1/16 and destinations per class than a list holds: the trie.
    many = [*few, *(acl_rule(100 + i, 20, "deny", src=f"10.1.{i}.0/24", dst=f"10.{i}.0.0/16")
                    for i in range(LIST_MAX + 2)),
            *(acl_rule(200 + i, 30 + i, "allow", src="10.1.2.0/24", dst=f"10.{i}.0.0/16")
              for i in range(LIST_MAX + 2))]
    fixed_dp.acl.replace(many)
    for flow in (_tcp(80), _tcp(81), _udp(53)):
        reason, rule_id = expected_for(many, "allow", flow)
        assert_verdict(fixed_dp, flow.frame(), reason, rule_id, str(flow))
    fixed_dp.acl.replace(few)
    assert_verdict(fixed_dp, _tcp(80).frame(), abi.Reason.DROP_DENIED, 1)
    assert_verdict(fixed_dp, _tcp(81).frame(), abi.Reason.PASS_DEFAULT, None)


def test_small_tries_do_not_use_the_fixed_depth_forms(dp):
    dp.acl.replace([acl_rule(1, 10, "deny", src=f"{A4}/32")])
    assert _flags(dp, dp.acl) == 0


@pytest.mark.parametrize("desc,classifiers,packet,mark", marks.FIRST_MATCH,
                         ids=[c[0] for c in marks.FIRST_MATCH])
def test_first_matching_classifier_gives_the_mark(fixed_dp, desc, classifiers, packet, mark):
    fixed_dp.classifiers.replace(classifiers)
    assert _flags(fixed_dp, fixed_dp.classifiers) == flags(fixed_dp.classifiers.current, minimum=1)
    v, moved, _ = marks.classify(fixed_dp, packet)
    assert (v.action, v.meta_mark, v.meta_flags) == (marks.XDP_PASS, mark, marks.F_CLASSIFIED), desc
    assert moved == [c.rule_id for c in classifiers if c.payload == mark]


def test_prefix_lists_are_packed_as_the_program_reads_them(dp):
    leaf_type = dp.program.table("acl_dst_list").Leaf
    layout = ListLayout(leaf_type)
    entries = ((prefix_of(ipaddress.ip_network("fd00:1::5/128")), 7),
               (prefix_of(ipaddress.ip_network("fd00:1::/33")), 8),
               (prefix_of(ipaddress.ip_network("10.1.2.0/23")), 9), (ANY, 3))
    leaf = leaf_type.from_buffer_copy(layout.pack([entries]))
    assert ListLayout.unpack(leaf) == entries
    for e, (prefix, value) in zip(leaf.entries, entries, strict=False):
        assert EntryWords(*(int(getattr(e, f)) for f in EntryWords._fields)) == entry_words(prefix, value)
    assert layout.pack([()]) == bytes(ctypes.sizeof(leaf_type))
