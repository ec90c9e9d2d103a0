"""A reference evaluator for the import's equivalence tests, independent of the translator.

It walks the parsed chains as netfilter does (jumps, gotos, RETURN, policies, hooks in priority
order, INPUT for local destinations and FORWARD for the rest) for one packet, and judges a
Tidegate policy first-match as the data plane does. Conditions the import cannot read
(`Unsupported`: a length, a packet type) are decided by `Packet.coin`, an arbitrary but fixed
function of the packet and the condition: whatever it decides, the import must be right.

A packet carries two states: netfilter's conntrack state (`ctstate`) and whether Tidegate's
established table holds its flow (`recorded`: a packet with the reversed tuple left by the attach
interface; with allow_established it passes before the ACL). `state_and_table` draws the two as
they can come together (docs/migration.md, "ESTABLISHED and RELATED"): the table holds only TCP,
UDP and ICMP echo replies; a packet netfilter calls ESTABLISHED of those, from a source routed
back by the attach interface, is in the table (its flow left there, Tidegate's timeouts outlast
netfilter's); anything else it may or may not hold (an entry netfilter dropped, an INVALID segment).
RELATED is an ICMP error (no conntrack helpers in these rule sets).

A packet may also stand for a datagram that arrives in fragments (`datagram_netfilter`,
`datagram_tidegate`): its first fragment carries its headers, a later one (`later`) none of its
ports, ICMP type or TCP flags, so no match that reads them matches it, in netfilter or in Tidegate.
Which chains judge the pieces and which the reassembled datagram is the kernel's rule, stated here
on its own (not the import's): with conntrack in the family (a rule reading its state, NAT or a CT
target, a nat table), its defragmentation at priority -400 hands every later chain the whole
datagram; without it the stack reassembles IPv4 datagrams for this host before INPUT, and every
other chain judges each fragment. The datagram is delivered only if every piece is.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field, replace

from control.migrate import intervals as iv
from control.migrate.ir import Box, Chain, Cond, Kind, Ruleset
from control.policy.models import Match, Policy

PORTED = {6, 17, 132, 136, 33}
ICMP_ERRORS = {3, 4, 5, 11, 12}
PATHS = {"local": ("ingress", "prerouting", "input"), "fwd": ("ingress", "prerouting", "forward")}


@dataclass(frozen=True)
class Packet:
    family: int
    proto: int
    src: int
    dst: int
    sport: int = 0
    dport: int = 0
    icmp: int = 0
    flags: int = 0
    iif: str = "t0"
    oif: str = "t1"
    ctstate: str = "new"
    salt: int = 0
    recorded: bool = False  # in Tidegate's established table
    later: bool = False  # a later fragment: no ports, ICMP header or TCP flags to read

    @property
    def icmp_error(self) -> bool:
        kind = self.icmp >> 8
        return (self.proto == 1 and kind in ICMP_ERRORS) or (self.proto == 58 and kind < 128)

    @property
    def trackable(self) -> bool:
        """A packet Tidegate's table can hold: TCP, UDP, an ICMP/ICMPv6 echo reply."""
        return self.proto in (6, 17) or (self.proto, self.icmp >> 8) in ((1, 0), (58, 129))

    def coin(self, what: str) -> bool:
        digest = hashlib.sha256(f"{what}|{self}".encode()).digest()
        return digest[0] & 1 == 1


def in_box(box: Box, p: Packet) -> bool:
    if box.family != p.family:
        return False
    checks = [("proto", p.proto), ("src", p.src), ("dst", p.dst)]
    for dim, value in checks:
        values = box.get(dim)
        if values is not None and not iv.contains(values, iv.span(value, value)):
            return False
    l4 = not p.later
    ported = l4 and p.proto in PORTED
    icmp, tcp = l4 and p.proto in (1, 58), l4 and p.proto == 6
    for dim, value, ok in (("sport", p.sport, ported), ("dport", p.dport, ported),
                           ("icmp", p.icmp, icmp), ("flags", p.flags, tcp)):
        values = box.get(dim)
        if values is not None and (not ok or not iv.contains(values, iv.span(value, value))):
            return False
    return True


def matches(cond: Cond, p: Packet) -> bool:
    if not any(in_box(b, p) for b in cond.boxes):
        return False
    if not all(i.matches(p.iif) for i in cond.iif) or not all(o.matches(p.oif) for o in cond.oif):
        return False
    if cond.ctstate is not None and p.ctstate not in cond.ctstate:
        return False
    return all(p.coin(f"{u.what} {u.text}") for u in cond.unsupported)


@dataclass
class Trace:
    logged: list[str] = field(default_factory=list)  # the LOG rules that saw the packet


def _chain(ruleset: Ruleset, chain: Chain, p: Packet, trace: Trace, depth: int = 0) -> str:
    assert depth < 64
    for rule in chain.rules:
        if not matches(rule.cond, p):
            continue
        kind = rule.target.kind
        if kind is Kind.RETURN:
            return "return"
        if kind in (Kind.JUMP, Kind.GOTO):
            sub = ruleset.chains[(chain.origin, chain.table, rule.target.name)]
            got = _chain(ruleset, sub, p, trace, depth + 1)
            if kind is Kind.GOTO or got != "return":
                return got
            continue
        if kind is Kind.SIDE:
            trace.logged.append(f"{rule.chain}:{rule.text.split(' -j ')[0]}")
            continue
        if kind in (Kind.NONE, Kind.MODIFY):
            continue
        if kind is Kind.REJECT:
            return f"reject:{rule.target.detail}"
        return kind.value
    return "return"


def netfilter(ruleset: Ruleset, p: Packet, local: bool, forwarding: bool) -> tuple[str, Trace]:
    """The packet's end in these rules: "accept", "drop", "reject:...", and what logged it."""
    trace = Trace()
    if not local and not forwarding:
        return "drop", trace  # no route for it
    hooks = PATHS["local" if local else "fwd"]
    chains = sorted((c for c in ruleset.base_chains() if c.hook in hooks and p.family in c.families
                     and (c.device is None or c.device == p.iif)),
                    key=lambda c: (hooks.index(c.hook or ""), c.priority))
    for chain in chains:
        got = _chain(ruleset, chain, p, trace)
        if got == "return":
            got = chain.policy
        if got != "accept":
            return got, trace
    return "accept", trace


def _net_has(network: object, family: int, value: int) -> bool:
    if network is None:
        return True
    net = ipaddress.ip_network(str(network))
    return net.version == family and int(net.network_address) <= value <= int(net.broadcast_address)


def _match(m: Match, p: Packet) -> bool:
    for network, value in ((m.src, p.src), (m.dst, p.dst)):
        if not _net_has(network, p.family, value):
            return False
    if m.protocol_number is not None and m.protocol_number != p.proto:
        return False
    for ports, value in ((m.dport, p.dport), (m.sport, p.sport)):
        if ports is None or (ports.low, ports.high) == (0, 65535):
            continue  # 0-65535 reads no port: the data plane matches it to any packet
        if not (p.proto in (6, 17, 132) and not p.later and ports.low <= value <= ports.high):
            return False
    icmp = p.proto in (1, 58) and not p.later
    for wanted, value in ((m.icmp_type, p.icmp >> 8), (m.icmp_code, p.icmp & 0xFF)):
        if wanted is not None and not (icmp and value == wanted):
            return False
    # syn: a connection opening, as iptables' --syn (SYN set; FIN, RST, ACK clear)
    return not m.syn or (p.proto == 6 and not p.later and p.flags & 0x17 == 0x02)


def state_and_table(p: Packet, state: str, routed_back: dict[int, iv.Ivs], rng: object) -> Packet:
    """`p` with a conntrack state and a table entry that can come together (`rng`: random.Random)."""
    import random

    assert isinstance(rng, random.Random)
    if state == "related" and not p.icmp_error:
        state = rng.choice(("new", "established", "invalid"))
    back = iv.contains(routed_back.get(p.family, iv.EMPTY), iv.span(p.src, p.src))
    recorded = p.trackable and ((state == "established" and back) or rng.random() < 0.3)
    return replace(p, ctstate=state, recorded=recorded)


def tidegate(policy: Policy, p: Packet) -> str:
    if p.later and policy.settings.fragments == "first":
        return "allow"  # passed before the ACL: the stack reassembles it with its first fragment
    if policy.settings.allow_established and p.recorded:
        return "allow"  # a reply of a recorded flow: passed before the ACL
    for rule in sorted(policy.acl, key=lambda r: (r.priority, r.id)):
        if _match(rule.match, p):
            return rule.action
    return policy.settings.default_action


# --- fragmented datagrams ---------------------------------------------------------------------------

DEFRAG_PRIORITY = -400  # nf_defrag_ipv4/ipv6 in PREROUTING, before raw (-300)
CONNTRACK_TARGETS = ("CT", "NOTRACK", "CONNMARK")


def later_fragment(p: Packet) -> Packet:
    """A later fragment of `p`'s datagram: same addresses and protocol, nothing of its transport header."""
    return replace(p, sport=0, dport=0, icmp=0, flags=0, later=True, recorded=False)


def reassembled(ruleset: Ruleset) -> set[int]:
    """The families whose datagrams conntrack reassembles before netfilter's chains judge them."""
    out: set[int] = set()
    for chain in ruleset.chains.values():
        uses = chain.table == "nat" and chain.origin != "nft" or any(
            r.cond.ctstate is not None or r.target.kind is Kind.TRANSLATE
            or r.target.name in CONNTRACK_TARGETS for r in chain.rules)
        if uses:
            out.update(chain.families)
    return out


def datagram_netfilter(ruleset: Ruleset, p: Packet, local: bool, forwarding: bool) -> str:
    """How netfilter ends a datagram of `p`'s headers that arrives in fragments: "accept" when
    every piece (or the reassembled datagram, where a chain sees it whole) is accepted."""
    if not local and not forwarding:
        return "drop"
    defrag = p.family in reassembled(ruleset)
    hooks = PATHS["local" if local else "fwd"]
    chains = sorted((c for c in ruleset.base_chains() if c.hook in hooks and p.family in c.families
                     and (c.device is None or c.device == p.iif)),
                    key=lambda c: (hooks.index(c.hook or ""), c.priority))
    for chain in chains:
        whole = (defrag and chain.hook != "ingress" and chain.priority > DEFRAG_PRIORITY) or \
            (p.family == 4 and local and chain.hook == "input")
        for piece in [p] if whole else [p, later_fragment(p)]:
            got = _chain(ruleset, chain, piece, Trace())
            if got == "return":
                got = chain.policy
            if got != "accept":
                return got
    return "accept"


def datagram_tidegate(policy: Policy, kept: Ruleset, p: Packet, local: bool, forwarding: bool,
                      attached: bool) -> str:
    """The same datagram through Tidegate (each piece judged at XDP) and the kept rules."""
    if attached:
        for piece in (p, later_fragment(p)):
            judged = tidegate(policy, piece)
            if judged != "allow":
                return "drop" if judged == "deny" else judged
    return datagram_netfilter(kept, p, local, forwarding)
