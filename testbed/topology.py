"""The integration topology: a tunnel peer, the Tidegate appliance, and two paths behind it.

    peer                       appliance (Tidegate XDP + TC on ul0)         service  (fwmark path)
    vx100 (VNI 100, v4 ul) --+                                      svc0 -- eth0, owns 203.0.113.10
    vx200 (VNI 200, v6 ul) --+ ul0 ===== veth underlay ===== ul0
                               192.0.2.1/2001:db8:1::1   .2/::2     dir0 -- eth0, owns 203.0.113.10
                                                                            direct   (main table)

Inbound: the peer's kernel vxlan devices encapsulate; Tidegate decaps at XDP on the appliance's
underlay veth, judges the inner packet by the ACL and classifies it; TC turns the class into
skb->mark. Inner packets for the appliance's own inner addresses are delivered locally; packets
for 203.0.113.10 are forwarded: marked ones by `ip rule fwmark SERVICE_MARK` through table
SERVICE_TABLE to the service namespace, unmarked ones by the main table to the direct namespace.
Both own 203.0.113.10, so a socket in each shows which path a packet took.

Return path: Tidegate only terminates tunnels on ingress; the appliance answers through a kernel
vxlan device of its own with the same VNI (vx100/vx200 there too), which owns the appliance's
inner addresses. Replies are thus encapsulated like the requests and reach the peer's vxlan
device, the symmetric path a real tunnel endpoint has (a plain routed reply would need the peer
to accept inner addresses arriving unencapsulated on its underlay). That device also listens on
the VxLAN port, so whatever Tidegate does not decap would be decapped by the kernel instead:
`link_rx_packets(appliance, "vx100")` staying put is how a test tells that Tidegate did it.

Every neighbour entry is static (no ARP/ND timing), rp_filter is off (decapped packets arrive on
ul0 but their sources route via the vxlan devices), and the vxlan device that carries only IPv4
has IPv6 disabled so no ND/MLD chatter moves its counters.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from pyroute2.netlink.exceptions import NetlinkError

from dataplane.kernel.attach import XdpMode
from dataplane.kernel.build_settings import Capacities, DataplaneSettings
from dataplane.kernel.interface import Dataplane
from dataplane.kernel.owner import owned_dirs
from dataplane.map_config import RuntimeConfig
from testbed import cleanup
from testbed.netns import (
    Namespace,
    add_address,
    add_neighbour,
    add_route,
    enable_forwarding,
    link_mac,
    lookup_ifindex,
    set_up,
    sysctl,
    veth_pair,
)
from testbed.vxlan import add_vxlan

log = logging.getLogger(__name__)

UNDERLAY = "ul0"  # the appliance interface Tidegate is attached to (and its peer-side twin)
PEER_UNDERLAY_V4, APP_UNDERLAY_V4 = "192.0.2.1", "192.0.2.2"
PEER_UNDERLAY_V6, APP_UNDERLAY_V6 = "2001:db8:1::1", "2001:db8:1::2"
UNDERLAY_V4_LEN, UNDERLAY_V6_LEN = 24, 64
PEER_UNDERLAY_DENIED = "192.0.2.129"  # a second, plain (untunnelled) source on the peer's underlay
DENIED_UNDERLAY_PREFIX = "192.0.2.128/25"

# Roles of the peer's inner source addresses (the demo loads all three policies at once).
PEER_HOST = "10.100.0.1"            # ordinary host: allowed, unmarked
PEER_CLASSIFIED = "10.100.0.66"     # inside CLASSIFIED_PREFIX: marked for the service
PEER_DENIED = "10.100.0.129"        # inside DENIED_PREFIX: dropped at XDP
CLASSIFIED_PREFIX = "10.100.0.64/26"
DENIED_PREFIX = "10.100.0.128/25"
APP_INNER = "10.100.0.2"            # the appliance's inner address on VNI 100
PEER6_HOST_V4, APP6_INNER_V4 = "10.200.0.1", "10.200.0.2"  # inner IPv4 over the IPv6 underlay
PEER6_HOST, PEER6_DENIED, APP6_INNER = "fd00:200::1", "fd00:200::ff01", "fd00:200::2"
DENIED6_PREFIX = "fd00:200::ff00/120"

SERVICE_ADDR = "203.0.113.10"  # owned by both the service and the direct namespace
SERVICE_NET = "203.0.113.0/24"
SERVICE_MARK = 0x10
SERVICE_TABLE = 100
SERVICE_RULE_PRIORITY = 1000
RTPROT_TESTBED = 0xBB  # tags the testbed's rules so they can be told from anyone else's
SVC_LINK = ("svc0", "10.50.0.1", "10.50.0.2", 30)  # appliance side, far side, prefix length
DIRECT_LINK = ("dir0", "10.60.0.1", "10.60.0.2", 30)
FAR_IFNAME = "eth0"
PIN_ROOT_PREFIX = "/sys/fs/bpf/tidegate-test-"


@dataclass(frozen=True)
class TunnelPlan:
    """One kernel vxlan device on each side of the underlay, with the same VNI."""

    ifname: str
    vni: int
    peer_underlay: str
    app_underlay: str
    peer_mac: str
    app_mac: str
    peer_inner: tuple[str, ...]  # CIDRs on the peer's device
    app_inner: tuple[str, ...]   # CIDRs on the appliance's device

    @property
    def carries_ipv6(self) -> bool:
        return any(ipaddress.ip_interface(c).version == 6 for c in self.peer_inner + self.app_inner)


TUNNEL_V4 = TunnelPlan(
    "vx100", 100, PEER_UNDERLAY_V4, APP_UNDERLAY_V4, "02:00:00:64:00:01", "02:00:00:64:00:02",
    peer_inner=(f"{PEER_HOST}/24", f"{PEER_CLASSIFIED}/24", f"{PEER_DENIED}/24"),
    app_inner=(f"{APP_INNER}/24",),
)
TUNNEL_V6 = TunnelPlan(
    "vx200", 200, PEER_UNDERLAY_V6, APP_UNDERLAY_V6, "02:00:00:c8:00:01", "02:00:00:c8:00:02",
    peer_inner=(f"{PEER6_HOST_V4}/24", f"{PEER6_HOST}/64", f"{PEER6_DENIED}/64"),
    app_inner=(f"{APP6_INNER_V4}/24", f"{APP6_INNER}/64"),
)
TUNNELS = (TUNNEL_V4, TUNNEL_V6)


@dataclass(frozen=True)
class Topology:
    peer: Namespace
    appliance: Namespace
    service: Namespace
    direct: Namespace
    underlay: str = UNDERLAY
    tunnels: tuple[TunnelPlan, ...] = TUNNELS

    def tunnel(self, vni: int) -> TunnelPlan:
        return next(t for t in self.tunnels if t.vni == vni)


# --- building ------------------------------------------------------------------------------------


@contextmanager
def build() -> Iterator[Topology]:
    """Creates the four namespaces and everything in them; removes them all on exit."""
    with ExitStack() as stack:
        peer, app, svc, direct = (stack.enter_context(Namespace(prefix=p))
                                  for p in ("tgpeer", "tgapp", "tgsvc", "tgdir"))
        topo = Topology(peer, app, svc, direct)
        log.info("building topology in namespaces %s", " ".join(n.name for n in _namespaces(topo)))
        for ns in _namespaces(topo):
            loose_rp_filter(ns)
        enable_forwarding(topo.appliance)
        build_underlay(topo.peer, topo.appliance, topo.underlay)
        for plan in topo.tunnels:
            build_tunnel(topo.peer, topo.appliance, topo.underlay, plan)
        _far_side(topo.appliance, topo.service, SVC_LINK)
        _far_side(topo.appliance, topo.direct, DIRECT_LINK)
        _routing(topo)
        try:
            yield topo
        finally:
            log.info("tearing topology down")


def _namespaces(topo: Topology) -> tuple[Namespace, ...]:
    return (topo.peer, topo.appliance, topo.service, topo.direct)


def loose_rp_filter(ns: Namespace) -> None:
    """Before any link exists, so every interface inherits rp_filter=0 from "default"."""
    for scope in ("all", "default"):
        sysctl(ns, f"net.ipv4.conf.{scope}.rp_filter", 0)


def build_underlay(peer: Namespace, app: Namespace, ifname: str = UNDERLAY) -> None:
    """The underlay veth `ifname` between peer and appliance: addresses, static neighbours."""
    veth_pair(peer, ifname, app, ifname)
    for ns, v4, v6 in ((peer, PEER_UNDERLAY_V4, PEER_UNDERLAY_V6), (app, APP_UNDERLAY_V4, APP_UNDERLAY_V6)):
        add_address(ns, ifname, f"{v4}/{UNDERLAY_V4_LEN}")
        add_address(ns, ifname, f"{v6}/{UNDERLAY_V6_LEN}")
    add_address(peer, ifname, f"{PEER_UNDERLAY_DENIED}/{UNDERLAY_V4_LEN}")
    peer_mac, app_mac = link_mac(peer, ifname), link_mac(app, ifname)
    for ip in (APP_UNDERLAY_V4, APP_UNDERLAY_V6):
        add_neighbour(peer, ifname, ip, app_mac)
    for ip in (PEER_UNDERLAY_V4, PEER_UNDERLAY_V6):
        add_neighbour(app, ifname, ip, peer_mac)


def build_tunnel(peer: Namespace, app: Namespace, underlay: str, plan: TunnelPlan) -> None:
    """The kernel vxlan device of `plan` on both sides of the underlay, with static neighbours."""
    sides = ((peer, plan.peer_underlay, plan.app_underlay, plan.peer_mac, plan.peer_inner),
             (app, plan.app_underlay, plan.peer_underlay, plan.app_mac, plan.app_inner))
    for ns, local, remote, mac, inner in sides:
        add_vxlan(ns, plan.ifname, vni=plan.vni, local=local, remote=remote, underlay_dev=underlay,
                  mac=mac, up=False)
        if not plan.carries_ipv6:  # no link-local address, hence no RS/MLD over the tunnel
            sysctl(ns, f"net/ipv6/conf/{plan.ifname}/disable_ipv6", 1)
        for cidr in inner:
            add_address(ns, plan.ifname, cidr)
        set_up(ns, plan.ifname)
    for ns, far_inner, far_mac in ((peer, plan.app_inner, plan.app_mac),
                                   (app, plan.peer_inner, plan.peer_mac)):
        for cidr in far_inner:
            add_neighbour(ns, plan.ifname, str(ipaddress.ip_interface(cidr).ip), far_mac)


def _far_side(app: Namespace, far: Namespace, link: tuple[str, str, str, int]) -> None:
    """A veth from the appliance to `far`, which owns SERVICE_ADDR and routes back by default."""
    ifname, app_ip, far_ip, plen = link
    veth_pair(app, ifname, far, FAR_IFNAME)
    add_address(app, ifname, f"{app_ip}/{plen}")
    add_address(far, FAR_IFNAME, f"{far_ip}/{plen}")
    add_address(far, "lo", f"{SERVICE_ADDR}/32")
    add_neighbour(app, ifname, far_ip, link_mac(far, FAR_IFNAME))
    add_neighbour(far, FAR_IFNAME, app_ip, link_mac(app, ifname))
    add_route(far, "default", via=app_ip, dev=FAR_IFNAME)


def _routing(topo: Topology) -> None:
    app = topo.appliance
    add_route(topo.peer, SERVICE_NET, via=APP_INNER, dev=TUNNEL_V4.ifname)
    add_route(app, SERVICE_NET, via=DIRECT_LINK[2], dev=DIRECT_LINK[0])
    add_route(app, SERVICE_NET, via=SVC_LINK[2], dev=SVC_LINK[0], table=SERVICE_TABLE)
    add_fwmark_rule(app, SERVICE_MARK, SERVICE_TABLE, SERVICE_RULE_PRIORITY)


def add_fwmark_rule(ns: Namespace, mark: int, table: int, priority: int,
                    family: int = socket.AF_INET) -> None:
    """`ip rule add fwmark MARK/0xffffffff lookup TABLE priority PRIORITY` (explicit everything:
    pyroute2 would otherwise pick priority 32000). An identical existing rule is accepted."""
    with ns.ipr() as ipr:
        try:
            ipr.rule("add", family=family, priority=priority, table=table, fwmark=mark,
                     fwmask=0xFFFFFFFF, protocol=RTPROT_TESTBED)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise


# --- observing -----------------------------------------------------------------------------------


def link_rx_packets(ns: Namespace, ifname: str) -> int:
    """Packets the interface has received (for a vxlan device: packets the kernel decapped)."""
    with ns.ipr() as ipr:
        link = ipr.get_links(lookup_ifindex(ipr, ns, ifname))[0]
        return int(link.get_attr("IFLA_STATS64")["rx_packets"])


# --- Tidegate on the appliance ---------------------------------------------------------------------


def unique_pin_root() -> Path:
    """A pin root of its own: bpffs is shared by every namespace, and ifnames repeat across runs."""
    return Path(f"{PIN_ROOT_PREFIX}{secrets.token_hex(4)}")


def find_pin_dir(pin_root: Path, ifname: str) -> Path | None:
    """The pin directory of the interface named `ifname` under a root of the caller's own (pins
    are keyed by namespace and ifindex: dataplane.kernel.owner), None when there is none."""
    found = [d for d, record in owned_dirs(pin_root) if record is not None and record.ifname == ifname]
    if len(found) > 1:
        raise AssertionError(f"{pin_root}: several pin directories for {ifname}: {found}")
    return found[0] if found else None


def remove_pin_root(pin_root: Path) -> None:
    shutil.rmtree(pin_root, ignore_errors=True)


@contextmanager
def pin_root_owned(pin_root: Path | None = None) -> Iterator[Path]:
    """A unique pin root that is removed on exit, at interpreter exit and on SIGTERM."""
    root = pin_root or unique_pin_root()
    key = f"bpffs:{root}"
    cleanup.install()
    cleanup.REGISTRY.add(key, lambda: remove_pin_root(root))
    try:
        yield root
    finally:
        remove_pin_root(root)
        cleanup.REGISTRY.discard(key)


@contextmanager
def tidegate(ns: Namespace, ifname: str = UNDERLAY, *, mode: XdpMode = "native",
             config: RuntimeConfig | None = None, pin_root: Path | None = None,
             capacities: Capacities | None = None) -> Iterator[Dataplane]:
    """Tidegate loaded, configured and attached (XDP + TC) on `ifname` inside `ns`.

    On exit the programs are detached and the pins removed, whatever happened in the body.
    """
    with pin_root_owned(pin_root) as root:
        settings = DataplaneSettings(pin_root=root, capacities=capacities or Capacities())
        with ns.enter():  # compile and pin here: attach and the MAC lookup need the namespace
            dp = Dataplane.load(ifname, settings)
        try:
            with ns.enter():
                dp.configure(config or RuntimeConfig())
                dp.attach(mode)
            log.info("tidegate attached", extra={"netns": ns.name, "ifname": ifname, "mode": dp.xdp_mode})
            yield dp
        finally:
            detach(ns, dp)


def detach(ns: Namespace, dp: Dataplane) -> None:
    """Programs off the interface (if its namespace still exists), pins gone, handles closed."""
    try:
        if ns.exists:
            with ns.enter():
                dp.detach()
    finally:
        dp.close()
