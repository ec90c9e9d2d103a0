"""Rules on any IP protocol number and on source ports, judged by a real daemon on real packets.

Frames built with scapy (GRE, ESP, OSPF, protocol 0, UDP and TCP with chosen source ports) go
from a sender namespace over a veth into the receiver, where a `tidegate serve` process has
Tidegate attached natively and the policy came through its gRPC API. Two witnesses per frame:
an AF_PACKET socket on the receiver's interface, which sees what XDP let through (a frame XDP
drops never reaches it), and the daemon's own counters, which say which rule judged it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from scapy.layers.inet import GRE, IP, TCP, UDP, Ether
from scapy.layers.ipsec import ESP
from scapy.packet import Raw

from control.rpc.api import pb2
from testbed.counters import ApiSnapshot
from testbed.daemon import DaemonProcess
from testbed.flow_checks import apply, attach, stats
from testbed.netns import Namespace, add_address, link_mac, set_up, sysctl, veth_pair

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

SEND_IF, RECV_IF = "pt0", "pr0"
RECV_ADDR = "10.63.0.1"
ETH_P_ALL = 0x0003
SILENCE = 0.4  # a frame not seen by then was dropped

GRE_SRC_DENIED, GRE_SRC_OTHER = "10.70.1.5", "10.70.2.5"


def _rule(rule_id: int, action: int, **match: object) -> pb2.AclRule:
    ports = {k: pb2.PortRange(low=v[0], high=v[1]) for k, v in match.items() if k in ("sport", "dport")}
    rest = {k: v for k, v in match.items() if k not in ports}
    return pb2.AclRule(id=rule_id, priority=rule_id, action=action, match=pb2.Match(**rest, **ports))


DENY, ALLOW = pb2.ACTION_DENY, pb2.ACTION_ALLOW
PROTOCOL_RULES = [
    _rule(10, DENY, src="10.70.1.0/24", protocol_number=47),  # GRE from one /24
    _rule(11, DENY, protocol=50),  # ESP, named by the open enum's number
    _rule(12, ALLOW, protocol_number=89),  # OSPF: allowed (and counted) by its own rule
    _rule(13, DENY, protocol_number=0),  # protocol 0 (IPv4 "HOPOPT")
    _rule(14, ALLOW, protocol=pb2.PROTOCOL_UDP),
]
SPORT_RULES = [
    _rule(20, DENY, protocol=pb2.PROTOCOL_UDP, sport=(5353, 5354)),
    _rule(21, DENY, protocol=pb2.PROTOCOL_TCP, sport=(1, 1023), dport=(80, 80)),
]


@pytest.fixture(scope="module")
def net(bpf_available: None) -> Iterator[tuple[Namespace, Namespace]]:
    with ExitStack() as stack:
        sender = stack.enter_context(Namespace(prefix="tgpsnd"))
        receiver = stack.enter_context(Namespace(prefix="tgprcv"))
        veth_pair(sender, SEND_IF, receiver, RECV_IF, up=False)
        for ns, ifname in ((sender, SEND_IF), (receiver, RECV_IF)):
            sysctl(ns, f"net/ipv6/conf/{ifname}/disable_ipv6", 1)  # no ND, no MLD: only test frames
        add_address(receiver, RECV_IF, f"{RECV_ADDR}/24")
        set_up(sender, SEND_IF)
        set_up(receiver, RECV_IF)
        yield sender, receiver


@pytest.fixture(scope="module")
def daemon(net: tuple[Namespace, Namespace]) -> Iterator[DaemonProcess]:
    with DaemonProcess(net[1], detach_on_exit=True) as d:
        attach(d, RECV_IF)
        yield d


class Wire:
    """Sends frames from the sender; tells which arrived at the receiver (AF_PACKET there)."""

    def __init__(self, sender: Namespace, receiver: Namespace) -> None:
        self.src_mac, self.dst_mac = link_mac(sender, SEND_IF), link_mac(receiver, RECV_IF)
        with sender.enter():
            self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self.tx.bind((SEND_IF, 0))
        with receiver.enter():
            self.rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.rx.bind((RECV_IF, 0))
        self.rx.setblocking(False)

    def close(self) -> None:
        self.tx.close()
        self.rx.close()

    def arrived(self, frames: dict[str, object]) -> set[str]:
        """Sends each frame (its name is in its payload); the names of those that arrived."""
        self._drain()
        for name, layers in frames.items():
            frame = Ether(src=self.src_mac, dst=self.dst_mac) / layers / Raw(f"tg-{name}-".encode())
            self.tx.send(bytes(frame))
        seen: set[str] = set()
        deadline = time.monotonic() + SILENCE
        while time.monotonic() < deadline:
            try:
                data = self.rx.recv(65535)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            seen |= {name for name in frames if f"tg-{name}-".encode() in data}
        return seen

    def _drain(self) -> None:
        while True:
            try:
                self.rx.recv(65535)
            except BlockingIOError:
                return


@pytest.fixture
def wire(net: tuple[Namespace, Namespace]) -> Iterator[Wire]:
    w = Wire(*net)
    try:
        yield w
    finally:
        w.close()


def _ip(src: str, proto: int | None = None) -> IP:
    fields = {} if proto is None else {"proto": proto}
    return IP(src=src, dst=RECV_ADDR, ttl=9, **fields)


def _moved(before: ApiSnapshot, after: ApiSnapshot) -> dict[int, int]:
    """Packets counted per rule between the two snapshots (rules that counted any)."""
    return {rid: c.packets for rid, c in (after - before).acl.items() if c.packets}


def test_rules_on_any_protocol_number_judge_real_packets(daemon: DaemonProcess, wire: Wire) -> None:
    apply(daemon, pb2.Policy(acl=PROTOCOL_RULES))
    before = stats(daemon)
    frames = {
        "gre-denied": _ip(GRE_SRC_DENIED) / GRE(proto=0x0800) / _ip("192.0.2.1") / UDP(sport=1, dport=2),
        "gre-other": _ip(GRE_SRC_OTHER) / GRE(proto=0x0800) / _ip("192.0.2.1") / UDP(sport=1, dport=2),
        "esp": _ip("10.70.3.5") / ESP(spi=0x1001, seq=1),
        "ospf": _ip("10.70.4.5", proto=89),
        "proto0": _ip("10.70.5.5", proto=0),
        "udp": _ip("10.70.6.5") / UDP(sport=4000, dport=4001),
    }
    arrived = wire.arrived(frames)
    assert arrived == {"gre-other", "ospf", "udp"}
    moved = _moved(before, stats(daemon))
    assert moved == {10: 1, 11: 1, 12: 1, 13: 1, 14: 1}, "each frame counted by its own rule only"


def test_a_policy_read_back_names_the_protocol_numbers(daemon: DaemonProcess) -> None:
    apply(daemon, pb2.Policy(acl=PROTOCOL_RULES))
    got = daemon.policy.GetPolicy(pb2.GetPolicyRequest()).policy
    numbers = {r.id: (r.match.protocol, r.match.protocol_number) for r in got.acl
               if r.match.HasField("protocol_number")}
    assert numbers == {10: (47, 47), 11: (50, 50), 12: (89, 89), 13: (0, 0), 14: (17, 17)}


def test_source_port_ranges_judge_real_packets(daemon: DaemonProcess, wire: Wire) -> None:
    apply(daemon, pb2.Policy(acl=SPORT_RULES))
    before = stats(daemon)
    frames = {
        "udp-5353": _ip("10.71.0.5") / UDP(sport=5353, dport=9),
        "udp-5354": _ip("10.71.0.5") / UDP(sport=5354, dport=9),
        "udp-5355": _ip("10.71.0.5") / UDP(sport=5355, dport=9),
        "udp-5352": _ip("10.71.0.5") / UDP(sport=5352, dport=9),
        "tcp-5353": _ip("10.71.0.5") / TCP(sport=5353, dport=9, flags="S"),
        "tcp-privileged-80": _ip("10.71.0.5") / TCP(sport=1023, dport=80, flags="S"),
        "tcp-privileged-81": _ip("10.71.0.5") / TCP(sport=1023, dport=81, flags="S"),
        "tcp-high-80": _ip("10.71.0.5") / TCP(sport=1024, dport=80, flags="S"),
    }
    arrived = wire.arrived(frames)
    assert arrived == {"udp-5355", "udp-5352", "tcp-5353", "tcp-privileged-81", "tcp-high-80"}
    assert _moved(before, stats(daemon)) == {20: 2, 21: 1}


def test_source_ports_on_a_protocol_without_ports_are_refused_naming_the_field(daemon: DaemonProcess) -> None:
    import grpc

    bad = pb2.Policy(acl=[*PROTOCOL_RULES, _rule(30, DENY, protocol_number=47, sport=(1, 2))])
    with pytest.raises(grpc.RpcError) as info:
        apply(daemon, bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("policy.acl[5].match.sport: sport 1-2 needs protocol tcp, udp or")
