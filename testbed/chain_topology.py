"""The service-chaining topology: a tunnel peer, the appliance, a firewall service and an upstream.

    peer (tgpeer)          appliance (tgapp: the daemon)                  firewall (tgfw)
    vx100  VNI 100         ul0  [Tidegate: forward leg]     fw0 10.70.0.1 ----- in0  10.70.0.2
    10.100.0.1 (.129       vx100 10.100.0.2 (replies)       fw1 10.71.0.1 ----- out0 10.71.0.2
      denied)              ^                                [Tidegate: return leg]  ip_forward,
    ul0 192.0.2.1 ======== ul0 192.0.2.2                                            nft counter
                                                            up0 10.80.0.1 ----- eth0 10.80.0.2
                                                                                upstream (tgup),
                                                                                owns 198.51.100.10

The peer's kernel vxlan device tunnels inner traffic for the upstream (198.51.100.0/24) to the
appliance. Tidegate, attached by the daemon to ul0, decaps it at XDP, drops the denied prefix and
marks the rest (forward leg); `ip rule fwmark` sends it through the leg's table to the firewall's
address on link 1 (fw0/in0). The firewall forwards it (ip_forward; an nftables counter in its
forward hook counts what it saw) back to the appliance on link 2 (out0/fw1), where Tidegate,
attached to fw1 too, marks it again (return_path leg) and the second table routes it to the
upstream. Without the chain the main table sends it to the upstream directly. The upstream
answers by its default route to the appliance, whose own vxlan device (as in testbed.topology)
tunnels the reply back to the peer. The TTL on arrival tells the path: 63 direct, 61 through the
firewall (three routers).

The policy itself is not set up here: it is what examples/policy.yaml says, pushed through the
daemon's API. The constants below are the names and addresses that file uses (a test checks).
Neighbours are static, rp_filter is off, and the appliance-firewall-upstream links carry no
IPv6, so nothing but test traffic crosses them and the firewall's counter is exact.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from control.policy.models import Policy
from testbed import topology as t
from testbed.netns import (
    Namespace,
    add_address,
    add_neighbour,
    add_route,
    enable_forwarding,
    link_mac,
    set_up,
    sysctl,
    veth_pair,
)
from testbed.topology import build_tunnel, build_underlay, loose_rp_filter

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_POLICY = REPO_ROOT / "examples" / "policy.yaml"

UNDERLAY = t.UNDERLAY
TUNNEL = t.TUNNEL_V4                 # VNI 100 over the IPv4 underlay
PEER_HOST = t.PEER_HOST              # 10.100.0.1: allowed
PEER_DENIED = t.PEER_DENIED          # 10.100.0.129: inside DENIED_PREFIX
DENIED_PREFIX = t.DENIED_PREFIX      # 10.100.0.128/25
PEER_NET = "10.100.0.0/24"           # the peer's inner network
APP_INNER = t.APP_INNER              # 10.100.0.2: the appliance's inner address
UPSTREAM_ADDR = "198.51.100.10"
UPSTREAM_NET = "198.51.100.0/24"

# The example policy's identifiers (examples/policy.yaml).
DENY_RULE, ALLOW_RULE = 10, 20
VNI = TUNNEL.vni
CHAIN = "fw"
FORWARD_MARK, FORWARD_TABLE = 0x10, 1010
RETURN_MARK, RETURN_TABLE = 0x11, 1011

NFT_TABLE, NFT_COUNTER = "tgfw", "forwarded"
TTL_DIRECT, TTL_CHAINED = 63, 61  # Linux sends with 64; each router on the way takes one


@dataclass(frozen=True)
class Link:
    """A veth from the appliance (`app_if`, `app_ip`) to a neighbour namespace (`far_if`, `far_ip`)."""

    app_if: str
    app_ip: str
    far_if: str
    far_ip: str
    plen: int = 30


SERVICE_IN = Link("fw0", "10.70.0.1", "in0", "10.70.0.2")    # towards the firewall (link 1)
SERVICE_OUT = Link("fw1", "10.71.0.1", "out0", "10.71.0.2")  # back from the firewall (link 2)
UPSTREAM = Link("up0", "10.80.0.1", "eth0", "10.80.0.2")

NFT_RULESET = f"""
table inet {NFT_TABLE} {{
    counter {NFT_COUNTER} {{}}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        counter name "{NFT_COUNTER}"
    }}
}}
"""


@dataclass(frozen=True)
class ChainTopology:
    peer: Namespace
    appliance: Namespace
    firewall: Namespace
    upstream: Namespace
    underlay: str = UNDERLAY
    service_in: Link = SERVICE_IN
    service_out: Link = SERVICE_OUT
    upstream_link: Link = UPSTREAM

    @property
    def namespaces(self) -> tuple[Namespace, ...]:
        return (self.peer, self.appliance, self.firewall, self.upstream)

    @property
    def attached(self) -> tuple[str, ...]:
        """The appliance interfaces Tidegate is attached to: the underlay and the return link."""
        return (self.underlay, self.service_out.app_if)


@contextmanager
def build() -> Iterator[ChainTopology]:
    """Creates the four namespaces and everything in them; removes them all on exit."""
    with ExitStack() as stack:
        peer, app, fw, up = (stack.enter_context(Namespace(prefix=p))
                             for p in ("tgpeer", "tgapp", "tgfw", "tgup"))
        topo = ChainTopology(peer, app, fw, up)
        log.info("building chain topology in namespaces %s", " ".join(n.name for n in topo.namespaces))
        for ns in topo.namespaces:
            loose_rp_filter(ns)
        enable_forwarding(app)
        enable_forwarding(fw)
        build_underlay(peer, app, UNDERLAY)
        build_tunnel(peer, app, UNDERLAY, TUNNEL)
        for link, far in ((SERVICE_IN, fw), (SERVICE_OUT, fw), (UPSTREAM, up)):
            _link(app, far, link)
        _firewall(fw)
        _routing(topo)
        try:
            yield topo
        finally:
            log.info("tearing chain topology down")


def _link(app: Namespace, far: Namespace, link: Link) -> None:
    """An IPv4-only veth with static neighbours (IPv6 off before it is up: no ND/MLD ever)."""
    veth_pair(app, link.app_if, far, link.far_if, up=False)
    for ns, ifname, ip in ((app, link.app_if, link.app_ip), (far, link.far_if, link.far_ip)):
        sysctl(ns, f"net/ipv6/conf/{ifname}/disable_ipv6", 1)
        add_address(ns, ifname, f"{ip}/{link.plen}")
        set_up(ns, ifname)
    add_neighbour(app, link.app_if, link.far_ip, link_mac(far, link.far_if))
    add_neighbour(far, link.far_if, link.app_ip, link_mac(app, link.app_if))


def _firewall(fw: Namespace) -> None:
    """Forwards the upstream's traffic back out on link 2; everything else goes back on link 1."""
    add_route(fw, UPSTREAM_NET, via=SERVICE_OUT.app_ip, dev=SERVICE_OUT.far_if)
    add_route(fw, "default", via=SERVICE_IN.app_ip, dev=SERVICE_IN.far_if)
    fw.run(["nft", "-f", "-"], input=NFT_RULESET)


def _routing(topo: ChainTopology) -> None:
    add_route(topo.peer, UPSTREAM_NET, via=APP_INNER, dev=TUNNEL.ifname)
    add_route(topo.appliance, UPSTREAM_NET, via=UPSTREAM.far_ip, dev=UPSTREAM.app_if)
    add_address(topo.upstream, "lo", f"{UPSTREAM_ADDR}/32")
    add_route(topo.upstream, "default", via=UPSTREAM.app_ip, dev=UPSTREAM.far_if)


# --- observing -----------------------------------------------------------------------------------


def service_packets(topo: ChainTopology) -> int:
    """Packets the firewall has forwarded (its nftables counter)."""
    out = topo.firewall.run(["nft", "-j", "list", "counter", "inet", NFT_TABLE, NFT_COUNTER]).stdout
    for item in json.loads(out)["nftables"]:
        if "counter" in item:
            return int(item["counter"]["packets"])
    raise LookupError(f"no counter {NFT_COUNTER} in table inet {NFT_TABLE} of {topo.firewall.name}")


def kernel_decapped(topo: ChainTopology) -> int:
    """Packets the appliance's own vxlan device decapped (what Tidegate left to the kernel)."""
    return t.link_rx_packets(topo.appliance, TUNNEL.ifname)


def load_example_policy(path: Path = EXAMPLE_POLICY) -> Policy:
    """examples/policy.yaml as the policy model (what `tidegate policy apply -f` sends)."""
    return Policy.model_validate(yaml.safe_load(path.read_text()))
