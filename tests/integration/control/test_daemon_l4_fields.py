"""ICMP type and TCP SYN rules through a real daemon, judged with real traffic (issue 14 item 2).

A namespace with Tidegate attached (natively, by a `tidegate serve` process) to its eth0, and a
peer namespace behind the veth. The policy, applied through ApplyPolicy, is what an operator
writes to refuse pings and new inbound connections while the namespace's own pings and
connections out keep working: their replies (echo reply, SYN-ACK, ACK) are not what the rules
name. The rules' counters (GetStats) say which rule judged what.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from control.rpc.api import pb2
from testbed.counters import ApiSnapshot, api_snapshot
from testbed.daemon import RPC_TIMEOUT, DaemonProcess
from testbed.netns import Link, Namespace, linked_namespaces
from testbed.traffic import ping

pytestmark = [pytest.mark.root, pytest.mark.netns]

IFNAME, PEER_IFNAME = "eth0", "peer0"
ADDR, PEER_ADDR = "10.77.0.1", "10.77.0.2"
PING_RULE, SYN_RULE = 1, 2
PORT_IN, PORT_OUT = 5555, 5556
CONNECT_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def bed(daemon_on_veth: Any) -> Iterator[tuple[Link, DaemonProcess]]:
    with linked_namespaces("tgl4", IFNAME, PEER_IFNAME, ADDR, PEER_ADDR) as link, \
            daemon_on_veth(link.ns, IFNAME) as daemon:
        rules = [
            pb2.AclRule(id=PING_RULE, action=pb2.ACTION_DENY,
                        match=pb2.Match(protocol=pb2.PROTOCOL_ICMP, icmp_type=8, icmp_code=0)),
            pb2.AclRule(id=SYN_RULE, action=pb2.ACTION_DENY,
                        match=pb2.Match(protocol=pb2.PROTOCOL_TCP, syn=True)),
        ]
        daemon.policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=pb2.Policy(acl=rules)), timeout=RPC_TIMEOUT)
        yield link, daemon


def _stats(daemon: DaemonProcess) -> ApiSnapshot:
    return api_snapshot(daemon.stats.GetStats(pb2.GetStatsRequest(), timeout=RPC_TIMEOUT))


def _connects(client_ns: Namespace, server_ns: Namespace, server_addr: str, port: int) -> bool:
    """Whether a TCP connection from client_ns to server_addr:port is established (and accepted)."""
    with server_ns.enter():
        server = socket.create_server((server_addr, port))
    with client_ns.enter():
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with server, client:
        client.settimeout(CONNECT_TIMEOUT)
        try:
            client.connect((server_addr, port))
        except OSError:
            return False
        server.settimeout(CONNECT_TIMEOUT)
        conn, _ = server.accept()
        conn.close()
        return True


def test_pings_in_are_refused_and_replies_to_our_pings_pass(bed: tuple[Link, DaemonProcess]) -> None:
    link, daemon = bed
    before = _stats(daemon)
    assert ping(link.peer, ADDR, count=2).received == 0, "an echo request (type 8) is denied"
    assert ping(link.ns, PEER_ADDR, count=2).received == 2, "an echo reply (type 0) is not"
    after = _stats(daemon)
    assert after.acl[PING_RULE].packets - before.acl[PING_RULE].packets == 2
    assert after.acl[SYN_RULE].packets == before.acl[SYN_RULE].packets


def test_new_connections_in_are_refused_and_ours_out_work(bed: tuple[Link, DaemonProcess]) -> None:
    link, daemon = bed
    before = _stats(daemon)
    assert not _connects(link.peer, link.ns, ADDR, PORT_IN), "a SYN into the namespace is denied"
    syns = _stats(daemon).acl[SYN_RULE].packets - before.acl[SYN_RULE].packets
    assert syns >= 1, "the SYN rule judged the connection attempt (and its retransmissions)"
    assert _connects(link.ns, link.peer, PEER_ADDR, PORT_OUT), "SYN-ACK and ACKs coming back are no SYN"
    assert _stats(daemon).acl[SYN_RULE].packets - before.acl[SYN_RULE].packets == syns
