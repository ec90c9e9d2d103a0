"""The import's promise, checked without a kernel on many random rule sets: for every packet,
Tidegate's imported policy followed by the netfilter rules it keeps ends exactly as the
original rules do (same verdict, same LOG rules seeing it), whatever the conditions the
import cannot read turn out to be, and whatever netfilter's conntrack state and Tidegate's
established table hold for the packet, as far as they can go together (reference.state_and_table).

The original and the kept rules are both read back through the parser (the kept ones from the
exact text `residual` writes), and judged by tests/unit/control/migrate/reference.py, which walks
chains itself; the kernel's view of the same thing is tests/integration/testbed/test_migrate_netns.py.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator

import pytest

from control.migrate import host as hostmod
from control.migrate import intervals as iv
from control.migrate import iptables, nft, output, residual, translate
from control.migrate.host import Host
from control.migrate.ir import Ruleset
from testbed import netfilter_gen
from testbed.netns import Namespace
from testbed.probes import Pools, Probe, boundary_probes, random_probes

from .reference import Packet, datagram_netfilter, datagram_tidegate, netfilter, state_and_table, tidegate

LOCAL = ["10.0.0.1/32", "10.0.1.1/32", "10.0.0.255/32", "fd00::1/128", "fd00::2:1/128"]
POOLS = Pools(src={4: ["198.18.4.20", "198.18.200.1", "192.0.2.77", "192.0.2.200", "203.0.113.70"],
                   6: ["2001:db8:1:4::20", "2001:db8:1::77", "2001:db8:2::1", "2001:db8:9::1"]},
              dst={4: ["10.0.0.1", "10.0.1.1", "10.200.5.9", "10.200.1.1", "10.0.0.255"],
                   6: ["fd00::1", "fd00::2:1", "fd00:200::9", "fd00:200::5:7", "fd00:200::1:1"]})
IFACES = ("t0", "t0", "t0", "lo", "eth9")
STATES = ("new", "new", "established", "established", "related", "invalid")
# Routed out by another interface than t0: replies from them are never in Tidegate's table.
ELSEWHERE = ["192.0.2.0/25", "2001:db8:2::/48"]


def _routed_back() -> dict[int, iv.Ivs]:
    other = hostmod.local_from_prefixes(ELSEWHERE)
    return {f: iv.complement(other[f], iv.top_of(f)) for f in (4, 6)}


def _host(forwarding: bool) -> Host:
    return Host(("t0",), hostmod.local_from_prefixes(LOCAL), {4: forwarding, 6: forwarding}, "test",
                _routed_back())


# echo replies and requests, errors (unreachable, time exceeded, parameter problem, too big)
ICMP_KINDS = {4: (0x0000, 0x0303, 0x0B00, 0x0C00, 0x0800, 0x0D00),
              6: (0x8100, 0x0104, 0x0300, 0x0200, 0x8000)}


def _icmp(rng: random.Random) -> list[Probe]:
    return [Probe(f, 1 if f == 4 else 58, rng.choice(POOLS.src[f]), rng.choice(POOLS.dst[f]), icmp=kind,
                  why="icmp") for f, kinds in ICMP_KINDS.items() for kind in kinds for _ in range(2)]


def _packets(ruleset: Ruleset, rng: random.Random, count: int) -> list[Packet]:
    probes = boundary_probes(ruleset, POOLS, rng) + random_probes(POOLS, rng, count) + _icmp(rng)
    out = []
    back = _routed_back()
    for n, pr in enumerate(probes):
        src, dst = int(ipaddress.ip_address(pr.src)), int(ipaddress.ip_address(pr.dst))
        packet = Packet(pr.family, pr.proto, src, dst, pr.sport, pr.dport, pr.icmp, pr.flags,
                        iif=rng.choice(IFACES), oif=rng.choice(("t1", "t0")), salt=n)
        out.append(state_and_table(packet, rng.choice(STATES), back, rng))
    return out


def _kept(ruleset: Ruleset, plan: translate.Plan) -> Ruleset:
    kept = Ruleset()
    for origin, family in (("iptables", 4), ("ip6tables", 6)):
        if origin in ruleset.sources:
            iptables.parse(residual.iptables_text(ruleset, plan, origin)[0], family, kept)
    if "nft" in ruleset.sources:
        nft.parse(residual.nft_json(ruleset, plan)[0], kept)
    return kept


def _refusal(verdict: str) -> str:
    """"reject:<answer>" as "reject": the imported policy refuses with Tidegate's own answer."""
    return "reject" if verdict.startswith("reject:") else verdict


def check(ruleset: Ruleset, forwarding: bool, rng: random.Random, count: int = 300,
          host: Host | None = None, extra: tuple[Packet, ...] = ()) -> translate.Plan:
    """`extra`: packets judged besides the probes drawn from the rules."""
    host = host or _host(forwarding)
    plan = translate.translate(ruleset, host)
    policy = output.to_policy(plan)
    kept = _kept(ruleset, plan)
    local = host.local
    wrong = []
    for p in [*_packets(ruleset, rng, count), *extra]:
        is_local = any(low <= p.dst <= high for low, high in local[p.family])
        want = netfilter(ruleset, p, is_local, forwarding)
        judged = tidegate(policy, p) if p.iif in host.interfaces else "allow"
        if judged == "deny":
            got: tuple[str, object] = ("drop", [])
        elif judged == "reject":  # refused with an answer; which answer is the report's to say
            got = ("reject", [])
        else:
            verdict, trace = netfilter(kept, p, is_local, forwarding)
            got = (_refusal(verdict), trace.logged)
        if (_refusal(want[0]), want[1].logged) != got:
            wrong.append(f"{p}: original {want[0]} {want[1].logged}, imported {got}")
        # the same headers on a datagram that arrives in fragments: delivered alike, or lost alike
        whole = datagram_netfilter(ruleset, p, is_local, forwarding) == "accept"
        attached = p.iif in host.interfaces
        pieces = datagram_tidegate(policy, kept, p, is_local, forwarding, attached) == "accept"
        if whole != pieces:
            wrong.append(f"{p} in fragments: original {'delivers' if whole else 'loses'} it, imported "
                         f"{'delivers' if pieces else 'loses'} it (fragments: {plan.fragments})")
    assert not wrong, "\n".join(wrong[:20])
    return plan


@pytest.mark.parametrize("seed", range(40))
def test_random_iptables_sets(seed: int) -> None:
    rng = random.Random(seed)
    ruleset = Ruleset()
    iptables.parse(netfilter_gen.Gen(4, rng).ruleset(rng.randint(5, 50)), 4, ruleset)
    iptables.parse(netfilter_gen.Gen(6, rng).ruleset(rng.randint(5, 30)), 6, ruleset)
    check(ruleset, forwarding=seed % 2 == 0, rng=rng)


@pytest.fixture(scope="module")
def nft_ns(bpf_available: None) -> Iterator[Namespace]:
    """A namespace only to turn nft text into `nft -j` JSON with the real tool."""
    with Namespace(prefix="tgimn") as ns:
        yield ns


@pytest.mark.root
@pytest.mark.parametrize("seed", range(20))
def test_random_nft_sets(nft_ns: Namespace, seed: int) -> None:
    rng = random.Random(seed)
    text = netfilter_gen.nft_ruleset(rng, rng.randint(4, 30))
    nft_ns.run(["nft", "flush", "ruleset"])
    nft_ns.run(["nft", "-f", "-"], input=text)
    ruleset = nft.parse(nft_ns.run(["nft", "-j", "list", "ruleset"]).stdout)
    check(ruleset, forwarding=seed % 2 == 1, rng=rng)


def test_something_moves_in_most_sets() -> None:
    """The property above must not hold only because nothing moves."""
    moved = 0
    for seed in range(40):
        rng = random.Random(seed)
        ruleset = iptables.parse(netfilter_gen.Gen(4, rng).ruleset(30), 4)
        plan = translate.translate(ruleset, _host(seed % 2 == 0))
        moved += any(str(f.status) == "moved" for f in plan.fates)
    assert moved >= 20, moved
