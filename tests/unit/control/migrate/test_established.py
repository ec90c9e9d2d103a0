"""Conntrack ESTABLISHED/RELATED accepts onto allow_established (control/migrate/established.py):
what maps, what netfilter keeps, what stays and why, and that the equivalence model notices
when a piece of the mapping is missing."""

from __future__ import annotations

import json
import random

import pytest

from control.migrate import established, iptables, nft, output, residual, translate
from control.migrate import host as hostmod
from control.migrate import intervals as iv
from control.migrate.capability import CAPABILITIES, Feature
from control.migrate.host import Host
from control.migrate.ir import Ruleset
from control.policy.models import CT_TIMEOUT_MAX, Policy

from .test_equivalence_model import _host, check

HEAD = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
HOST = HEAD + """-A INPUT -s 198.18.4.0/24 -j DROP
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 80 -j DROP
-A INPUT -s 203.0.113.0/24 -j DROP
-A INPUT -p gre -j DROP
COMMIT
"""


def plan_of(text: str, facts: Host | None = None, **options: object) -> translate.Plan:
    return translate.translate(iptables.parse(text, 4), facts or _host(False), translate.Options(**options))


def statuses(plan: translate.Plan) -> list[str]:
    return [str(f.status) for f in plan.fates]


def test_a_host_firewall_maps_onto_allow_established() -> None:
    plan = plan_of(HOST)
    assert statuses(plan) == ["mirrored", "mirrored", "kept", "mirrored", "kept", "mirrored", "mirrored",
                              "blocked"]
    assert plan.allow_established and plan.default_action == "allow"
    ct = plan.fates[1].reason
    assert "allow_established in XDP" in ct and "RELATED (ICMP errors" in ct and "routed out by another" in ct
    # the blocklist before it: a recorded flow's reply skips XDP's deny, so netfilter keeps it
    assert "allow_established passes" in plan.fates[0].reason
    # the denies after it: in XDP (all of it, or but for what only netfilter can tell), and kept
    assert "allow_established passes" in plan.fates[5].reason
    assert "may accept first and only netfilter can tell" in plan.fates[6].reason
    assert "blocked by rule 2: it may accept all of these packets" in plan.fates[7].reason
    acl = output.to_policy(plan).acl
    # sources routed out elsewhere go on to netfilter at the rule's place
    left = [r for r in acl if "left to netfilter" in (r.description or "")]
    assert [str(r.match.src) for r in left] == ["192.0.2.0/25"]
    # the chain's policy: TCP and UDP by port halves (a later fragment is left to reassembly), echo replies
    policy = [r.match for r in acl if "policy" in (r.description or "")]
    assert {(m.protocol, m.dport.low if m.dport else None, m.icmp_type) for m in policy} == {
        ("tcp", 0, None), ("tcp", 0x8000, None), ("udp", 0, None), ("udp", 0x8000, None), ("icmp", None, 0)}


def test_the_policy_says_allow_established_and_timeouts_that_outlast_netfilters() -> None:
    facts = _host(False)
    facts.conntrack_timeouts = {"tcp_timeout_established": 7200, "udp_timeout_stream": 180}
    policy = output.to_policy(plan_of(HOST, facts))
    t = policy.settings.established_timeouts
    assert policy.settings.allow_established
    assert (t.tcp, t.tcp_closing, t.udp, t.icmp) == (7201, 121, 181, 31)
    # an operator's longer timeouts stay; a rule set without the rule turns it off, whatever was on
    base = Policy.model_validate({"settings": {"allow_established": True,
                                               "established_timeouts": {"udp": 900}}})
    assert output.to_policy(plan_of(HOST, facts), base).settings.established_timeouts.udp == 900
    none = plan_of(HEAD + "-A INPUT -p tcp -m tcp --dport 80 -j DROP\nCOMMIT\n")
    assert not output.to_policy(none, base).settings.allow_established


@pytest.mark.parametrize("rule,why", [
    ("-m conntrack --ctstate NEW,ESTABLISHED -j ACCEPT", "conntrack state established,new"),
    ("-m conntrack --ctstate ESTABLISHED -j DROP", "conntrack state established"),
    ("-m conntrack --ctstate ESTABLISHED -m length --length 0:60 -j ACCEPT", "-m length"),
    ("-m conntrack --ctstate ESTABLISHED -j LOG", "conntrack state established"),
])
def test_what_it_cannot_say_stays_and_blocks(rule: str, why: str) -> None:
    plan = plan_of(HEAD + f"-A INPUT {rule}\n-A INPUT -p tcp -m tcp --dport 80 -j DROP\nCOMMIT\n")
    assert statuses(plan)[0] == "kept" and why in plan.fates[0].reason
    assert not plan.allow_established


def test_helpers_timeouts_routes_and_switches_keep_it_in_netfilter() -> None:
    helper = HEAD.replace("*filter", "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                          "-A PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp\nCOMMIT\n*filter")
    ct = "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n-A INPUT -p udp -j DROP\nCOMMIT\n"
    plan = plan_of(helper + ct)
    assert "rule 1 gives connections a conntrack helper" in plan.fates[1].reason
    assert str(plan.fates[2].status) == "blocked"
    # ESTABLISHED alone does not care about helpers (their flows' later packets are ESTABLISHED too)
    assert plan_of(helper + ct.replace(",RELATED", "")).allow_established
    timer = helper.replace("--helper ftp", "--timeout short")
    assert "timeouts of their own" in plan_of(timer + ct).fates[1].reason
    facts = _host(False)
    facts.conntrack_timeouts = {"tcp_timeout_established": CT_TIMEOUT_MAX}
    assert "nf_conntrack_tcp_timeout_established" in plan_of(HEAD + ct, facts).fates[0].reason
    alone = Host(("t0",), hostmod.local_from_prefixes(["10.0.0.1"]), routed_back_why={4: "it says so"})
    assert "no address is known to be routed back by the attach interface (it says so)" in \
        plan_of(HEAD + ct, alone).fates[0].reason
    assert "--established off" in plan_of(HEAD + ct, established=False).fates[0].reason
    off = {**CAPABILITIES, Feature.ESTABLISHED: False}
    assert "not yet supported by Tidegate: allow_established" in \
        plan_of(HEAD + ct, capabilities=off).fates[0].reason


def test_a_routers_forward_chain_maps_too() -> None:
    """FORWARD: the rule's residual is cut out of the denies after it as they are written (without
    the chain's domain, which the guard before the FORWARD rules stands for)."""
    text = HEAD.replace(":FORWARD DROP", ":FORWARD DROP") + (
        "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n-A FORWARD -i t1 -o t0 -j ACCEPT\n"
        "-A FORWARD -d 10.200.7.7/32 -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n")
    plan = plan_of(text, _host(True))
    assert plan.allow_established and statuses(plan) == ["mirrored", "kept", "mirrored"]
    denies = [r.match for r in output.to_policy(plan).acl if r.action == "deny"]
    assert {(m.protocol, m.dport.low if m.dport else None) for m in denies} >= {("tcp", 0), ("udp", 0x8000)}


def test_related_alone_leaves_only_icmp_errors_to_netfilter() -> None:
    plan = plan_of(HEAD + "-A INPUT -m conntrack --ctstate RELATED -j ACCEPT\n-A INPUT -p icmp -j DROP\n"
                          "-A INPUT -p udp -j DROP\nCOMMIT\n")
    assert statuses(plan) == ["mirrored", "mirrored", "moved"] and not plan.allow_established
    kinds = {r.match.icmp_type for r in output.to_policy(plan).acl if r.match.protocol == "icmp"}
    assert kinds and not kinds & set(established.ICMP_ERRORS[4])


def test_several_attach_interfaces_record_apart() -> None:
    routed, why = hostmod.read_routed_back(("t0", "t1"))
    assert routed == {4: (), 6: ()} and "2 attach interfaces" in why[4]


def test_routes_say_which_sources_come_back() -> None:
    routes = [{"dst": "default", "gateway": "10.0.0.2", "dev": "t0"}, {"dst": "10.0.0.0/24", "dev": "t0"},
              {"dst": "10.200.0.0/16", "gateway": "10.9.0.2", "dev": "t1"},
              {"dst": "10.200.5.0/24", "dev": "t0"},  # longer prefix: back by t0
              {"dst": "10.7.0.0/16", "dev": "t0", "metric": 5},
              {"dst": "10.7.0.0/16", "dev": "t1", "metric": 9},
              {"dst": "10.5.0.0/16", "nexthops": [{"dev": "t0"}, {"dev": "t1"}]},
              {"dst": "10.6.0.0/16", "nexthops": [{"dev": "t0"}, {"dev": "t0"}]},
              {"type": "blackhole", "dst": "10.8.0.0/16"}, {"dst": "fe80::/64", "dev": "t0"}]
    back = hostmod.routed_via(routes, "t0", 4)

    def has(a: str) -> bool:
        import ipaddress

        return iv.contains(back, iv.span(int(ipaddress.ip_address(a)), int(ipaddress.ip_address(a))))

    assert [has(a) for a in ("198.18.4.1", "10.0.0.9", "10.200.1.1", "10.200.5.1", "10.7.0.1", "10.5.0.1",
                             "10.6.0.1", "10.8.0.1")] == [True, True, False, True, False, False, True, False]
    assert hostmod.routed_via(routes[2:3], "t0", 4) == ()  # no route back by t0: nothing


def test_nft_forms_map_alike() -> None:
    """`ct state established,related` (nft prints a flag list) and `ct state { established, related }`."""
    def doc(right: object) -> str:
        rule = {"family": "inet", "table": "t", "chain": "input", "handle": 4,
                "expr": [{"match": {"op": "in" if isinstance(right, list) else "==",
                                    "left": {"ct": {"key": "state"}}, "right": right}}, {"accept": None}]}
        drop = {"family": "inet", "table": "t", "chain": "input", "handle": 5,
                "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                         {"drop": None}]}
        return json.dumps({"nftables": [
            {"table": {"family": "inet", "name": "t"}},
            {"chain": {"family": "inet", "table": "t", "name": "input", "type": "filter", "hook": "input",
                       "prio": 0, "policy": "accept"}}, {"rule": rule}, {"rule": drop}]})

    for right in (["established", "related"], {"set": ["established", "related"]}):
        plan = translate.translate(nft.parse(doc(right)), _host(False))
        assert statuses(plan) == ["mirrored", "mirrored"] and plan.allow_established, right


def test_kept_rules_keep_what_netfilter_must_judge() -> None:
    ruleset = iptables.parse(HOST, 4)
    plan = translate.translate(ruleset, _host(False))
    kept = residual.iptables_text(ruleset, plan, "iptables")[0]
    for line in HOST.splitlines()[4:-1]:
        assert line in kept  # nothing left netfilter: every deny may meet what XDP passes on


def _broken(monkeypatch: pytest.MonkeyPatch, what: str) -> None:
    if what == "residual":  # forget that RELATED and the rest stay with netfilter
        monkeypatch.setattr(established, "residual", lambda states, region, host: ([], []))
    else:  # forget that a recorded flow's packet skips XDP's denies
        monkeypatch.setattr(established, "tracked", lambda family: [])


@pytest.mark.parametrize("what", ["residual", "bypass"])
def test_the_model_notices_a_missing_piece(monkeypatch: pytest.MonkeyPatch, what: str) -> None:
    """The equivalence model is what judges the mapping: without either piece it must fail."""
    text = HOST.replace("-A INPUT -i lo", "-A INPUT -p udp -m udp --dport 53 -j DROP\n-A INPUT -i lo")
    ruleset = Ruleset()
    iptables.parse(text, 4, ruleset)
    check(ruleset, False, random.Random(3))  # as it is: right
    _broken(monkeypatch, what)
    with pytest.raises(AssertionError, match="original .*, imported"):
        check(ruleset, False, random.Random(3))
