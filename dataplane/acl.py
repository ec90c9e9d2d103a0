"""ACL rules and classifiers as the data plane matches them, and their map capacities.

These build `MatchRule`s (dataplane.match.adapter, until the control path hands the classifier
RuleColumns directly) with the payload a rule's record carries: ACL -> (abi.Action, flags),
classifier -> mark. The control plane translates its pydantic policy into these calls; tests use
them directly.
"""

from __future__ import annotations

from functools import cache
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

from dataplane import abi
from dataplane.kernel.build_settings import Capacities
from dataplane.match.adapter import MatchCapacity, MatchRule

Network = IPv4Network | IPv6Network


def _net(value: str | Network | None) -> Network | None:
    if value is None or isinstance(value, IPv4Network | IPv6Network):
        return value
    return ip_network(value)


def acl_rule(rule_id: int, priority: int, action: str = "deny", src: Any = None, dst: Any = None,
             proto: int | None = None, dport: tuple[int, int] | None = None, log: bool = False,
             icmp_type: int | None = None, icmp_code: int | None = None, syn: bool = False,
             sport: tuple[int, int] | None = None) -> MatchRule:
    """One ACL rule; action is "allow", "deny" or "reject"."""
    return MatchRule(rule_id=rule_id, priority=priority, src=_net(src), dst=_net(dst), proto=proto,
                     dport=dport, payload=_acl_payload(action, log), sport=sport, icmp_type=icmp_type,
                     icmp_code=icmp_code, syn=syn)


@cache
def _acl_payload(action: str, log: bool) -> tuple[int, int]:
    """(action, flags): the same few values for every rule, looked up once."""
    return (abi.Action[action.upper()], abi.define("TG_RULE_F_LOG") if log else 0)


def classifier(classifier_id: int, priority: int, mark: int, src: Any = None, dst: Any = None,
               proto: int | None = None, dport: tuple[int, int] | None = None,
               icmp_type: int | None = None, icmp_code: int | None = None, syn: bool = False,
               sport: tuple[int, int] | None = None) -> MatchRule:
    if not 0 < mark <= 0xFFFFFFFF:
        raise ValueError(f"classifier {classifier_id}: mark must be 1..2^32-1 (0 means unmarked), got {mark}")
    return MatchRule(rule_id=classifier_id, priority=priority, src=_net(src), dst=_net(dst), proto=proto,
                     dport=dport, payload=mark, sport=sport, icmp_type=icmp_type, icmp_code=icmp_code,
                     syn=syn)


def acl_capacity(caps: Capacities) -> MatchCapacity:
    return MatchCapacity(rules=caps.acl_rules, buckets=caps.acl_buckets, buckets4=caps.acl_buckets4)


def cls_capacity(caps: Capacities) -> MatchCapacity:
    return MatchCapacity(rules=caps.cls_rules, buckets=caps.cls_buckets, buckets4=caps.cls_buckets4)
