"""Reject rules with real sockets across namespaces: the peer's kernel takes Tidegate's answers
as any host's (testbed.topology: Tidegate on the appliance's underlay veth).

A TCP connect to a rejected port fails at once with ECONNREFUSED (the RST), a connected UDP
socket gets the ICMP error as EHOSTUNREACH (IPv4 administratively prohibited) or EACCES (IPv6),
and a ping is answered by an unreachable instead of timing out. veth hands XDP_TX frames only to
a peer that runs an XDP program itself, so the peer's end gets a `return XDP_PASS`.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterator

import pytest

from dataplane import abi
from dataplane.acl import acl_rule
from dataplane.kernel.attach import attach_xdp, detach_xdp
from dataplane.map_config import RuntimeConfig
from testbed import topology as t
from testbed.bench.programs import Noop
from testbed.counters import snapshot

pytestmark = [pytest.mark.root, pytest.mark.netns]

APP, PEER, APP6, PEER6 = t.APP_UNDERLAY_V4, t.PEER_UNDERLAY_V4, t.APP_UNDERLAY_V6, t.PEER_UNDERLAY_V6
PORT = 7999
QUICK = 0.5  # an answer arrives in well under a millisecond; a timeout would take the full wait


@pytest.fixture
def rejecting(dp, topo) -> Iterator[object]:
    dp.acl.replace([acl_rule(1, 10, "reject", dst=APP + "/32"), acl_rule(2, 10, "reject", dst=APP6 + "/128")])
    with topo.appliance.enter():
        dp.configure(RuntimeConfig(reject_rate=1000, reject_burst=100))
    dp.maps.reset_reject_budget()
    noop = Noop()
    try:
        with topo.peer.enter():
            attach_xdp(topo.underlay, noop.fn, "native")
        yield dp
    finally:
        with topo.peer.enter():
            detach_xdp(topo.underlay)
        noop.close()


def _socket(topo: t.Topology, family: int, kind: int) -> socket.socket:
    with topo.peer.enter():
        return socket.socket(family, kind)


@pytest.mark.parametrize("family,dst", [(socket.AF_INET, APP), (socket.AF_INET6, APP6)], ids=["ipv4", "ipv6"])
def test_tcp_connect_is_refused_at_once(rejecting, topo, family, dst):
    before = snapshot(rejecting)
    with _socket(topo, family, socket.SOCK_STREAM) as s:
        s.settimeout(QUICK * 4)
        started = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            s.connect((dst, PORT))
        assert time.monotonic() - started < QUICK, "refused by an answer, not by a timeout"
    moved = snapshot(rejecting) - before
    assert moved.reason(abi.Reason.DROP_REJECTED) >= 1
    assert moved.event(abi.Event.REJECT_SENT) >= 1


@pytest.mark.parametrize("family,dst,err", [(socket.AF_INET, APP, errno.EHOSTUNREACH),
                                            (socket.AF_INET6, APP6, errno.EACCES)], ids=["ipv4", "ipv6"])
def test_udp_gets_administratively_prohibited(rejecting, topo, family, dst, err):
    with _socket(topo, family, socket.SOCK_DGRAM) as s:
        s.settimeout(QUICK)
        s.connect((dst, PORT))  # a connected socket reports ICMP errors about its datagrams
        s.send(b"anyone there?")
        with pytest.raises(OSError) as caught:
            s.recv(64)
        assert caught.value.errno == err


def test_ping_gets_an_unreachable(rejecting, topo):
    from testbed.traffic import allow_ping_sockets

    allow_ping_sockets(topo.peer)
    with topo.peer.enter():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    with s:
        s.setsockopt(socket.SOL_IP, 11, 1)  # IP_RECVERR: errors arrive as socket errors
        s.settimeout(QUICK)
        s.connect((APP, 0))
        s.send(bytes([8, 0, 0, 0, 0, 0, 0, 1]) + b"ping")
        with pytest.raises(OSError) as caught:
            s.recv(64)
        assert caught.value.errno == errno.EHOSTUNREACH
