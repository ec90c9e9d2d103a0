"""What one interface's data plane must hold for a desired state (pure translation).

The policy models speak the operator's language (protocol names, port ranges, chains with
legs); the data plane speaks rule columns (the ACL's table, dataplane.match.columns),
MatchRules (chain legs), TunnelEntries and a RuntimeConfig. This module is the one place that
translates, so the reconciler only compares and writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from control.policy.acl_table import AclTable
from control.policy.models import DesiredState, Leg, Policy, PortRange, ServiceChain
from control.policy.rule_model import PORTS_ANY
from dataplane.acl import classifier
from dataplane.map_config import RuntimeConfig, TunnelEntry
from dataplane.match.adapter import MatchRule


@dataclass(frozen=True)
class LegRef:
    chain: str
    leg: str  # "forward" or "return_path"


@dataclass(frozen=True)
class InterfaceIntent:
    config: RuntimeConfig
    tunnels: tuple[TunnelEntry, ...]
    acl: AclTable  # the data plane compiles its columns (AclTable.columns)
    classifiers: tuple[MatchRule, ...]
    legs: dict[int, LegRef] = field(default_factory=dict)  # classifier id -> the chain leg it serves


def leg_classifiers(chains: list[ServiceChain], ifname: str) -> tuple[list[MatchRule], dict[int, LegRef]]:
    """Classifiers of the chain legs that take traffic entering on `ifname`.

    Ids are positions in the policy (1-based, over every leg of every chain), so a leg keeps its
    id, and its counters, as long as the chains before it stay.
    """
    rules: list[MatchRule] = []
    legs: dict[int, LegRef] = {}
    cid = 0
    for index, chain in enumerate(chains):
        for name, leg in chain.legs():
            cid += 1
            if ifname in leg.interfaces:
                rules.append(_leg_rule(cid, chain.priority, leg, f"policy.chains[{index}].{name}.match"))
                legs[cid] = LegRef(chain.name, name)
    return rules, legs


def _leg_rule(cid: int, priority: int, leg: Leg, where: str) -> MatchRule:
    m = leg.match
    return classifier(cid, priority, leg.mark, src=m.src, dst=m.dst, proto=m.protocol_number,
                      dport=_ports(m.dport), sport=_ports(m.sport), icmp_type=m.icmp_type,
                      icmp_code=m.icmp_code, syn=m.syn)


def _ports(ports: PortRange | None) -> tuple[int, int] | None:
    """A port range as the classifier takes it: any (absent, or 0-65535) is None."""
    span = None if ports is None else (ports.low, ports.high)
    return None if span == PORTS_ANY else span


def runtime_config(policy: Policy) -> RuntimeConfig:
    settings = policy.settings.model_dump(exclude={"established_timeouts"})
    timeouts = policy.settings.established_timeouts
    return RuntimeConfig(**settings, ct_tcp_s=timeouts.tcp, ct_tcp_closing_s=timeouts.tcp_closing,
                         ct_udp_s=timeouts.udp, ct_icmp_s=timeouts.icmp)


def interface_intent(state: DesiredState, ifname: str) -> InterfaceIntent:
    policy = state.policy
    classifiers, legs = leg_classifiers(policy.chains, ifname)
    return InterfaceIntent(
        config=runtime_config(policy),
        tunnels=tuple(TunnelEntry(vni=t.vni, vxlan=t.vxlan, geneve=t.geneve) for t in policy.tunnels),
        acl=policy.acl,
        classifiers=tuple(classifiers),
        legs=legs,
    )
