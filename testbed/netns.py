"""Network namespaces, veth pairs, addresses, routes and neighbours for tests, demo and benchmarks.

Everything happens in namespaces this process creates and owns: names are random (`tg` + 6 hex),
so two runs can share a machine, and interfaces inside them can have fixed short names without
clashing with the host's. Each namespace is removed by its context manager, and by the safety
net in `testbed.cleanup` (atexit, SIGTERM/SIGHUP) if that never runs.

Netlink work uses pyroute2 with an `IPRoute` whose socket is opened *inside* the namespace
(`Namespace.ipr`): a netlink socket belongs to the namespace it was created in, for its whole
life, so no fork per call is needed and nothing is created by accident (pyroute2's own
`IPRoute(netns=...)` and `pushns(name)` create a missing namespace rather than fail).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from testbed import cleanup

NETNS_DIR = "/run/netns"
DEFAULT_PREFIX = "tg"
IFNAMSIZ_MAX = 15  # IFNAMSIZ (16) minus the NUL; namespace names obey it too, for symmetry
CLONE_NEWNET = 0x40000000
IFA_F_NODAD = 0x02
NUD_PERMANENT = 0x80
RUN_TIMEOUT = 30.0
STOP_GRACE = 2.0

_libc = ctypes.CDLL(None, use_errno=True)


def unique_name(prefix: str = DEFAULT_PREFIX) -> str:
    """`prefix` + 6 random hex digits: unique across concurrent runs, short enough for an ifname."""
    name = f"{prefix}{secrets.token_hex(3)}"
    if len(name) > IFNAMSIZ_MAX:
        raise ValueError(f"{name!r} is longer than {IFNAMSIZ_MAX} characters")
    return name


def list_namespaces(prefix: str = "") -> list[str]:
    """Named namespaces (as `ip netns list` sees them) whose name starts with `prefix`."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def created_namespaces() -> list[str]:
    """Every namespace name this process has created, removed or not (for leak checks)."""
    return [key.removeprefix("netns:") for key in cleanup.REGISTRY.history() if key.startswith("netns:")]


def setns(fd: int) -> None:
    """setns(2) for the calling thread only: network namespaces are per thread, not per process."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def remove_netns(name: str) -> None:
    if os.path.exists(os.path.join(NETNS_DIR, name)):
        pr_netns.remove(name)


class Namespace:
    """A named network namespace owned by this process; a context manager that creates/deletes it.

    `lo` is brought up (local sockets and pings to own addresses need it) and IPv6 duplicate
    address detection is off by default, so addresses are usable at once instead of "tentative"
    for a second or two, which would make tests depend on timing.
    """

    def __init__(self, name: str | None = None, *, prefix: str = DEFAULT_PREFIX, ipv6_dad: bool = False):
        self.name = name or unique_name(prefix)
        self.ipv6_dad = ipv6_dad
        self._procs: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    @property
    def path(self) -> str:
        return os.path.join(NETNS_DIR, self.name)

    @property
    def exists(self) -> bool:
        return os.path.exists(self.path)

    def create(self) -> Namespace:
        """Create the namespace (fails if the name is taken) and register it for cleanup."""
        cleanup.install()
        pr_netns.create(self.name)
        cleanup.REGISTRY.add(self._key, self.delete)
        try:
            self._init_defaults()
        except BaseException:
            self.delete()
            raise
        return self

    def _init_defaults(self) -> None:
        set_up(self, "lo")
        if not self.ipv6_dad:
            for scope in ("all", "default"):
                sysctl(self, f"net.ipv6.conf.{scope}.accept_dad", 0)

    def delete(self) -> None:
        """Stop processes started with `popen`, then remove the namespace. Idempotent."""
        cleanup.REGISTRY.discard(self._key)
        self._stop_processes()
        remove_netns(self.name)

    @property
    def _key(self) -> str:
        return f"netns:{self.name}"

    def _stop_processes(self) -> None:
        """A process left inside would keep the (then nameless) namespace and its links alive."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_GRACE)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(STOP_GRACE)
        self._procs.clear()

    def __enter__(self) -> Namespace:
        return self.create()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.delete()

    @contextmanager
    def enter(self) -> Iterator[None]:
        """Switch the *calling thread* into the namespace for the body, then back.

        Sockets (netlink, UDP, AF_PACKET, BPF attach via netlink) created in the body stay in this
        namespace after the switch back. Subprocesses and threads started in the body start
        inside it. Other threads are unaffected, and `/proc/self/net` keeps showing the main
        thread's namespace: use `/proc/thread-self/net`. scapy's interface cache is the host's,
        so prefer raw sockets to `sendp(iface=...)` here.
        """
        saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)  # fails if deleted: no re-create
            try:
                setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                setns(saved)
        finally:
            os.close(saved)

    @contextmanager
    def ipr(self) -> Iterator[IPRoute]:
        """A pyroute2 IPRoute whose netlink socket lives in this namespace."""
        with self.enter():
            ipr = IPRoute()
        try:
            yield ipr
        finally:
            ipr.close()

    def run(self, cmd: Sequence[str], *, check: bool = True, timeout: float = RUN_TIMEOUT,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside the namespace (`ip netns exec`), text output."""
        return subprocess.run(["ip", "netns", "exec", self.name, *cmd], check=check, timeout=timeout,
                              input=input, capture_output=True, text=True)

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a long-running command inside the namespace; it is terminated by `delete`."""
        proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kwargs)
        self._procs.append(proc)
        return proc


# --- links -------------------------------------------------------------------------------------


def ifindex(ns: Namespace, ifname: str) -> int:
    """Interface index of `ifname` inside `ns` (LookupError if absent)."""
    with ns.ipr() as ipr:
        return lookup_ifindex(ipr, ns, ifname)


def lookup_ifindex(ipr: IPRoute, ns: Namespace, ifname: str) -> int:
    """`ifindex` on an already open `ns.ipr()` (one netlink socket for several steps)."""
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LookupError(f"no interface {ifname!r} in {ns.name}")
    return int(found[0])


def link_mac(ns: Namespace, ifname: str) -> str:
    """MAC address of `ifname` inside `ns`, lower-case colon form."""
    with ns.ipr() as ipr:
        link = ipr.get_links(lookup_ifindex(ipr, ns, ifname))[0]
        return str(link.get("address"))


def set_up(ns: Namespace, ifname: str) -> None:
    with ns.ipr() as ipr:
        ipr.link("set", index=lookup_ifindex(ipr, ns, ifname), state="up")


def set_down(ns: Namespace, ifname: str) -> None:
    with ns.ipr() as ipr:
        ipr.link("set", index=lookup_ifindex(ipr, ns, ifname), state="down")


def set_mtu(ns: Namespace, ifname: str, mtu: int) -> None:
    with ns.ipr() as ipr:
        ipr.link("set", index=lookup_ifindex(ipr, ns, ifname), mtu=mtu)


def veth_pair(ns_a: Namespace, name_a: str, ns_b: Namespace, name_b: str, *, up: bool = True,
              queues: int = 1) -> None:
    """A veth pair with `name_a` in `ns_a` and `name_b` in `ns_b` (the same namespace is allowed).

    One netlink request creates the pair with the peer already in `ns_b`, so a failure leaves
    nothing half-made, and the names never appear in (or clash with) the host namespace.
    `queues` > 1 gives both ends that many TX and RX queues (veth hands TX queue i to the
    peer's RX queue i, each with its own NAPI context once XDP is attached).
    """
    multi = {"num_tx_queues": queues, "num_rx_queues": queues} if queues > 1 else {}
    peer_fd = os.open(ns_b.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with ns_a.ipr() as ipr:
            ipr.link("add", ifname=name_a, kind="veth", **multi,
                     peer={"ifname": name_b, "net_ns_fd": peer_fd, **multi})
    finally:
        os.close(peer_fd)
    if up:
        set_up(ns_a, name_a)
        set_up(ns_b, name_b)


# --- addresses, routes, neighbours, sysctls ----------------------------------------------------


def _family(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def add_address(ns: Namespace, ifname: str, cidr: str) -> None:
    """Add `cidr` (e.g. "10.0.0.1/24", "fd00::1/64") to `ifname`; IPv6 without DAD (usable now)."""
    iface = ipaddress.ip_interface(cidr)
    flags = IFA_F_NODAD if iface.version == 6 else 0
    with ns.ipr() as ipr:
        ipr.addr("add", index=lookup_ifindex(ipr, ns, ifname), address=str(iface.ip),
                 prefixlen=iface.network.prefixlen, family=_family(iface.ip), flags=flags)


def add_route(ns: Namespace, dst: str, *, via: str | None = None, dev: str | None = None,
              table: int | None = None, metric: int | None = None) -> None:
    """Route `dst` ("10.2.0.0/16", "fd00:2::/64", or "default" with `via`) via a gateway and/or dev."""
    if via is None and dev is None:
        raise ValueError("a route needs via= or dev=")
    if dst == "default":
        if via is None:
            raise ValueError('"default" needs via= to tell the family; use 0.0.0.0/0 or ::/0 with dev=')
        dst = "0.0.0.0/0" if ipaddress.ip_address(via).version == 4 else "::/0"
    net = ipaddress.ip_network(dst)
    spec: dict[str, Any] = {"dst": str(net.network_address), "dst_len": net.prefixlen,
                            "family": _family(net.network_address)}
    if via is not None:
        spec["gateway"] = via
    if table is not None:
        spec["table"] = table
    if metric is not None:
        spec["priority"] = metric
    with ns.ipr() as ipr:
        if dev is not None:
            spec["oif"] = lookup_ifindex(ipr, ns, dev)
        ipr.route("add", **spec)


def add_neighbour(ns: Namespace, ifname: str, ip: str, mac: str) -> None:
    """A permanent ARP/NDP entry, so traffic does not wait on (or race with) neighbour discovery."""
    addr = ipaddress.ip_address(ip)
    with ns.ipr() as ipr:
        ipr.neigh("replace", dst=str(addr), lladdr=mac, ifindex=lookup_ifindex(ipr, ns, ifname),
                  state=NUD_PERMANENT, family=_family(addr))


def _sysctl_path(key: str) -> str:
    # "net.ipv4.ip_forward" or "net/ipv4/conf/eth0.100/rp_filter" (slashes keep dots in names)
    return "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))


def sysctl(ns: Namespace, key: str, value: int | str | None = None) -> str:
    """Set (if `value` is given) and return a sysctl as seen inside `ns`.

    /proc/sys/net resolves against the opening thread's namespace, so this opens it inside
    `ns.enter()`; `ip netns exec sysctl` would cost a process per key.
    """
    path = _sysctl_path(key)
    with ns.enter():
        if value is not None:
            with open(path, "w") as f:
                f.write(str(value))
        with open(path) as f:
            return f.read().strip()


def enable_forwarding(ns: Namespace) -> None:
    """Router mode: forward v4/v6 and no reverse-path filter (tunnels and asymmetric test paths)."""
    sysctl(ns, "net.ipv4.ip_forward", 1)
    sysctl(ns, "net.ipv6.conf.all.forwarding", 1)
    for scope in ("all", "default"):
        sysctl(ns, f"net.ipv4.conf.{scope}.rp_filter", 0)


# --- two namespaces joined by a veth -------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """One veth as linked_namespaces made it: `ifname` in `ns`, `peer_ifname` in `peer` (which is
    `ns` itself when the test needs no second namespace)."""

    ns: Namespace
    peer: Namespace
    ifname: str
    peer_ifname: str
    addr: str               # ifname's address, without the prefix length
    peer_addr: str | None   # the peer end's; None: it has none


@contextmanager
def linked_namespaces(prefix: str, ifname: str, peer_ifname: str, addr: str, peer_addr: str | None = None,
                      *, prefix_len: int = 24, peer_namespace: bool = True) -> Iterator[Link]:
    """A namespace and a peer namespace joined by a veth, both removed on leaving: `addr` on
    `ifname`, `peer_addr` on the peer end, and each side the other's MAC as a static neighbour
    (no ARP: only the test's own packets cross). With peer_namespace=False both ends are in the
    one namespace and the peer end has no address (a link to attach to, nothing behind it)."""
    with Namespace(prefix=prefix) as ns, \
            (Namespace(prefix=f"{prefix}p") if peer_namespace else contextlib.nullcontext(ns)) as peer:
        veth_pair(ns, ifname, peer, peer_ifname)
        add_address(ns, ifname, f"{addr}/{prefix_len}")
        if peer_namespace and peer_addr is not None:
            add_address(peer, peer_ifname, f"{peer_addr}/{prefix_len}")
            add_neighbour(ns, ifname, peer_addr, link_mac(peer, peer_ifname))
            add_neighbour(peer, peer_ifname, addr, link_mac(ns, ifname))
        yield Link(ns, peer, ifname, peer_ifname, addr, peer_addr if peer_namespace else None)
