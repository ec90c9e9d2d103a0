"""A fleet of appliances in namespaces, each forwarding traffic, all reaching etcd over a link.

              client ns                 node i (appliance, Tidegate on in0)           server ns
    c<i> 10.80.i.1/24 ======== in0 10.80.i.2   out0 10.81.i.2 ======== s<i> 10.81.i.1/24
                                          et0 10.77.i.2
                                           ||
                                      h<i> 10.77.i.1/24   hub ns (etcd listens on every address)

A datagram from the client's 10.80.i.1 to the server's 10.81.i.1 is forwarded by node i and
judged by the policy its daemon enforces; `probe(node, port)` sends some and counts what
arrives. etcd reaches node i only over h<i>/et0: `partition(node)` takes h<i> down (the node's
data path stays up), `heal(node)` brings it back. Neighbour entries are static, so nothing
waits on ARP; all names are unique (testbed.netns) and everything is torn down on exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from testbed.netns import (
    Namespace,
    add_address,
    add_neighbour,
    add_route,
    enable_forwarding,
    link_mac,
    set_down,
    set_up,
    veth_pair,
)
from testbed.traffic import receive_udp, send_udp, udp_socket

REPO_ROOT = Path(__file__).resolve().parent.parent
INGRESS = "in0"
PROBE_DATAGRAMS = 3
PROBE_SILENCE = 0.5


@dataclass(frozen=True)
class FleetNode:
    index: int
    name: str            # the node's name in etcd
    ns: Namespace        # the appliance
    hub_link: str        # its link's name in the hub namespace

    @property
    def etcd_host(self) -> str:
        """The hub's address as this node reaches it."""
        return f"10.77.{self.index}.1"

    @property
    def client_addr(self) -> str:
        return f"10.80.{self.index}.1"

    @property
    def server_addr(self) -> str:
        return f"10.81.{self.index}.1"


@dataclass
class FleetTopology:
    hub: Namespace
    client: Namespace
    server: Namespace
    nodes: list[FleetNode] = field(default_factory=list)

    def partition(self, node: FleetNode) -> None:
        set_down(self.hub, node.hub_link)

    def heal(self, node: FleetNode) -> None:
        set_up(self.hub, node.hub_link)

    def probe(self, node: FleetNode, port: int, count: int = PROBE_DATAGRAMS) -> int:
        """UDP datagrams from the client through `node` to the server's `port`: how many arrived."""
        receiver = udp_socket(self.server, node.server_addr, port)
        sender = udp_socket(self.client, node.client_addr)
        try:
            send_udp(sender, node.server_addr, port, [f"probe {i}".encode() for i in range(count)])
            return len(receive_udp(receiver, expect=count + 1, timeout=PROBE_SILENCE))
        finally:
            sender.close()
            receiver.close()

    def cli(self, *args: str, endpoints: Sequence[str], timeout: float = 120.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """`tidegate ARGS` run in the hub namespace (where etcd's loopback is) against `endpoints`;
        the exit status is the caller's to judge."""
        env = dict(os.environ, TIDEGATE_ETCD_ENDPOINTS=",".join(endpoints))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        cmd = ["ip", "netns", "exec", self.hub.name, sys.executable, "-m", "control.cli", *args]
        return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                              input=input, check=False)


def _node(topo: FleetTopology, index: int, stack: ExitStack) -> FleetNode:
    node = FleetNode(index, f"n{index}", stack.enter_context(Namespace(prefix="tgfn")), f"h{index}")
    i, ns = index, node.ns
    enable_forwarding(ns)
    veth_pair(topo.hub, node.hub_link, ns, "et0")
    add_address(topo.hub, node.hub_link, f"10.77.{i}.1/24")
    add_address(ns, "et0", f"10.77.{i}.2/24")
    veth_pair(topo.client, f"c{i}", ns, INGRESS)
    add_address(topo.client, f"c{i}", f"{node.client_addr}/24")
    add_address(ns, INGRESS, f"10.80.{i}.2/24")
    veth_pair(ns, "out0", topo.server, f"s{i}")
    add_address(ns, "out0", f"10.81.{i}.2/24")
    add_address(topo.server, f"s{i}", f"{node.server_addr}/24")
    add_route(topo.client, f"10.81.{i}.0/24", via=f"10.80.{i}.2", dev=f"c{i}")
    add_route(topo.server, f"10.80.{i}.0/24", via=f"10.81.{i}.2", dev=f"s{i}")
    add_neighbour(topo.client, f"c{i}", f"10.80.{i}.2", link_mac(ns, INGRESS))
    add_neighbour(ns, INGRESS, node.client_addr, link_mac(topo.client, f"c{i}"))
    add_neighbour(ns, "out0", node.server_addr, link_mac(topo.server, f"s{i}"))
    add_neighbour(topo.server, f"s{i}", f"10.81.{i}.2", link_mac(ns, "out0"))
    add_neighbour(topo.hub, node.hub_link, f"10.77.{i}.2", link_mac(ns, "et0"))
    add_neighbour(ns, "et0", node.etcd_host, link_mac(topo.hub, node.hub_link))
    return node


@contextmanager
def build(count: int) -> Iterator[FleetTopology]:
    with ExitStack() as stack:
        hub, client, server = (stack.enter_context(Namespace(prefix=p)) for p in ("tgfh", "tgfc", "tgfs"))
        topo = FleetTopology(hub, client, server)
        topo.nodes = [_node(topo, i, stack) for i in range(count)]
        yield topo
