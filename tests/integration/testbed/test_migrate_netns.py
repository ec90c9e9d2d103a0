"""`tidegate import` judged by the kernel: the original netfilter policy against Tidegate's
imported policy plus the netfilter rules it keeps, probe by probe (the beds: testbed/migrate_bed.py).

The rules are loaded with the real tool (iptables-nft-restore, iptables-legacy-restore or nft -f)
and saved with the real tool; the saved output goes through `tidegate import --apply` into a real
daemon; then the same probes (every rule's boundaries, random ones; TCP, UDP, SCTP, ICMP, GRE;
IPv4 and IPv6) cross both beds, and each must end the same way: delivered to T, forwarded to R,
or neither.
"""

from __future__ import annotations

import random

import pytest

from testbed import netfilter_gen
from testbed.migrate_bed import LOCAL4, LOCAL6, Bed, Case, check, run_case
from testbed.probes import Probe, send_and_observe

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def bed(import_beds: Bed) -> Bed:
    return import_beds


# --- cases ---------------------------------------------------------------------------------------------

HOST4 = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -s 198.18.4.0/24 -j DROP
-A INPUT -s 192.0.2.0/25 -p udp -j DROP
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 80 -j DROP
COMMIT
"""
HOST6 = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -s 2001:db8:1:4::/64 -j DROP
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p ipv6-icmp -j ACCEPT
COMMIT
"""
OWN = [(4, LOCAL4, 5353, "198.19.5.5", 53), (6, LOCAL6, 5353, "2001:db8:2::5", 53)]
REPLIES = [Probe(4, 17, "198.19.5.5", LOCAL4, 53, 5353, why="reply to the target's own flow"),
           Probe(6, 17, "2001:db8:2::5", LOCAL6, 53, 5353, why="reply to the target's own flow"),
           Probe(4, 17, "198.19.5.5", LOCAL4, 53, 5354, why="not a reply")]


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_host_firewall(bed: Bed, backend: str) -> None:
    """Established, loopback, ssh, ping, drop; blocklists in front that can move. The legacy
    variant is read live (`import --live`: both backends, nft, ipsets) from the namespace."""
    case = Case(f"host-{backend}", backend, v4=HOST4, v6=HOST6, own_traffic=OWN, extra=REPLIES,
                live=backend == "legacy")
    outcome = run_case(bed, case)
    check(outcome, min_moved=3)
    replies = outcome.tg[-3:]
    assert replies == ["local", "local", "none"], replies


ROUTER4 = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p icmp -j ACCEPT
-A FORWARD -s 198.18.0.0/16 -d 10.200.5.0/24 -p tcp -m tcp --dport 80 -j ACCEPT
-A FORWARD -s 198.18.0.0/15 -p tcp -m multiport --dports 0:1023 -j DROP
-A FORWARD -d 10.200.0.0/16 -p udp -m udp --dport 53 -j ACCEPT
-A FORWARD -d 10.200.5.9/32 -j DROP
-A FORWARD -i t0 -o t1 -p udp -j ACCEPT
-A FORWARD -m iprange --src-range 192.0.2.0-192.0.2.100 -j DROP
-A FORWARD -p icmp -j ACCEPT
COMMIT
"""
ROUTER6 = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -s 2001:db8:1::/48 -d fd00:200::/64 -p tcp -m tcp --dport 443 -j ACCEPT
-A FORWARD -s 2001:db8:1::/48 -j DROP
-A FORWARD ! -s 2001:db8::/32 -j DROP
-A INPUT -s 2001:db8:2::/48 -p udp -j DROP
COMMIT
"""


def test_router_forward_chain(bed: Bed) -> None:
    """A router: FORWARD rules move behind the guard, INPUT rules only for local destinations."""
    outcome = run_case(bed, Case("router", "nft", v4=ROUTER4, v6=ROUTER6, forwarding=True))
    check(outcome, min_moved=5)
    assert "forwarded" in outcome.orig


CHAINS4 = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:SCREEN - [0:0]
:SERVICES - [0:0]
:LOGDROP - [0:0]
-A INPUT -p tcp -j SCREEN
-A INPUT -p udp -j SERVICES
-A INPUT -s 192.0.2.0/24 -g LOGDROP
-A INPUT -s 203.0.113.64/26 -j DROP
-A SCREEN -s 198.18.4.0/24 -j RETURN
-A SCREEN -s 198.18.0.0/15 -p tcp -m tcp --dport 0:1023 -j DROP
-A SCREEN -p tcp -m tcp --dport 8000:8080 -j SERVICES
-A SERVICES -d 10.0.1.1/32 -j RETURN
-A SERVICES -p udp -m udp --dport 53 -j ACCEPT
-A SERVICES -j DROP
-A LOGDROP -m length --length 0:60 -j RETURN
-A LOGDROP -j DROP
COMMIT
"""


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_user_chains(bed: Bed, backend: str) -> None:
    """Jumps, RETURNs and a goto: inlined with first-match order kept."""
    outcome = run_case(bed, Case(f"chains-{backend}", backend, v4=CHAINS4))
    check(outcome, min_moved=3)


NFT = """table inet fw {
  set blocked { type ipv4_addr; flags interval; elements = { 198.18.4.0/24, 192.0.2.77 } }
  chain input {
    type filter hook input priority 0; policy drop;
    ip saddr @blocked drop
    ip6 saddr 2001:db8:1:4::/64 drop
    ct state established,related accept
    tcp dport { 22, 8000-8080 } accept
    udp dport 53 jump dns
    tcp dport vmap { 80 : accept, 81 : drop }
    meta l4proto { icmp, ipv6-icmp } accept
  }
  chain dns {
    ip saddr 192.0.2.0/24 return
    accept
  }
  chain forward { type filter hook forward priority 0; policy accept;
    ip daddr 10.200.5.9 drop
  }
}
"""


def test_nft_ruleset(bed: Bed) -> None:
    outcome = run_case(bed, Case("nft", "native", nft=NFT, own_traffic=OWN, extra=REPLIES))
    check(outcome, min_moved=2)


IPSET = """create bad hash:net family inet hashsize 1024 maxelem 65536
add bad 198.18.0.0/16
add bad 198.18.4.16/28 nomatch
add bad 192.0.2.77
"""
SETS4 = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m set --match-set bad src -p tcp -j DROP
-A INPUT -m set ! --match-set bad src -p udp -j DROP
COMMIT
"""


def test_ipset(bed: Bed) -> None:
    outcome = run_case(bed, Case("ipset", "nft", v4=SETS4, ipset=IPSET))
    check(outcome, min_moved=2)


@pytest.mark.parametrize("seed", [11, 12, 13])
@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_random_iptables(bed: Bed, backend: str, seed: int) -> None:
    rng = random.Random(seed)
    v4 = netfilter_gen.Gen(4, rng).ruleset(40)
    v6 = netfilter_gen.Gen(6, rng).ruleset(25)
    outcome = run_case(bed, Case(f"random-{backend}-{seed}", backend, v4=v4, v6=v6, forwarding=seed % 2 == 1),
                       seed)
    check(outcome)


@pytest.mark.parametrize("seed", [21, 22])
def test_random_nft(bed: Bed, seed: int) -> None:
    rng = random.Random(seed)
    outcome = run_case(bed, Case(f"random-nft-{seed}", "native", nft=netfilter_gen.nft_ruleset(rng, 30),
                                 forwarding=seed % 2 == 0), seed)
    check(outcome)


def test_probes_can_tell_a_wrong_import(bed: Bed) -> None:
    """The comparison fails when the imported side differs: a deny added behind the import's back."""
    outcome_ok = run_case(bed, Case("control", "nft", v4=ROUTER4, forwarding=True))
    assert not outcome_ok.differences
    wrong = bed.workdir / "wrong.yaml"
    wrong.write_text("settings: {decap: false}\nacl:\n- {id: 1, action: deny, match: {dst: 10.200.5.0/24}}\n")
    assert bed.daemon.cli("policy", "apply", "-f", str(wrong)).returncode == 0
    probes = outcome_ok.probes
    bed.runs[0] += 1
    side = bed.tg
    seen = send_and_observe(side.s, "s0", side.s_mac, side.t_mac, side.t, side.r, "r0", probes, bed.runs[0])
    assert any(a != b for a, b in zip(outcome_ok.orig, seen, strict=True))
