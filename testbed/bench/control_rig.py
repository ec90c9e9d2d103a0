"""What the control-plane benchmarks share (testbed.bench.control_plane and
testbed.bench.control_classbench): the daemon's capacities and interface names, a channel that
carries the largest policies, the rule loaders found here, memory and time readings."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

from testbed.bench.load import missing_tools
from testbed.daemon import DaemonProcess

CAPACITIES = {"acl_rules": 262_144, "acl_buckets4": 524_288, "acl_buckets": 262_144}
IFACE, PEER = "c0", "c1"
MAX_MESSAGE = 256 << 20


def rss(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def channel(d: DaemonProcess) -> grpc.Channel:
    """A channel to the daemon that carries the largest policies."""
    return grpc.insecure_channel(
        f"unix:{d.socket}",
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ],
    )


def restore_loaders(ipv6: bool = False) -> list[tuple[str, list[str]]]:
    """(label, command) of the rule loaders found here, input on stdin: iptables-restore,
    iptables-legacy-restore (their ip6tables forms for IPv6 rules), nft -f."""
    found = [
        (f"{b}-restore", [f"{b}-restore"])
        for b in (("ip6tables", "ip6tables-legacy") if ipv6 else ("iptables", "iptables-legacy"))
        if not missing_tools(f"{b}-restore")
    ]
    if not missing_tools("nft"):
        found.append(("nft -f", ["nft", "-f", "-"]))
    return found
