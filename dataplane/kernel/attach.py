"""Attaching the programs to an interface: XDP (native, else generic) and TC clsact ingress.

Works in the caller's current network namespace. Every step is idempotent so a detach after a
crash, or twice, is safe; only the expected errno of each step is ignored.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import socket
import struct
from pathlib import Path
from typing import Any, Literal

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from dataplane.kernel.bpf_info import ProgInfo, prog_info_by_id

log = logging.getLogger(__name__)

XdpMode = Literal["native", "generic", "auto"]
# include/uapi/linux/sockios.h, if.h, if_ether.h
SIOCGIFHWADDR = 0x8927
IFNAMSIZ, IFREQ_SIZE, ETH_ALEN = 16, 40, 6
# include/uapi/linux/if_link.h
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
_MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}

TC_INGRESS_PARENT = "ffff:fff2"  # clsact's ingress hook
TC_EGRESS_PARENT = "ffff:fff3"  # clsact's egress hook (allow_established records flows there)
TC_HANDLE = 1
TC_PRIO = 0xC000  # our band on clsact ingress: explicit, so we delete only our filter
CLSACT_OWNED = "clsact-owned"  # marker in the run dir: we created the qdisc, we remove it


class AttachError(RuntimeError):
    pass


class XdpOccupied(AttachError):
    """Another XDP program holds the interface (the message names it and what to do)."""


def ifindex(ifname: str) -> int:
    """The interface's index in the calling thread's network namespace (if_nametoindex(3): one
    ioctl, where a netlink socket and dump took milliseconds on every preflight)."""
    try:
        return socket.if_nametoindex(ifname)
    except (OSError, ValueError):
        raise AttachError(f"interface {ifname!r} does not exist in this network namespace") from None


def link_mac(ifname: str) -> bytes:
    """The interface's hardware address (SIOCGIFHWADDR: read on every policy change, so one
    ioctl rather than a netlink socket and dump)."""
    ifindex(ifname)  # AttachError for an interface that is not there
    request = struct.pack(f"{IFNAMSIZ}s{IFREQ_SIZE - IFNAMSIZ}x", ifname.encode())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        answer = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, request)
    # struct ifreq: the name, then ifr_hwaddr, a struct sockaddr: sa_family (2 bytes), sa_data
    return answer[IFNAMSIZ + 2:IFNAMSIZ + 2 + ETH_ALEN]


def attach_xdp(ifname: str, fn: Any, mode: XdpMode = "auto") -> str:
    """Attaches (atomically replacing any program there); returns the mode that took."""
    from bcc import BPF

    tries = ["native", "generic"] if mode == "auto" else [mode]
    last: Exception | None = None
    for attempt in tries:
        # The kernel holds one XDP program per mode and refuses a second mode (EEXIST): a mode
        # change takes the other mode's program off first. The same mode is replaced atomically.
        _remove_xdp(ifname, [m for m in _MODE_FLAGS if m != attempt])
        try:
            BPF.attach_xdp(ifname.encode(), fn, _MODE_FLAGS[attempt])
        except Exception as exc:  # BCC raises a bare Exception carrying the netlink error
            last = exc
            continue
        if attempt != tries[0]:
            log.warning(
                "native XDP refused, running generic XDP (slower; TC classifies if metadata is lost)",
                extra={"ifname": ifname, "error": str(last)},
            )
        return attempt
    raise AttachError(f"cannot attach XDP to {ifname} in mode {mode}: {last}")


def detach_xdp(ifname: str) -> None:
    _remove_xdp(ifname, list(_MODE_FLAGS))


def _remove_xdp(ifname: str, modes: list[str]) -> None:
    from bcc import BPF

    for mode in modes:
        try:
            BPF.remove_xdp(ifname.encode(), _MODE_FLAGS[mode])
        except Exception:  # nothing attached in this mode, or the link is gone
            pass


def xdp_attached(ifname: str) -> bool:
    with IPRoute() as ipr:
        link = ipr.link("get", index=ifindex(ifname))[0]
    xdp = link.get_attr("IFLA_XDP")
    return bool(xdp and xdp.get_attr("IFLA_XDP_ATTACHED"))


# --- who else holds the interface ---------------------------------------------------------------

TIDEGATE_XDP_NAMES = frozenset({"tg_xdp_ingress"})  # the kernel's copy of our entry's name
LIBXDP_DISPATCHER = "xdp_dispatcher"  # libxdp's multi-program dispatcher (xdp-loader, xdp-filter)


def xdp_programs(ifname: str) -> list[ProgInfo]:
    """The XDP programs attached to `ifname` (one per mode in use), as the kernel describes them."""
    with IPRoute() as ipr:
        link = ipr.link("get", index=ifindex(ifname))[0]
    xdp = link.get_attr("IFLA_XDP")
    if not xdp:
        return []
    ids = {xdp.get_attr(a) for a in ("IFLA_XDP_PROG_ID", "IFLA_XDP_DRV_PROG_ID", "IFLA_XDP_SKB_PROG_ID",
                                     "IFLA_XDP_HW_PROG_ID")} - {None, 0}
    out = []
    for prog_id in sorted(ids):
        try:
            out.append(prog_info_by_id(prog_id))
        except OSError:  # detached meanwhile
            continue
    return out


def foreign_xdp(ifname: str) -> str | None:
    """Why attaching to `ifname` would replace an XDP program Tidegate did not load (what it is and
    what to do), or None when there is none."""
    for p in xdp_programs(ifname):
        if p.name in TIDEGATE_XDP_NAMES:
            continue
        what = f"XDP program id {p.id} {p.name!r} (tag {p.tag.hex()})"
        if p.name == LIBXDP_DISPATCHER:
            return (f"{ifname} runs a libxdp dispatcher, {what}: the programs xdp-loader or libxdp attached "
                    "through it (xdp-filter, ...) would be replaced. Tidegate does not join libxdp's "
                    "multi-program dispatch (it needs freplace, which some kernels refuse). Unload them "
                    f"(`xdp-loader unload {ifname} --all`), or attach with replace to take the interface")
        return (f"{ifname} runs {what}, which Tidegate did not load: attaching would replace it. Detach it "
                f"first (`ip link set dev {ifname} xdp off`, or `xdp-loader unload {ifname} --all`), pin it "
                "and give it to Tidegate as next_program to run behind it, or attach with replace")
    return None


def attach_tc(ifname: str, fn: Any, run_dir: Path | None, egress_fn: Any = None) -> None:
    """clsact on the interface (remembered in run_dir when we created it), our filter on its
    ingress hook and, with egress_fn, on its egress hook."""
    idx = ifindex(ifname)
    with IPRoute() as ipr:
        try:
            ipr.tc("add", "clsact", idx)
            if run_dir is not None:
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / CLSACT_OWNED).touch()
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
        for parent, prog in ((TC_INGRESS_PARENT, fn), (TC_EGRESS_PARENT, egress_fn)):
            if prog is None:
                continue
            ipr.tc(
                "replace-filter", "bpf", idx, TC_HANDLE, fd=prog.fd, name=prog.name,
                parent=parent, prio=TC_PRIO, classid=1, direct_action=True,
            )


def detach_tc(ifname: str, run_dir: Path | None) -> None:
    try:
        idx = ifindex(ifname)
    except AttachError:
        return
    with IPRoute() as ipr:
        for parent in (TC_INGRESS_PARENT, TC_EGRESS_PARENT):
            try:
                ipr.tc("del-filter", "bpf", idx, TC_HANDLE, parent=parent, prio=TC_PRIO)
            except NetlinkError as exc:
                if exc.code not in (errno.ENOENT, errno.EINVAL):
                    raise
        owned = run_dir is not None and (run_dir / CLSACT_OWNED).exists()
        if owned:
            try:
                ipr.tc("del", "clsact", idx)
            except NetlinkError as exc:
                if exc.code not in (errno.ENOENT, errno.EINVAL):
                    raise


def tc_filter_attached(ifname: str, parent: str = TC_INGRESS_PARENT) -> bool:
    with IPRoute() as ipr:
        filters = ipr.get_filters(index=ifindex(ifname), parent=parent)
    return any(f.get_attr("TCA_KIND") == "bpf" for f in filters)


def clsact_present(ifname: str) -> bool:
    with IPRoute() as ipr:
        qdiscs = ipr.get_qdiscs(index=ifindex(ifname))
    return any(q.get_attr("TCA_KIND") == "clsact" for q in qdiscs)
