"""`fragments: judge | first` through a real daemon, with real datagrams larger than the MTU.

A namespace with Tidegate attached (natively, by a `tidegate serve` process) to its eth0, and a
peer namespace behind the veth (MTU 1500). The policy, applied with `tidegate policy apply -f -`
as an operator would, is a host firewall's: `default_action: deny`, UDP to one port allowed
(and ICMPv6, for nothing but completeness: the neighbours are static). The peer's kernel cuts a
4,000-byte datagram into three fragments; only the first carries the UDP header. Under "judge"
the two later fragments meet the default deny and the datagram never arrives; under "first"
they pass before the ACL (PASS_LATER_FRAGMENT) and the socket receives the datagram whole.
A datagram to a port the policy does not allow stays out under both: its first fragment is
dropped, and the stack reassembles nothing without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from control.rpc.api import pb2
from testbed.counters import ApiSnapshot, api_snapshot
from testbed.daemon import RPC_TIMEOUT, DaemonProcess
from testbed.netns import Link, add_address, add_neighbour, link_mac, linked_namespaces
from testbed.traffic import receive_udp, send_udp, udp_socket

pytestmark = [pytest.mark.root, pytest.mark.netns]

IFNAME, PEER_IFNAME = "eth0", "peer0"
ADDR, PEER_ADDR = "10.78.0.1", "10.78.0.2"
ADDR6, PEER_ADDR6 = "fd78::1", "fd78::2"
ALLOWED, NOT_ALLOWED = 5353, 5354
RULE = 1
BIG = bytes(range(256)) * 15 + b"tail"  # 3,844 bytes: three fragments on a 1500-byte MTU
LATER = 2  # later fragments of BIG
SMALL = b"fits in one packet"
WAIT = 1.0  # on a veth a datagram arrives in well under a millisecond


def policy_yaml(fragments: str) -> str:
    return f"""
settings: {{default_action: deny, fragments: {fragments}}}
acl:
  - {{id: {RULE}, action: allow, match: {{protocol: udp, dport: {ALLOWED}}}}}
  - {{id: 2, action: allow, match: {{protocol: icmpv6}}}}
"""


@pytest.fixture(scope="module")
def bed(daemon_on_veth: Any) -> Iterator[tuple[Link, DaemonProcess]]:
    with linked_namespaces("tgfr", IFNAME, PEER_IFNAME, ADDR, PEER_ADDR) as link, \
            daemon_on_veth(link.ns, IFNAME) as daemon:
        add_address(link.ns, IFNAME, f"{ADDR6}/64")
        add_address(link.peer, PEER_IFNAME, f"{PEER_ADDR6}/64")
        add_neighbour(link.ns, IFNAME, PEER_ADDR6, link_mac(link.peer, PEER_IFNAME))
        add_neighbour(link.peer, PEER_IFNAME, ADDR6, link_mac(link.ns, IFNAME))
        yield link, daemon


def apply(daemon: DaemonProcess, fragments: str) -> None:
    done = daemon.cli("policy", "apply", "-f", "-", stdin=policy_yaml(fragments))
    assert done.returncode == 0, done.stderr
    shown = daemon.cli("policy", "show")
    assert shown.returncode == 0 and f"fragments: {fragments}" in shown.stdout, shown.stdout


def stats(daemon: DaemonProcess) -> ApiSnapshot:
    return api_snapshot(daemon.stats.GetStats(pb2.GetStatsRequest(), timeout=RPC_TIMEOUT))


def exchange(link: Link, family: int, port: int, payloads: list[bytes]) -> list[bytes]:
    """What a socket on `port` in the namespace receives of `payloads` sent from the peer."""
    addr, peer_addr = (ADDR, PEER_ADDR) if family == 4 else (ADDR6, PEER_ADDR6)
    with udp_socket(link.ns, addr, port) as server, udp_socket(link.peer, peer_addr) as client:
        send_udp(client, addr, port, payloads)
        return [data for data, _src in receive_udp(server, expect=len(payloads) + 1, timeout=WAIT)]


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_judge_drops_the_later_fragments_of_an_allowed_datagram(bed: tuple[Link, DaemonProcess],
                                                                family: int) -> None:
    link, daemon = bed
    apply(daemon, "judge")
    before = stats(daemon)
    assert exchange(link, family, ALLOWED, [SMALL, BIG]) == [SMALL], "the port is allowed, BIG's pieces not"
    moved = stats(daemon) - before
    assert moved.reason("DROP_DEFAULT") == LATER
    assert moved.acl[RULE].packets == 2  # SMALL, and BIG's first fragment
    assert moved.reason("PASS_LATER_FRAGMENT") == 0


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_first_delivers_the_datagram_whole(bed: tuple[Link, DaemonProcess], family: int) -> None:
    link, daemon = bed
    apply(daemon, "first")
    before = stats(daemon)
    assert exchange(link, family, ALLOWED, [SMALL, BIG]) == [SMALL, BIG]
    moved = stats(daemon) - before
    assert moved.reason("PASS_LATER_FRAGMENT") == LATER
    assert moved.acl[RULE].packets == 2, "the ACL judged SMALL and BIG's first fragment, nothing else"
    assert moved.reason("DROP_DEFAULT") == 0


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("fragments", ["judge", "first"])
def test_a_datagram_to_a_port_not_allowed_stays_out(bed: tuple[Link, DaemonProcess], family: int,
                                                     fragments: str) -> None:
    link, daemon = bed
    apply(daemon, fragments)
    before = stats(daemon)
    assert exchange(link, family, NOT_ALLOWED, [SMALL, BIG]) == []
    moved = stats(daemon) - before
    assert moved.reason("DROP_DEFAULT") == 2 + (LATER if fragments == "judge" else 0)
    assert moved.reason("PASS_LATER_FRAGMENT") == (LATER if fragments == "first" else 0)
