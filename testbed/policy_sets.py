"""Two large ACL sets, A and B, that judge the probe flows alike while any mix of them does not.

The ACL is matched in three stages (xdp/include/match.h): the source address picks a class
(longest prefix), the class and destination a ruleset, the ruleset and port a rule. Both sets
default to deny and hold FILLER other rules (random /24 sources in 11.0.0.0/8, different in A
and B, so a swap rewrites most of every stage). For probe i:

    allowed flow 12.i.1.7 -> 10.61.0.1 udp 5000
      A: 1000+i  allow src 12.i.1.0/24 dst 10.61.0.1/32 udp 5000   (priority 100)
         1100+i  deny  src 12.i.0.0/16                             (priority 200, guard)
      B: 2000+i  allow src 12.i.0.0/16 dst 10.61.0.1/32 udp 5000   (priority 100)
    denied flow 13.i.1.7 -> 10.61.0.1 udp 5001
      A: 1200+i  deny  src 13.i.1.0/24 dst 10.61.0.1/32 udp 5001   (priority 100)
         1300+i  allow src 13.i.0.0/16                             (priority 200, guard)
      B: 2200+i  deny  src 13.i.0.0/16 dst 10.61.0.1/32 udp 5001   (priority 100)

The probes' sources sort after every filler source (12.x, 13.x > 11.x), so in a batch of
writes ordered by key their entries come after the 10,000 filler ones: were the order wrong,
the window in which a probe sees one set's entry with the other's would last the whole filler
batch, long enough for the traffic to hit it (tests/integration/testbed/test_reliability.py says which
wrong orders were tried, and what the traffic saw).

A alone and B alone both allow the first flow (PASS_ALLOWED) and deny the second
(DROP_DENIED). A packet judged by a mix gets the other verdict or none:

  * the /16 stage-1 entry of one set with the /24 entry of the other missing or present (a
    stage-1 write order other than "puts longest first, deletes shortest first"): A's /16 class
    holds only the guard, so the allowed flow is denied (DROP_DENIED, guard counter) and the
    denied flow allowed (it arrives, PASS_ALLOWED);
  * a class of one set with the stage-2 / stage-3 entries of the other (written late or removed
    early): no entry, the default action, DROP_DEFAULT (and an allowed packet lost).

So with traffic through any number of swaps: every allowed packet arrives, no denied one does,
DROP_DEFAULT stays 0 and PASS_ALLOWED / DROP_DENIED move by exactly the allowed / denied
packets sent. Anything else is a mixed judgement.
"""

from __future__ import annotations

import random
from typing import Any

from control.policy.models import AclRule, Policy, Settings
from testbed.flows import Flow

DST = "10.61.0.1"
ALLOW_PORT, DENY_PORT, EXTRA_PORT = 5000, 5001, 5002
FILLER = 10_000
ALLOW_A, GUARD_A, DENY_A, GUARD_DENY_A = 1000, 1100, 1200, 1300
ALLOW_B, DENY_B = 2000, 2200
FILLER_A, FILLER_B = 100_000, 200_000
MAX_PROBES = 30


def _allowed_net(i: int, plen: int) -> str:
    return f"12.{i}.{1 if plen == 24 else 0}.0/{plen}"


def _denied_net(i: int, plen: int) -> str:
    return f"13.{i}.{1 if plen == 24 else 0}.0/{plen}"


def probe_flows(probes: int) -> list[Flow]:
    """`probes` allowed and `probes` denied flows, interleaved."""
    _check(probes)
    flows = []
    for i in range(probes):
        flows.append(Flow(f"allow{i}", f"12.{i}.1.7", DST, ALLOW_PORT, expect=True))
        flows.append(Flow(f"deny{i}", f"13.{i}.1.7", DST, DENY_PORT, expect=False))
    return flows


def _check(probes: int) -> None:
    if not 1 <= probes <= MAX_PROBES:
        raise ValueError(f"probes: 1..{MAX_PROBES}, got {probes}")


def _rule(rule_id: int, action: str, priority: int, **match: Any) -> AclRule:
    return AclRule.model_validate({"id": rule_id, "action": action, "priority": priority, "match": match})


def probe_rules(side: str, probes: int) -> list[AclRule]:
    _check(probes)
    rules = []
    for i in range(probes):
        if side == "A":
            rules += [
                _rule(ALLOW_A + i, "allow", 100, src=_allowed_net(i, 24), dst=f"{DST}/32", protocol="udp",
                      dport=ALLOW_PORT),
                _rule(GUARD_A + i, "deny", 200, src=_allowed_net(i, 16)),
                _rule(DENY_A + i, "deny", 100, src=_denied_net(i, 24), dst=f"{DST}/32", protocol="udp",
                      dport=DENY_PORT),
                _rule(GUARD_DENY_A + i, "allow", 200, src=_denied_net(i, 16)),
            ]
        elif side == "B":
            rules += [
                _rule(ALLOW_B + i, "allow", 100, src=_allowed_net(i, 16), dst=f"{DST}/32", protocol="udp",
                      dport=ALLOW_PORT),
                _rule(DENY_B + i, "deny", 100, src=_denied_net(i, 16), dst=f"{DST}/32", protocol="udp",
                      dport=DENY_PORT),
            ]
        else:
            raise ValueError(f"side: A or B, got {side!r}")
    return rules


def filler_rules(first_id: int, count: int, seed: int) -> list[AclRule]:
    """`count` rules that no probe matches: random /24 sources in 11.0.0.0/8, random
    destinations in 192.168.0.0/16, TCP ports; allow and deny alternating."""
    rng = random.Random(seed)
    rules = []
    for n in range(count):
        src = f"11.{rng.randrange(256)}.{rng.randrange(256)}.0/24"
        dst = f"192.168.{rng.randrange(256)}.0/24"
        rules.append(_rule(first_id + n, "allow" if n % 2 else "deny", 500 + n % 1000, src=src, dst=dst,
                           protocol="tcp", dport=rng.randrange(1, 65536)))
    return rules


def swap_policy(side: str, probes: int, filler: int = FILLER, seed: int | None = None,
                extra: list[AclRule] | None = None) -> Policy:
    """Set A or B with `filler` other rules (drawn from `seed`, by default one per side)."""
    seed = (1 if side == "A" else 2) if seed is None else seed
    first = FILLER_A if side == "A" else FILLER_B
    rules = probe_rules(side, probes) + filler_rules(first, filler, seed) + list(extra or ())
    return Policy.model_validate({"settings": Settings(default_action="deny"), "acl": rules})


def extra_flow(name: str = "extra", second: int = 70) -> Flow:
    """A flow no probe rule matches (14.`second`.1.7 -> DST udp 5002): allowed only by a rule
    that `extra_rule` adds, denied by default otherwise."""
    return Flow(name, f"14.{second}.1.7", DST, EXTRA_PORT, expect=True)


def extra_rule(rule_id: int, second: int = 70, action: str = "allow") -> AclRule:
    return _rule(rule_id, action, 100, src=f"14.{second}.1.0/24", protocol="udp", dport=EXTRA_PORT)
