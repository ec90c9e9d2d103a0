"""A daemon SIGKILLed with thousands of rules in place restarts into them by adopting the pinned
maps as they stand: no match entry rewritten (every map write of the new process counted from
outside it, testbed.map_writes), counters continuing, packets judged throughout.

The sender sends frames that one deny rule among FILLER others matches; the receiver's daemon
(native XDP) is killed with SIGKILL and started again on the same state directory and pins.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from scapy.layers.inet import IP, UDP, Ether
from scapy.packet import Raw

from control.rpc.api import pb2
from testbed.bench import rules
from testbed.daemon import DaemonProcess
from testbed.flow_checks import apply, attach, stats
from testbed.map_writes import MapWrites
from testbed.netns import Namespace, add_address, link_mac, set_up, sysctl, veth_pair

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

SEND_IF, RECV_IF = "ra0", "rr0"
RECV_ADDR = "10.64.0.1"
FILLER = 5_000
PROBE_RULE, PROBE_SRC, PROBE_PORT = 7, "10.73.0.9", 9
MATCH_MAPS = ("acl", "cls", "match")  # name prefixes of the match tables' maps


@pytest.fixture(scope="module")
def net(bpf_available: None) -> Iterator[tuple[Namespace, Namespace]]:
    with ExitStack() as stack:
        sender = stack.enter_context(Namespace(prefix="tgasnd"))
        receiver = stack.enter_context(Namespace(prefix="tgarcv"))
        veth_pair(sender, SEND_IF, receiver, RECV_IF, up=False)
        for ns, ifname in ((sender, SEND_IF), (receiver, RECV_IF)):
            sysctl(ns, f"net/ipv6/conf/{ifname}/disable_ipv6", 1)
        add_address(receiver, RECV_IF, f"{RECV_ADDR}/24")
        set_up(sender, SEND_IF)
        set_up(receiver, RECV_IF)
        yield sender, receiver


@pytest.fixture
def daemon(net: tuple[Namespace, Namespace]) -> Iterator[DaemonProcess]:
    with DaemonProcess(net[1], detach_on_exit=True) as d:
        attach(d, RECV_IF)
        filler = rules.proto_policy(rules.generate(FILLER, seed=11))
        port = pb2.PortRange(low=PROBE_PORT, high=PROBE_PORT)
        probe = pb2.AclRule(id=PROBE_RULE, priority=0, action=pb2.ACTION_DENY,
                            match=pb2.Match(src=f"{PROBE_SRC}/32", protocol=pb2.PROTOCOL_UDP, dport=port))
        filler.acl.append(probe)
        apply(d, filler)
        yield d


def _send(sender: Namespace, receiver: Namespace, count: int) -> None:
    frame = (Ether(src=link_mac(sender, SEND_IF), dst=link_mac(receiver, RECV_IF)) /
             IP(src=PROBE_SRC, dst=RECV_ADDR) / UDP(sport=4000, dport=PROBE_PORT) / Raw(b"probe"))
    with sender.enter():
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        tx.bind((SEND_IF, 0))
        for _ in range(count):
            tx.send(bytes(frame))
    finally:
        tx.close()
    time.sleep(0.2)


def _probe_count(d: DaemonProcess) -> int:
    counter = stats(d).acl.get(PROBE_RULE)
    return 0 if counter is None else counter.packets


def test_counters_continue_across_a_sigkill(daemon: DaemonProcess, net: tuple[Namespace, Namespace]) -> None:
    _send(*net, 5)
    assert _probe_count(daemon) == 5
    daemon.kill(signal.SIGKILL)
    _send(*net, 3)  # no daemon: the pinned program still judges, and counts
    daemon.start()
    _send(*net, 2)
    assert _probe_count(daemon) == 10
    assert len(daemon.policy.ListAclRules(pb2.ListAclRulesRequest()).rules) == FILLER + 1


def test_a_restart_writes_no_match_entry(daemon: DaemonProcess) -> None:
    daemon.kill(signal.SIGKILL)
    with MapWrites() as writes:
        daemon.start()
    assert daemon.proc is not None
    written = writes.by_name(daemon.proc.pid)
    assert any(name.startswith(MATCH_MAPS) for name in written), f"no match map found among {sorted(written)}"
    rewritten = {name: n for name, n in written.items() if name.startswith(MATCH_MAPS) and n}
    assert rewritten == {}, f"the restart wrote match entries: {rewritten}"
