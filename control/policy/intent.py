"""What one interface's data plane must hold for a desired state (pure translation).

The policy models speak the operator's language (protocol names, port ranges, chains with
legs); the data plane speaks MatchRules, TunnelEntries and a RuntimeConfig. This module is the
one place that translates, so the reconciler only compares and writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from control.policy.models import AclRule, DesiredState, Leg, Match, Policy, ServiceChain
from dataplane.acl import acl_rule, classifier
from dataplane.map_config import RuntimeConfig, TunnelEntry
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
    settings = policy.settings.model_dump(exclude={"established_timeouts"})
    timeouts = policy.settings.established_timeouts
    return RuntimeConfig(**settings, ct_tcp_s=timeouts.tcp, ct_tcp_closing_s=timeouts.tcp_closing,
                         ct_udp_s=timeouts.udp, ct_icmp_s=timeouts.icmp)


PRUNE_SLACK = 1024  # rules whose translations may outlive them in the cache, besides a quarter


class AclTranslations:
    """AclRule -> MatchRule, each rule translated once for as long as it stays in the policy.

    Rules are frozen models, so a rule object always means the same MatchRule. They are looked
    up by object identity (id(), which the table keeps valid by holding the rule): hashing a
    model hashes all its fields in Python, which for 10,000 rules costs more than a whole
    one-rule update. An edit keeps the instances of the rules it does not touch, so it
    translates only its new rules, and the compiler, which also matches rules by identity
    (dataplane.matcher_incremental), gets back the very MatchRules it compiled before.
    """

    def __init__(self) -> None:
        self._rules: dict[int, AclRule] = {}
        self._match: dict[int, MatchRule] = {}

    def __call__(self, rules: Sequence[AclRule]) -> tuple[MatchRule, ...]:
        ids = list(map(id, rules))
        # An add appends: translate the new rules at the end, then look all up in one C pass.
        # Rules new elsewhere (a whole policy) make the lookup fail, and all are checked.
        index = len(rules) - 1
        while index >= 0 and ids[index] not in self._match:
            self._add(ids[index], rules[index])
            index -= 1
        try:
            return tuple(map(self._match.__getitem__, ids))
        except KeyError:
            pass
        for key, rule in zip(ids, rules, strict=True):
            if key not in self._match:
                self._add(key, rule)
        return tuple(map(self._match.__getitem__, ids))

    def _add(self, key: int, rule: AclRule) -> None:
        self._rules[key] = rule
        self._match[key] = acl_match_rule(rule)

    def keep_only(self, rules: Sequence[AclRule]) -> None:
        """Forgets the rules not in `rules` (after a state is applied: the old one is gone), once
        they are more than a quarter of it: pruning walks every rule, a one-rule update need not."""
        if len(self._match) - len(rules) <= len(rules) // 4 + PRUNE_SLACK:
            return
        for key in self._match.keys() - set(map(id, rules)):
            del self._match[key], self._rules[key]


def interface_intent(state: DesiredState, ifname: str,
                     translate: Callable[[Sequence[AclRule]], tuple[MatchRule, ...]] | None = None,
                     ) -> InterfaceIntent:
    """`translate` turns the ACL into MatchRules (an AclTranslations, to reuse earlier work)."""
    policy = state.policy
    classifiers, legs = leg_classifiers(policy.chains, ifname)
    return InterfaceIntent(
        config=runtime_config(policy),
        tunnels=tuple(TunnelEntry(vni=t.vni, vxlan=t.vxlan, geneve=t.geneve) for t in policy.tunnels),
        acl=translate(policy.acl) if translate is not None else tuple(map(acl_match_rule, policy.acl)),
        classifiers=tuple(classifiers),
        legs=legs,
    )
