"""Two namespaces and one veth: a traffic source and a receiver where the daemon runs.

    sender (tgsnd)                         receiver (tgrcv: the daemon, Tidegate on fr0)
    fs0 ================================== fr0 10.60.0.1/24, lo: the flows' destinations

The sender writes frames with any source address (testbed.flows), the receiver's kernel takes
them (rp_filter off) to UDP sockets that count them. Neither side has IPv6 on the link and
neither needs ARP (frames carry the receiver's MAC), so nothing but test traffic reaches the
XDP program and its counters are exact: a default-deny counter that moves was moved by a flow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from testbed.flows import Flow, FlowTraffic
from testbed.netns import Namespace, add_address, link_mac, set_up, sysctl, veth_pair
from testbed.topology import loose_rp_filter

log = logging.getLogger(__name__)

SEND_IF, RECV_IF = "fs0", "fr0"
RECV_ADDR = "10.60.0.1/24"


@dataclass(frozen=True)
class FlowTopology:
    sender: Namespace
    receiver: Namespace
    send_if: str = SEND_IF
    recv_if: str = RECV_IF

    def traffic(self, flows: Sequence[Flow], rate: float) -> FlowTraffic:
        """`flows` from the sender to the receiver at `rate` frames/s (not started)."""
        return FlowTraffic(self.sender, self.send_if, link_mac(self.sender, self.send_if),
                           link_mac(self.receiver, self.recv_if), self.receiver, flows, rate)


@contextmanager
def build(destinations: Sequence[str] = ()) -> Iterator[FlowTopology]:
    """Both namespaces and the veth; `destinations` (addresses) are made local to the receiver."""
    with ExitStack() as stack:
        sender = stack.enter_context(Namespace(prefix="tgsnd"))
        receiver = stack.enter_context(Namespace(prefix="tgrcv"))
        loose_rp_filter(receiver)
        veth_pair(sender, SEND_IF, receiver, RECV_IF, up=False)
        for ns, ifname in ((sender, SEND_IF), (receiver, RECV_IF)):
            sysctl(ns, f"net/ipv6/conf/{ifname}/disable_ipv6", 1)  # before up: no ND, no MLD
        add_address(receiver, RECV_IF, RECV_ADDR)
        for dst in sorted(set(destinations)):
            add_address(receiver, "lo", f"{dst}/32")
        set_up(sender, SEND_IF)
        set_up(receiver, RECV_IF)
        log.info("flow topology: %s -> %s", sender.name, receiver.name)
        yield FlowTopology(sender, receiver)
