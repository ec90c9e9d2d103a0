"""What one interface's data plane must hold for a desired state (pure translation).

The policy models speak the operator's language (protocol names, port ranges, chains with
legs); the data plane speaks MatchRules, TunnelEntries and a RuntimeConfig. This module is the
one place that translates, so the reconciler only compares and writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from control.models import AclRule, DesiredState, Leg, Match, Policy, ServiceChain
from dataplane.acl import acl_rule, classifier
from dataplane.config import RuntimeConfig, TunnelEntry
from dataplane.matcher import MatchRule


@dataclass(frozen=True)
class LegRef:
    chain: str
    leg: str  # "forward" or "return_path"


@dataclass(frozen=True)
class InterfaceIntent:
    config: RuntimeConfig
    tunnels: tuple[TunnelEntry, ...]
    acl: tuple[MatchRule, ...]
    classifiers: tuple[MatchRule, ...]
    legs: dict[int, LegRef] = field(default_factory=dict)  # classifier id -> the chain leg it serves


def _dport(match: Match) -> tuple[int, int] | None:
    return None if match.dport is None else (match.dport.low, match.dport.high)


def acl_match_rule(rule: AclRule) -> MatchRule:
    m = rule.match
    return acl_rule(rule.id, rule.priority, rule.action, src=m.src, dst=m.dst, proto=m.protocol_number,
                    dport=_dport(m), log=rule.log)


def leg_classifiers(chains: list[ServiceChain], ifname: str) -> tuple[list[MatchRule], dict[int, LegRef]]:
    """Classifiers of the chain legs that take traffic entering on `ifname`.

    Ids are positions in the policy (1-based, over every leg of every chain), so a leg keeps its
    id, and its counters, as long as the chains before it stay.
    """
    rules: list[MatchRule] = []
    legs: dict[int, LegRef] = {}
    cid = 0
    for chain in chains:
        for name, leg in chain.legs():
            cid += 1
            if ifname in leg.interfaces:
                rules.append(_leg_rule(cid, chain.priority, leg))
                legs[cid] = LegRef(chain.name, name)
    return rules, legs


def _leg_rule(cid: int, priority: int, leg: Leg) -> MatchRule:
    m = leg.match
    return classifier(cid, priority, leg.mark, src=m.src, dst=m.dst, proto=m.protocol_number, dport=_dport(m))


def runtime_config(policy: Policy) -> RuntimeConfig:
    return RuntimeConfig(**policy.settings.model_dump())


def interface_intent(state: DesiredState, ifname: str) -> InterfaceIntent:
    policy = state.policy
    classifiers, legs = leg_classifiers(policy.chains, ifname)
    return InterfaceIntent(
        config=runtime_config(policy),
        tunnels=tuple(TunnelEntry(vni=t.vni, vxlan=t.vxlan, geneve=t.geneve) for t in policy.tunnels),
        acl=tuple(acl_match_rule(r) for r in policy.acl),
        classifiers=tuple(classifiers),
        legs=legs,
    )
