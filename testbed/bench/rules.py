"""Random, realistic ACL rule sets for the benchmarks, and the same rules for every engine.

One `RuleSpec` list is rendered for each engine measured side by side: Tidegate (`MatchRule`s
for the data plane, `AclRule` messages for the daemon), iptables (`iptables-restore` input, raw
PREROUTING), nftables (`nft -f` input: a chain of rules, or one concatenated interval set) and
xdp-filter (which matches single addresses only, so it gets each rule's source address).

The shape is that of a real edge ACL: mostly narrow sources (/24../32) spread over the unicast
IPv4 space, a few broad ones (/8../16), TCP/UDP with a well-known port or a port range, some
ICMP and any-protocol rules, allow and deny mixed. Every generated rule is checked not to match
the benchmark's probe flow, so the probe is judged by its own rule however many others come
first. (The ClassBench sets, testbed/classbench.py, are the benchmark for wildcard-heavy
policies.)
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from dataplane import protocols
from dataplane.acl import acl_rule
from dataplane.match.adapter import MatchRule

SEED = 20240605
TCP, UDP, ICMP = (protocols.NUMBERS[name] for name in ("tcp", "udp", "icmp"))
# (prefix length, weight) of sources and destinations; None = any
SRC_LENGTHS = ((8, 2), (12, 3), (16, 40), (20, 60), (24, 300), (28, 100), (32, 495))
DST_LENGTHS = ((None, 60), (8, 10), (16, 80), (24, 350), (28, 100), (32, 400))
PROTOS = ((TCP, 55), (UDP, 30), (ICMP, 5), (None, 10))
WELL_KNOWN = (
    22,
    25,
    53,
    80,
    110,
    123,
    143,
    161,
    389,
    443,
    445,
    993,
    995,
    1433,
    3306,
    3389,
    5432,
    6379,
    8080,
    8443,
    9200,
    11211,
    27017,
)
FIRST_RULE_ID = 1000
PROBE_RULE_ID = 1
LAST_PRIORITY = 65000  # the probe's rule: behind every generated rule (those get 100..64999)

# The probe flow lives in the benchmarking range (RFC 2544, 198.18.0.0/15).
PROBE_SRC = "198.18.7.7"
PROBE_DST = "198.19.1.1"
PROBE_SPORT = 40000
PROBE_DPORT = 9  # discard


@dataclass(frozen=True)
class Flow:
    src: str
    dst: str
    proto: int
    dport: int

    def tuple(self) -> tuple[IPv4Address, IPv4Address, int, int]:
        return IPv4Address(self.src), IPv4Address(self.dst), self.proto, self.dport


PROBE = Flow(PROBE_SRC, PROBE_DST, UDP, PROBE_DPORT)


@dataclass(frozen=True)
class RuleSpec:
    """An engine-neutral ACL rule (IPv4)."""

    rule_id: int
    priority: int
    action: str  # "allow" | "deny"
    src: IPv4Network | None
    dst: IPv4Network | None
    proto: int | None
    dport: tuple[int, int] | None

    def match_rule(self) -> MatchRule:
        return acl_rule(
            self.rule_id,
            self.priority,
            self.action,
            src=self.src,
            dst=self.dst,
            proto=self.proto,
            dport=self.dport,
        )

    def matches(self, flow: Flow) -> bool:
        return self.match_rule().matches(*flow.tuple())


def _weighted(rng: random.Random, table: Sequence[tuple[object, int]]) -> object:
    values, weights = zip(*table, strict=True)
    return rng.choices(values, weights)[0]


def _random_prefix(rng: random.Random, plen: int) -> IPv4Network:
    while True:
        addr = rng.randrange(1 << 24, 224 << 24)  # 1.0.0.0 .. 223.255.255.255: unicast
        net = IPv4Network((addr >> (32 - plen) << (32 - plen), plen))
        if not net.is_private or plen < 16:
            return net


def _dport(rng: random.Random) -> tuple[int, int] | None:
    pick = rng.random()
    if pick < 0.55:
        port = rng.choice(WELL_KNOWN)
        return (port, port)
    if pick < 0.80:
        lo = rng.randrange(1024, 60000)
        return (lo, lo + rng.randrange(1, 1000))
    return None


def random_rule(rng: random.Random, rule_id: int, priority: int) -> RuleSpec:
    src_len = _weighted(rng, SRC_LENGTHS)
    dst_len = _weighted(rng, DST_LENGTHS)
    proto = _weighted(rng, PROTOS)
    return RuleSpec(
        rule_id=rule_id,
        priority=priority,
        action=rng.choice(("allow", "deny")),
        src=_random_prefix(rng, src_len),  # type: ignore[arg-type]
        dst=None if dst_len is None else _random_prefix(rng, dst_len),  # type: ignore[arg-type]
        proto=proto,  # type: ignore[arg-type]
        dport=_dport(rng) if proto in (TCP, UDP) else None,
    )


def probe_rule(
    flow: Flow = PROBE, action: str = "deny", rule_id: int = PROBE_RULE_ID, priority: int = LAST_PRIORITY
) -> RuleSpec:
    """The rule that judges `flow`: exact addresses, protocol and port."""
    return RuleSpec(
        rule_id,
        priority,
        action,
        IPv4Network(f"{flow.src}/32"),
        IPv4Network(f"{flow.dst}/32"),
        flow.proto,
        (flow.dport, flow.dport),
    )


def generate(
    count: int, *, avoid: Iterable[Flow] = (PROBE,), seed: int = SEED, first_id: int = FIRST_RULE_ID
) -> list[RuleSpec]:
    """`count` random rules, none of which matches a flow of `avoid` (same seed, same rules)."""
    rng = random.Random(seed)
    flows = list(avoid)
    out: list[RuleSpec] = []
    while len(out) < count:
        rule = random_rule(rng, first_id + len(out), rng.randrange(100, LAST_PRIORITY))
        if not any(rule.matches(f) for f in flows):
            out.append(rule)
    return out


def ruleset(total: int, *, probe_action: str = "deny", seed: int = SEED) -> list[RuleSpec]:
    """`total` rules: `total - 1` random ones, then the probe's own rule (judged last)."""
    return [*generate(total - 1, seed=seed), probe_rule(action=probe_action)]


def in_order(rules: Iterable[RuleSpec]) -> list[RuleSpec]:
    """First-match order (priority, then id): the order a linear engine must list them in."""
    return sorted(rules, key=lambda r: (r.priority, r.rule_id))


def flow_matching(rule: RuleSpec, rng: random.Random) -> Flow:
    """A flow `rule` matches (TCP/UDP, an address inside each prefix, a port in range)."""

    def inside(net: IPv4Network | None) -> str:
        if net is None:
            return str(IPv4Address(rng.randrange(1 << 24, 224 << 24)))
        return str(net.network_address + rng.randrange(net.num_addresses))

    proto = rule.proto if rule.proto in (TCP, UDP) else UDP
    lo, hi = rule.dport or (1, 65535)
    return Flow(inside(rule.src), inside(rule.dst), proto, rng.randint(lo, hi))


# --- rendering for the other engines --------------------------------------------------------------


def iptables_match(rule: RuleSpec) -> str:
    parts = []
    if rule.src is not None:
        parts.append(f"-s {rule.src}")
    if rule.dst is not None:
        parts.append(f"-d {rule.dst}")
    if rule.proto is not None:
        parts.append(f"-p {protocols.NAMES[rule.proto]}")
    if rule.dport is not None:
        lo, hi = rule.dport
        parts.append(f"--dport {lo}" if lo == hi else f"--dport {lo}:{hi}")
    return " ".join(parts)


def iptables_restore(rules: Iterable[RuleSpec], chain: str = "PREROUTING") -> str:
    """`iptables-restore` input: the rules, in first-match order, in the raw table's `chain`."""
    lines = ["*raw", f":{chain} ACCEPT [0:0]"]
    for r in in_order(rules):
        target = "DROP" if r.action == "deny" else "ACCEPT"
        lines.append(f"-A {chain} {iptables_match(r)} -j {target}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def nft_match(rule: RuleSpec) -> str:
    parts = []
    if rule.src is not None:
        parts.append(f"ip saddr {rule.src}")
    if rule.dst is not None:
        parts.append(f"ip daddr {rule.dst}")
    if rule.proto is not None and rule.dport is not None:
        lo, hi = rule.dport
        parts.append(f"{protocols.NAMES[rule.proto]} dport {lo if lo == hi else f'{lo}-{hi}'}")
    elif rule.proto is not None:
        parts.append(f"meta l4proto {protocols.NAMES[rule.proto]}")
    return " ".join(parts)


def nft_chain(rules: Iterable[RuleSpec], table: str) -> str:
    """`nft -f` input: table `table` with a prerouting chain (priority raw) of the rules in order."""
    body = [
        f"    {nft_match(r)} counter {'drop' if r.action == 'deny' else 'accept'}" for r in in_order(rules)
    ]
    return (
        "\n".join(
            [
                f"table ip {table} {{",
                "  chain prerouting {",
                "    type filter hook prerouting priority raw; policy accept;",
                *body,
                "  }",
                "}",
            ]
        )
        + "\n"
    )


def set_element(rule: RuleSpec) -> str:
    src = rule.src or IPv4Network("0.0.0.0/0")
    dst = rule.dst or IPv4Network("0.0.0.0/0")
    proto = protocols.NAMES[rule.proto] if rule.proto is not None else "0-255"
    lo, hi = rule.dport or (0, 65535)
    return f"{src} . {dst} . {proto} . {lo}-{hi}"


def nft_set(rules: Iterable[RuleSpec], table: str) -> str:
    """`nft -f` input: every rule as an element of one concatenated interval set, one lookup.

    A set has no order and one verdict, so this is every rule treated as deny: the bound of what
    nftables can do with one lookup, not the same policy as the chain (see the report)."""
    elements = ",\n      ".join(set_element(r) for r in rules)
    return (
        "\n".join(
            [
                f"table ip {table} {{",
                "  set acl {",
                "    type ipv4_addr . ipv4_addr . inet_proto . inet_service",
                "    flags interval",
                *([f"    elements = {{ {elements} }}"] if elements else []),
                "  }",
                "  chain prerouting {",
                "    type filter hook prerouting priority raw; policy accept;",
                "    ip saddr . ip daddr . meta l4proto . th dport @acl counter drop",
                "  }",
                "}",
            ]
        )
        + "\n"
    )


def source_addresses(rules: Iterable[RuleSpec]) -> list[str]:
    """One address per rule for xdp-filter, which matches single addresses only: the first
    address of each rule's source prefix (distinct; any-source rules have none)."""
    seen: dict[str, None] = {}
    for r in rules:
        if r.src is not None:
            seen.setdefault(str(r.src.network_address), None)
    return list(seen)


def proto_rule(rule: RuleSpec) -> Any:
    """The rule as a tidegate.v1 AclRule message (what a client sends the daemon)."""
    from control.rpc.api import pb2

    match = pb2.Match(src=str(rule.src or ""), dst=str(rule.dst or ""))
    protocol: Any = rule.proto or pb2.PROTOCOL_UNSPECIFIED  # the Protocol enum is the IANA number
    match.protocol = protocol
    if rule.dport is not None:
        match.dport.low, match.dport.high = rule.dport
    action = pb2.ACTION_DENY if rule.action == "deny" else pb2.ACTION_ALLOW
    return pb2.AclRule(id=rule.rule_id, priority=rule.priority, action=action, match=match)


def proto_policy(rules: Iterable[RuleSpec]) -> Any:
    """A tidegate.v1 Policy holding just these ACL rules."""
    from control.rpc.api import pb2

    return pb2.Policy(acl=[proto_rule(r) for r in rules])


def columns(rules: Iterable[RuleSpec]) -> Any:
    """The rules as RuleColumns (dataplane.match.columns), in first-match order."""
    import numpy as np

    from dataplane import abi
    from dataplane.match.columns import RuleColumns

    ordered = in_order(rules)
    cols = RuleColumns.empty(len(ordered))
    for i, r in enumerate(ordered):
        cols.rule_id[i], cols.order[i] = r.rule_id, r.priority << 32 | r.rule_id
        cols.action[i] = abi.Action[r.action.upper()]
        for side, net in (("src", r.src), ("dst", r.dst)):
            if net is not None:
                getattr(cols, f"{side}_addr")[i, :4] = np.frombuffer(net.network_address.packed, np.uint8)
                getattr(cols, f"{side}_len")[i] = net.prefixlen
        cols.family[i] = 4 if (r.src or r.dst) is not None else 0
        if r.proto is not None:
            cols.proto_any[i], cols.proto[i] = False, r.proto
        if r.dport is not None:
            cols.dport_lo[i], cols.dport_hi[i] = r.dport
    return cols


def packed_policy(rules: Iterable[RuleSpec]) -> Any:
    """A tidegate.v1 Policy holding these ACL rules as one packed AclColumns."""
    from control.rpc.api import pb2
    from testbed.bench.column_rules import packed

    return pb2.Policy(acl_columns=packed(columns(rules)))

