"""Random iptables-restore and nft rule sets over small address and port pools (so rules
overlap, shadow and block each other), for the import's equivalence tests and its bench.

Every rule is one the real tools accept; what they print back (iptables-save, nft -j) is what
the import reads. Conditions Tidegate cannot express (a packet length, a hop limit) are mixed
in on purpose: they keep rules in netfilter and block the rules after them. So are conntrack
state rules (`--ctstate ESTABLISHED,RELATED -j ACCEPT` and its kin), which the import moves
onto allow_established where it can.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Sources: ranges the target does not route (its answers go nowhere); destinations: its own
# addresses and a prefix routed beyond it.
SRC = {4: ["198.18.0.0/15", "198.18.0.0/16", "198.18.4.0/24", "198.18.4.16/28", "198.19.0.0/16",
           "192.0.2.0/24", "192.0.2.0/25", "192.0.2.77/32", "203.0.113.64/26"],
       6: ["2001:db8:1::/48", "2001:db8:1:4::/64", "2001:db8:1:4::10/124", "2001:db8:2::/48",
           "2001:db8:1::77/128", "2001:db8::/32"]}
DST = {4: ["10.0.0.1/32", "10.0.1.1/32", "10.0.0.0/24", "10.0.0.0/8", "10.200.0.0/16", "10.200.5.0/24",
           "10.200.5.9/32"],
       6: ["fd00::1/128", "fd00::2:1/128", "fd00::/64", "fd00::/16", "fd00:200::/64", "fd00:200::5:0/112",
           "fd00:200::9/128"]}
RANGES = {4: [("198.18.4.5", "198.18.4.40"), ("10.200.5.3", "10.200.7.1")],
          6: [("2001:db8:1:4::5", "2001:db8:1:4::40"), ("fd00:200::5:3", "fd00:200::7:1")]}
PORTS = ["22", "53", "80", "443", "1000:2000", "8000:8080", "0:1023", "1024:65535", "5000"]
MULTI = ["80,443", "22,53,1000:1100", "8000:8080,9000"]
# conntrack state rules: (states, target); ESTABLISHED/RELATED accepts the most common
CT_RULES = [("ESTABLISHED,RELATED", "ACCEPT"), ("RELATED,ESTABLISHED", "ACCEPT"), ("ESTABLISHED", "ACCEPT"),
            ("RELATED", "ACCEPT"), ("ESTABLISHED,RELATED", "ACCEPT"), ("INVALID", "DROP"), ("NEW", "ACCEPT")]
NFT_CT_RULES = ["ct state established,related accept", "ct state { established, related } accept",
                "ct state established accept", "ct state related accept", "ct state invalid drop",
                "meta l4proto tcp ct state established accept"]


@dataclass
class Gen:
    family: int
    rng: random.Random
    chains: tuple[str, ...] = ("INPUT", "FORWARD")
    unsupported: float = 0.15  # share of rules with a condition Tidegate cannot express
    jumps: bool = True
    conntrack: float = 0.08  # share of conntrack state rules

    def prefix(self, pool: dict[int, list[str]]) -> str:
        return self.rng.choice(pool[self.family])

    def _addr(self, flag: str, pool: dict[int, list[str]]) -> str:
        if self.rng.random() < 0.5:
            return ""
        neg = "! " if self.rng.random() < 0.2 else ""
        return f"{neg}{flag} {self.prefix(pool)} "

    def _proto(self) -> str:
        icmp = "icmp" if self.family == 4 else "ipv6-icmp"
        return self.rng.choice(["tcp", "tcp", "udp", "udp", icmp, "sctp", "", ""])

    def match(self) -> str:
        """The conditions of one rule (iptables syntax)."""
        r = self.rng
        text = self._addr("-s", SRC) + self._addr("-d", DST)
        proto = self._proto()
        if proto:
            text += f"{'! ' if not text and r.random() < 0.1 else ''}-p {proto} "
        if proto in ("tcp", "udp", "sctp") and not text.startswith("! -p"):
            text += f"-m {proto} "
            if r.random() < 0.6:
                text += f"{'! ' if r.random() < 0.15 else ''}--dport {r.choice(PORTS)} "
            if r.random() < 0.2:
                text += f"--sport {r.choice(PORTS)} "
            if proto == "tcp" and r.random() < 0.1:
                text += "--syn "
            if r.random() < 0.15:
                text += f"-m multiport --dports {r.choice(MULTI)} "
        if r.random() < 0.1:
            low, high = r.choice(RANGES[self.family])
            neg = "! " if r.random() < 0.3 else ""
            text += f"-m iprange {neg}--{r.choice(['src', 'dst'])}-range {low}-{high} "
        if r.random() < self.unsupported:
            text += r.choice(["-m length --length 0:60 ", "-m length --length 61:65535 ",
                              "-m pkttype --pkt-type unicast "])
        return text

    def conntrack_rule(self) -> str:
        """A conntrack state rule: `-m conntrack --ctstate ...` or `-m state --state ...`, maybe
        limited to a protocol or source."""
        r = self.rng
        states, target = r.choice(CT_RULES)
        module = r.choice(["-m conntrack --ctstate", "-m conntrack --ctstate", "-m state --state"])
        limit = r.choice(["", "", "", "-p tcp ", "-p udp ", self._addr("-s", SRC)])
        return f"{limit}{module} {states} -j {target}"

    def target(self, chain: str, user: list[str]) -> str:
        r = self.rng
        pick = r.random()
        if pick < 0.35:
            return "DROP"
        if pick < 0.7:
            return "ACCEPT"
        if pick < 0.78:
            return "REJECT"
        if pick < 0.83:
            return 'LOG --log-prefix "tg "'
        if user and self.jumps and pick < 0.95:
            return r.choice(user)
        if chain not in ("INPUT", "FORWARD", "OUTPUT"):
            return "RETURN"
        return "DROP"

    def ruleset(self, rules: int, user_chains: int = 2) -> str:
        """One *filter table: INPUT and FORWARD with random policies, `user_chains` chains."""
        r = self.rng
        user = [f"U{i}" for i in range(user_chains)]
        lines = ["*filter"]
        for chain in ("INPUT", "FORWARD", "OUTPUT"):
            policy = r.choice(["ACCEPT", "DROP"]) if chain != "OUTPUT" else "ACCEPT"
            lines.append(f":{chain} {policy} [0:0]")
        lines += [f":{u} - [0:0]" for u in user]
        for n in range(rules):
            chain = r.choice(list(self.chains) + user)
            # a user chain jumps only to chains after it: no loops
            later = [u for u in user if chain not in user or user.index(u) > user.index(chain)]
            if r.random() < self.conntrack:
                lines.append(f"-A {chain} {self.conntrack_rule()}".replace("  ", " "))
                continue
            lines.append(f"-A {chain} {self.match()}-j {self.target(chain, later)}".replace("  ", " "))
            del n
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def nft_ruleset(rng: random.Random, rules: int, table: str = "tg") -> str:
    """An inet table: input and forward chains, a user chain, named sets, a verdict map."""
    lines = [f"table inet {table} {{",
             "  set srcs4 { type ipv4_addr; flags interval; elements = { 198.18.4.0/24, 192.0.2.77 } }",
             "  set srcs6 { type ipv6_addr; flags interval; elements = { 2001:db8:1:4::/64 } }",
             "  chain sub {"]
    lines += [f"    {_nft_rule(rng, in_sub=True)}" for _ in range(max(1, rules // 5))]
    lines.append("  }")
    for chain, hook in (("input", "input"), ("forward", "forward")):
        policy = rng.choice(["accept", "drop"])
        lines.append(f"  chain {chain} {{ type filter hook {hook} priority 0; policy {policy};")
        lines += [f"    {_nft_rule(rng, in_sub=False)}" for _ in range(rules // 2)]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _nft_rule(rng: random.Random, in_sub: bool) -> str:
    if rng.random() < 0.08:
        return rng.choice(NFT_CT_RULES)
    family = rng.choice((4, 6))
    ip = "ip" if family == 4 else "ip6"
    parts = []
    if rng.random() < 0.5:
        parts.append(f"{ip} saddr {'!= ' if rng.random() < 0.2 else ''}{rng.choice(SRC[family])}")
    elif rng.random() < 0.2:
        parts.append(f"{ip} saddr @srcs{family}")
    if rng.random() < 0.5:
        parts.append(f"{ip} daddr {rng.choice(DST[family])}")
    proto = rng.choice(["tcp", "udp", "icmp", "", ""])
    if proto in ("tcp", "udp"):
        ports = rng.choice(["22", "53", "1000-2000", "{ 80, 443 }", "!= 53", "0-1023"])
        parts.append(f"{proto} dport {ports}")
        if rng.random() < 0.2:
            parts.append(f"{proto} sport {rng.choice(['53', '1024-65535'])}")
    elif proto == "icmp":
        parts.append("icmp type echo-request" if family == 4 else "icmpv6 type echo-request")
    if not parts:
        parts.append(f"meta nfproto ipv{family}")
    if rng.random() < 0.1:
        parts.append("meta length 0-60")
    verdicts = ["accept", "drop", "drop", "accept", "reject"]
    verdicts += ["return"] if in_sub else ["jump sub"]
    if rng.random() < 0.1 and not in_sub and proto in ("tcp", ""):
        return f"{' '.join(parts)} tcp dport vmap {{ 22 : accept, 23 : drop }}"
    return f"{' '.join(parts)} {rng.choice(verdicts)}"
