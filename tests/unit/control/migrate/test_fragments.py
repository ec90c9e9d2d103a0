"""The import's `fragments` setting (control/migrate/fragments.py): when netfilter judges whole
datagrams, which setting follows, which denies netfilter then keeps, what the report says, and
that the equivalence model (reference.py's fragmented datagrams) notices each piece missing."""

from __future__ import annotations

import ipaddress
import json
import random

import pytest

from control.migrate import fragments, iptables, nft, output, report, translate
from control.migrate.ir import Chain, Ruleset
from control.policy.models import Policy

from .reference import Packet
from .test_equivalence_model import _host, check

STATELESS = """*filter
:INPUT ACCEPT [0:0]
-A INPUT -p udp -m udp --dport 53 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p udp -j DROP
COMMIT
"""
# conntrack on for IPv4 by a rule allow_established does not take (it would keep the denies of
# TCP and UDP in netfilter for reasons of its own)
STATEFUL = STATELESS.replace("-A INPUT -p udp -m udp", "-A INPUT -m conntrack --ctstate INVALID -j DROP\n"
                                                       "-A INPUT -p udp -m udp", 1)
RAW_ONLY = "*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -s 192.0.2.0/24 -j DROP\nCOMMIT\n"


def ruleset(v4: str | None = None, v6: str | None = None) -> Ruleset:
    rs = Ruleset()
    if v4 is not None:
        iptables.parse(v4, 4, rs)
    if v6 is not None:
        iptables.parse(v6, 6, rs)
    return rs


def plan_of(v4: str | None = None, v6: str | None = None, forwarding: bool = False) -> translate.Plan:
    return translate.translate(ruleset(v4, v6), _host(forwarding))


# --- when netfilter reassembles ----------------------------------------------------------------

@pytest.mark.parametrize("line,why", [
    ("-A INPUT -m conntrack --ctstate ESTABLISHED -j ACCEPT", "-m conntrack"),
    ("-A INPUT -m state --state RELATED -j ACCEPT", "-m state"),
    ("-A INPUT -m connmark --mark 1 -j ACCEPT", "-m connmark"),
    ("-A INPUT -p tcp -m socket -j ACCEPT", "-m socket"),
    ("-A INPUT -j CT --notrack", "-j CT"),
])
def test_a_rule_that_needs_conntrack_makes_its_family_reassemble(line: str, why: str) -> None:
    text = f"*filter\n:INPUT ACCEPT [0:0]\n{line}\nCOMMIT\n"
    assert fragments.reassembling(ruleset(v4=text)) == {4: f"rule 1: {why}"}
    assert fragments.reassembling(ruleset(v6=text)) == {6: f"rule 1: {why}"}


def test_a_nat_table_makes_its_family_reassemble_and_plain_rules_do_not() -> None:
    nat = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o eth1 -j MASQUERADE\nCOMMIT\n"
    assert fragments.reassembling(ruleset(v4=nat, v6=STATELESS)) == {4: "iptables has a nat table"}
    assert fragments.reassembling(ruleset(v4=STATELESS, v6=STATELESS)) == {}
    # a comment that names conntrack is no conntrack rule
    commented = STATELESS.replace("--dport 53", '--dport 53 -m comment --comment "-m conntrack"')
    assert fragments.reassembling(ruleset(v4=commented)) == {}


def _nft(*items: dict) -> Ruleset:
    return nft.parse(json.dumps({"nftables": [{"table": {"family": "inet", "name": "fw"}}, *items]}))


def test_nft_ct_expressions_and_nat_chains_make_reassembly() -> None:
    chain = {"chain": {"family": "inet", "table": "fw", "name": "in", "type": "filter", "hook": "input",
                       "prio": 0, "policy": "accept"}}
    ct_state = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established"]}}
    ct_rule = {"rule": {"family": "inet", "table": "fw", "chain": "in", "handle": 3,
                        "expr": [ct_state, {"accept": None}]}}
    assert fragments.reassembling(_nft(chain, ct_rule)) == {4: "rule 1: ct", 6: "rule 1: ct"}
    nat = {"chain": {"family": "inet", "table": "fw", "name": "post", "type": "nat", "hook": "postrouting",
                     "prio": 100, "policy": "accept"}}
    assert set(fragments.reassembling(_nft(chain, nat))) == {4, 6}
    plain = {"rule": {"family": "inet", "table": "fw", "chain": "in", "handle": 4, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}},
        {"accept": None}]}}
    assert fragments.reassembling(_nft(chain, plain)) == {}


@pytest.mark.parametrize("hook,priority,family,defrag,whole", [
    ("input", 0, 4, False, True),          # ip_local_deliver reassembles before LOCAL_IN
    ("input", 0, 6, False, False),         # IPv6 reassembles after its INPUT hook
    ("prerouting", -300, 4, False, False),
    ("forward", 0, 4, False, False),
    ("prerouting", -300, 6, True, True),   # raw comes after conntrack's defragmentation (-400)
    ("forward", 0, 6, True, True),
    ("prerouting", -450, 6, True, False),  # an nft chain before it
    ("ingress", 0, 4, True, False),        # netdev ingress: before any of it
])
def test_which_chains_see_whole_datagrams(hook: str, priority: int, family: int, defrag: bool,
                                          whole: bool) -> None:
    chain = Chain("nft", "inet fw", "c", (4, 6), hook=hook, priority=priority)
    assert fragments.sees_whole(chain, family, {family: "ct"} if defrag else {}) is whole


# --- the setting and the denies netfilter keeps -------------------------------------------------

def test_conntrack_chooses_first_and_says_why() -> None:
    plan = plan_of(v4=STATEFUL)
    assert plan.fragments == "first"
    assert any("fragments: first" in n and "conntrack reassembles them first (rule 1: -m conntrack)" in n
               for n in plan.notes)
    assert output.to_policy(plan).settings.fragments == "first"


def test_a_stateless_ipv4_host_firewall_chooses_first_too() -> None:
    """IPv4 datagrams for this host are reassembled before INPUT even without conntrack: netfilter
    accepts a fragmented DNS answer by its port, which fragments: judge would lose at XDP."""
    plan = plan_of(v4=STATELESS)
    assert plan.fragments == "first"
    assert any("before INPUT" in n for n in plan.notes)


def test_rules_that_judge_fragments_one_by_one_leave_judge() -> None:
    for plan in (plan_of(v6=STATELESS), plan_of(v4=RAW_ONLY)):
        assert plan.fragments == "judge"
        assert any(n.startswith("fragments: judge") for n in plan.notes)
        assert output.to_policy(plan).settings.fragments == "judge"


def test_under_first_a_portless_deny_of_a_chain_that_judges_fragments_stays_in_netfilter() -> None:
    plan = plan_of(v4=STATEFUL, v6=STATELESS)
    assert plan.fragments == "first"
    by_origin = {(f.rule.origin, f.rule.position): f for f in plan.fates}
    v6_deny = by_origin[("ip6tables", 3)]
    assert str(v6_deny.status) == "mirrored" and not v6_deny.removable
    assert "judges IPv6 fragments one by one" in v6_deny.reason
    v4_deny = by_origin[("iptables", 4)]  # after reassembly: moves as before
    assert str(v4_deny.status) == "moved" and v4_deny.removable


def test_a_ported_deny_of_such_a_chain_still_moves() -> None:
    ported = STATELESS.replace("-A INPUT -p udp -j DROP", "-A INPUT -p udp -m udp --dport 1000:2000 -j DROP")
    plan = plan_of(v4=STATEFUL, v6=ported)
    deny = next(f for f in plan.fates if f.rule.origin == "ip6tables" and f.rule.position == 3)
    assert str(deny.status) == "moved" and deny.removable


def test_the_import_sets_fragments_whatever_the_daemon_had() -> None:
    base = Policy.model_validate({"settings": {"fragments": "first", "vxlan_port": 8472}})
    policy = output.to_policy(plan_of(v6=STATELESS), base)
    assert (policy.settings.fragments, policy.settings.vxlan_port) == ("judge", 8472)


def test_the_report_shows_the_setting() -> None:
    plan = plan_of(v4=STATEFUL)
    assert report.data(plan)["fragments"] == "first"
    assert "fragments first" in report.summary_lines(plan)[1]
    assert "fragments: first" in output.policy_yaml(output.to_policy(plan))


# --- the equivalence model, on fragmented datagrams ---------------------------------------------

MIXED = (STATEFUL, STATELESS)
# a DNS answer to this host over each family, arriving by the attach interface
DNS = tuple(Packet(family, 17, int(ipaddress.ip_address(src)), int(ipaddress.ip_address(dst)), 53, 53,
                   iif="t0")
            for family, src, dst in ((4, "198.18.4.20", "10.0.0.1"), (6, "2001:db8:1::77", "fd00::1")))


@pytest.mark.parametrize("v4,v6", [MIXED, (STATELESS, None), (None, STATELESS), (RAW_ONLY, None)],
                         ids=["conntrack v4, stateless v6", "stateless v4", "stateless v6", "raw only"])
@pytest.mark.parametrize("forwarding", [False, True])
def test_fragmented_datagrams_end_as_netfilter_ends_them(v4: str | None, v6: str | None,
                                                         forwarding: bool) -> None:
    check(ruleset(v4, v6), forwarding=forwarding, rng=random.Random(7), count=200, extra=DNS)


def test_the_model_fails_judge_where_netfilter_reassembles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(translate._Translator, "_fragments", lambda self: "judge")
    with pytest.raises(AssertionError, match="in fragments: original delivers it, imported loses it"):
        check(ruleset(*MIXED), forwarding=False, rng=random.Random(7), count=200, extra=DNS)


def test_the_model_fails_first_without_the_denies_netfilter_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fragments, "matches_later_fragments", lambda region: False)
    with pytest.raises(AssertionError, match="in fragments: original loses it, imported delivers it"):
        check(ruleset(*MIXED), forwarding=False, rng=random.Random(7), count=200, extra=DNS)
