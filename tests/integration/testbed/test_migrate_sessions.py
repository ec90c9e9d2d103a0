"""A typical host firewall with `--ctstate ESTABLISHED,RELATED -j ACCEPT` imported onto
allow_established, judged by real sessions (testbed/migrate_bed.py's two beds).

The rules (loaded with iptables-nft-restore, iptables-legacy-restore and nft -f) start with a
blocklist, then the conntrack rule, loopback, ssh, a service accepting only connection openings
(--syn; in IPv6 a `--ctstate NEW` accept that stays in netfilter), ping and neighbour discovery,
a drop, and the DROP policy. After `run_case` (probes, and the target's own flows with their
replies), real sessions are opened in both beds, target T ("inside") to sender S ("outside")
and back: TCP with data both ways, a refused connection (the RST is a reply), UDP questions
with small and fragmented answers, a closed UDP port (the ICMP error is RELATED: only netfilter
can tell), ping. Every one must end alike in the original netfilter bed and in Tidegate's
(imported policy plus kept rules), and as the rules say. Then the same for a router's FORWARD
chain: sessions from R, inside, out to S, and from S in to R.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

from testbed.migrate_bed import GATEWAY4, GATEWAY6, INSIDE4, LOCAL4, LOCAL6, Bed, Case, Side, check, run_case
from testbed.probes import Probe
from testbed.traffic import ping, tcp_echo_server, tcp_session, udp_server, udp_session

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(900)]

HOST4 = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -s 198.18.4.0/24 -j DROP
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 8443 --syn -j ACCEPT
-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 80 -j DROP
COMMIT
"""
HOST6 = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -s 2001:db8:1:4::/64 -j DROP
-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 8443 -m conntrack --ctstate NEW -j ACCEPT
-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j ACCEPT
-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT
-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 136 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 80 -j DROP
COMMIT
"""
NFT = """table inet host {
  chain input {
    type filter hook input priority 0; policy drop;
    ip saddr 198.18.4.0/24 drop
    ip6 saddr 2001:db8:1:4::/64 drop
    ct state { established, related } accept
    iif lo accept
    tcp dport 22 accept
    tcp dport 8443 tcp flags & (fin | syn | rst | ack) == syn accept
    icmp type echo-request accept
    icmpv6 type { echo-request, nd-neighbor-solicit, nd-neighbor-advert } accept
    tcp dport 80 drop
  }
}
"""
# The target's own flows whose replies S then sends (frames from any source): routed out by t1
# (never recorded at t0: netfilter's ESTABLISHED, which Tidegate leaves to it), and to a
# blocklisted source (recorded: its reply skips XDP's denies, and netfilter drops it).
OWN = [(4, LOCAL4, 5355, "10.200.5.9", 53), (6, LOCAL6, 5355, "fd00:200::9", 53),
       (4, LOCAL4, 5356, "198.18.4.20", 53), (6, LOCAL6, 5356, "2001:db8:1:4::20", 53)]
REPLIES = [Probe(4, 17, "10.200.5.9", LOCAL4, 53, 5355, why="reply, its flow routed out by t1"),
           Probe(6, 17, "fd00:200::9", LOCAL6, 53, 5355, why="reply, its flow routed out by t1"),
           Probe(4, 17, "198.18.4.20", LOCAL4, 53, 5356, why="reply from a blocklisted source"),
           Probe(6, 17, "2001:db8:1:4::20", LOCAL6, 53, 5356, why="reply from a blocklisted source")]
BIG = 3000  # a UDP answer above the veth MTU: it arrives in fragments
PAYLOAD = b"tidegate session " * 40


@pytest.fixture(scope="module")
def bed(import_beds: Bed) -> Bed:
    return import_beds


@contextmanager
def servers(side: Side) -> Iterator[None]:
    """T ("inside") listens on 22, 8443, 80, 2222 and UDP 5353; S ("outside") on TCP 8080 and
    UDP 5300 (echo) and 5301 (a big answer)."""
    with ExitStack() as stack:
        for t_addr, s_addr in ((LOCAL4, GATEWAY4), (LOCAL6, GATEWAY6)):
            for port in (22, 8443, 80, 2222):
                stack.enter_context(tcp_echo_server(side.t, t_addr, port))
            stack.enter_context(udp_server(side.t, t_addr, 5353))
            stack.enter_context(tcp_echo_server(side.s, s_addr, 8080))
            stack.enter_context(udp_server(side.s, s_addr, 5300))
            stack.enter_context(udp_server(side.s, s_addr, 5301, lambda data: b"x" * BIG))
        yield


def sessions(side: Side) -> dict[str, str]:
    out = {}
    for family, inside, outside in ((4, LOCAL4, GATEWAY4), (6, LOCAL6, GATEWAY6)):
        t, s = side.t, side.s
        out |= {
            f"v{family} out tcp": tcp_session(t, outside, 8080, PAYLOAD),
            f"v{family} out tcp closed": tcp_session(t, outside, 8081, PAYLOAD),
            f"v{family} out udp": udp_session(t, inside, outside, 5300, b"question"),
            f"v{family} out udp fragmented": udp_session(t, inside, outside, 5301, b"question"),
            f"v{family} out udp closed": udp_session(t, inside, outside, 5302, b"question"),
            f"v{family} out ping": "ok" if ping(t, outside, src=inside, count=2).ok else "lost",
            f"v{family} in ssh": tcp_session(s, inside, 22, PAYLOAD),
            f"v{family} in syn-only service": tcp_session(s, inside, 8443, PAYLOAD),
            f"v{family} in dropped port": tcp_session(s, inside, 80, PAYLOAD),
            f"v{family} in unlisted port": tcp_session(s, inside, 2222, PAYLOAD),
            f"v{family} in udp": udp_session(s, outside, inside, 5353, b"question"),
            f"v{family} in ping": "ok" if ping(s, inside, src=outside, count=2).ok else "lost",
        }
    return out


EXPECTED = {
    "out tcp": "ok", "out tcp closed": "refused", "out udp": "ok 8", "out udp fragmented": f"ok {BIG}",
    "out udp closed": "refused", "out ping": "ok", "in ssh": "ok", "in syn-only service": "ok",
    "in dropped port": "timeout", "in unlisted port": "timeout", "in udp": "none", "in ping": "ok",
}


def _judge(bed: Bed) -> tuple[dict[str, str], dict[str, str]]:
    got = {}
    for name, side in (("orig", bed.orig), ("tg", bed.tg)):
        with servers(side):
            got[name] = sessions(side)
    return got["orig"], got["tg"]


@pytest.mark.parametrize("backend", ["nft", "legacy", "native"])
def test_host_firewall_sessions(bed: Bed, backend: str) -> None:
    texts = {"nft": NFT} if backend == "native" else {"v4": HOST4, "v6": HOST6}
    case = Case(f"sessions-{backend}", backend, own_traffic=OWN, extra=REPLIES, **texts)
    before = _passed_established(bed)
    outcome = run_case(bed, case)
    check(outcome, min_moved=4)
    # delivered ("both": T's port is closed by then, and its ICMP error, which quotes the probe,
    # leaves by t1 towards the flow's peer) or not, as in the original
    assert outcome.tg[-4:] == ["both", "both", "none", "none"], outcome.tg[-4:]
    report = outcome.report
    assert report["allow_established"] is True, json.dumps(report["notes"])
    ct = [r for r in report["rules"] if "established" in r["text"].lower()]  # type: ignore[union-attr]
    assert ct and all(r["status"] == "mirrored" and "allow_established" in r["reason"] for r in ct), ct

    orig, tg = _judge(bed)
    expected = {f"v{f} {k}": v for f in (4, 6) for k, v in EXPECTED.items()}
    assert orig == expected, {k: v for k, v in orig.items() if expected[k] != v}  # the rules say so
    assert tg == orig, {k: (orig[k], v) for k, v in tg.items() if orig[k] != v}
    # the replies came back by the established table, not by some allow
    assert _passed_established(bed) > before


def _passed_established(bed: Bed) -> int:
    stats = json.loads(bed.daemon.cli("stats", as_json=True).stdout)
    return int(stats["reasons"].get("PASS_ESTABLISHED", {}).get("packets", 0))


ROUTER4 = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i t1 -o t0 -j ACCEPT
-A FORWARD -d 10.200.7.7/32 -p tcp -m tcp --dport 22 -j ACCEPT
-A FORWARD -p icmp -m icmp --icmp-type 8 -j ACCEPT
COMMIT
"""
ROUTER_EXPECTED = {"out tcp": "ok", "out tcp closed": "refused", "out udp": "ok 8",
                   "out udp fragmented": f"ok {BIG}", "out udp closed": "refused", "out ping": "ok",
                   "in published": "ok", "in other port": "timeout", "in udp": "none", "in ping": "ok"}


@contextmanager
def router_servers(side: Side) -> Iterator[None]:
    with ExitStack() as stack:
        for port in (22, 8080):
            stack.enter_context(tcp_echo_server(side.r, INSIDE4, port))
        stack.enter_context(udp_server(side.r, INSIDE4, 5353))
        stack.enter_context(tcp_echo_server(side.s, GATEWAY4, 8080))
        stack.enter_context(udp_server(side.s, GATEWAY4, 5300))
        stack.enter_context(udp_server(side.s, GATEWAY4, 5301, lambda data: b"x" * BIG))
        yield


def router_sessions(side: Side) -> dict[str, str]:
    r, s = side.r, side.s
    return {
        "out tcp": tcp_session(r, GATEWAY4, 8080, PAYLOAD, src=INSIDE4),
        "out tcp closed": tcp_session(r, GATEWAY4, 8081, PAYLOAD, src=INSIDE4),
        "out udp": udp_session(r, INSIDE4, GATEWAY4, 5300, b"question"),
        "out udp fragmented": udp_session(r, INSIDE4, GATEWAY4, 5301, b"question"),
        "out udp closed": udp_session(r, INSIDE4, GATEWAY4, 5302, b"question"),
        "out ping": "ok" if ping(r, GATEWAY4, src=INSIDE4, count=2).ok else "lost",
        "in published": tcp_session(s, INSIDE4, 22, PAYLOAD),
        "in other port": tcp_session(s, INSIDE4, 8080, PAYLOAD),
        "in udp": udp_session(s, GATEWAY4, INSIDE4, 5353, b"question"),
        "in ping": "ok" if ping(s, INSIDE4, src=GATEWAY4, count=2).ok else "lost",
    }


def test_router_forward_sessions(bed: Bed) -> None:
    """A router's FORWARD chain: what leaves from inside comes back by the established table,
    what comes from outside meets the rules."""
    outcome = run_case(bed, Case("sessions-router", "nft", v4=ROUTER4, forwarding=True))
    check(outcome, min_moved=2)
    assert outcome.report["allow_established"] is True
    before = _passed_established(bed)
    got = {}
    for name, side in (("orig", bed.orig), ("tg", bed.tg)):
        with router_servers(side):
            got[name] = router_sessions(side)
    orig, tg = got["orig"], got["tg"]
    assert orig == ROUTER_EXPECTED, {k: v for k, v in orig.items() if ROUTER_EXPECTED[k] != v}
    assert tg == orig, {k: (orig[k], v) for k, v in tg.items() if orig[k] != v}
    assert _passed_established(bed) > before
