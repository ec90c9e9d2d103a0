"""Benchmark 3: a VxLAN stream decapsulated by the kernel's vxlan device vs by Tidegate at XDP.

Same rig (testbed.bench.load), same frames: VxLAN (VNI 100) frames sent from every CPU to the
receiver's underlay r0, whose inner packets (60-byte UDP to port 9999) are addressed to the
receiver's inner address on its vxlan device vx100. The sink is an nftables rule at the input
hook (`udp dport 9999 counter drop`): a packet counts once it has been decapsulated, routed and
found local.

- kernel: r0 -> IP -> UDP 4789 -> vxlan_rcv -> GRO cell -> vx100 -> IP -> input.
- Tidegate: its XDP program on r0 strips the outer headers (VNI 100 configured) and rewrites
  the inner destination MAC; the inner packet enters the stack on r0 -> IP -> input. vx100
  stays configured and its receive counter is checked to stay still.

Both paths are measured with two senders (testbed.bench.load):
- XDP frames (testbed.bench.xdpgen), the way a NIC's driver hands its receive buffers to XDP:
  no copy before the program. veth accepts such frames only into an XDP program, so the kernel
  path gets `return XDP_PASS` on r0 (the hook's own cost, as on a NIC with XDP enabled).
- trafgen's skbs: veth copies each into an XDP frame for Tidegate (and builds a new skb after
  XDP_PASS), while the kernel path, with no XDP program, keeps the original skb: a cost of veth.
The target is judged on the first; the second is shown beside it.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from contextlib import ExitStack

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from dataplane.kernel import attach as attach_mod
from dataplane.kernel.interface import Dataplane
from dataplane.map_config import RuntimeConfig, TunnelEntry
from testbed.bench.common import (
    Plot,
    Profile,
    Section,
    Series,
    Table,
    Target,
    Value,
    fmt_value,
    runs_meeting,
)
from testbed.bench.load import (
    RECEIVER_ADDR,
    SENDER_ADDR,
    SENDERS,
    Rig,
    Sender,
    Window,
    link_stats,
    measure,
    missing_tools,
    passing_xdp,
    rig,
)
from testbed.bench.xdpgen import LIVE_FRAMES_NOT_MEASURED, LIVE_FRAMES_REFUSED
from testbed.netns import add_address, add_neighbour, set_up, sysctl
from testbed.packets import vxlan
from testbed.vxlan import add_vxlan

log = logging.getLogger(__name__)

NAME = "decap"
TITLE = "Decapsulation throughput: kernel vxlan device vs Tidegate at XDP"
VNI = 100
VX_IF, VX_MAC = "vx100", "02:00:00:64:00:02"
PEER_INNER, PEER_INNER_MAC = "10.100.0.1", "02:00:00:64:00:01"
INNER_ADDR = "10.100.0.2"
SINK_PORT = 9999
SINK_TABLE = "tgsink"
TARGET_RATIO = 1.5
PATHS = (("kernel", "kernel vxlan device"), ("tidegate", "Tidegate XDP decap"))
_COUNTER = re.compile(r"counter packets (\d+)")
SENDER_ORDER: tuple[Sender, ...] = ("xdp", "skb")
JUDGED_SENDER: Sender = "xdp"
SENDER_SHORT = {"xdp": "XDP frames (NIC-like)", "skb": "trafgen skbs (veth copy)"}
KERNEL_XDP_NOTE = " (+ `return XDP_PASS` on r0)"


def _frame(r: Rig) -> bytes:
    inner = (
        Ether(src=PEER_INNER_MAC, dst=VX_MAC)
        / IP(src=PEER_INNER, dst=INNER_ADDR, ttl=64)
        / UDP(sport=40000, dport=SINK_PORT, chksum=0)
        / bytes(18)
    )
    outer = Ether(src=r.sender_mac, dst=r.receiver_mac) / IP(src=SENDER_ADDR, dst=RECEIVER_ADDR, ttl=64)
    return vxlan(outer, VNI, inner)


def _receiver(r: Rig) -> None:
    """vx100 with the inner address, and the counting sink at the input hook."""
    add_vxlan(
        r.receiver,
        VX_IF,
        vni=VNI,
        local=RECEIVER_ADDR,
        remote=SENDER_ADDR,
        underlay_dev=r.receiver_ifname,
        mac=VX_MAC,
        up=False,
    )
    sysctl(r.receiver, f"net/ipv6/conf/{VX_IF}/disable_ipv6", 1)
    add_address(r.receiver, VX_IF, f"{INNER_ADDR}/24")
    set_up(r.receiver, VX_IF)
    add_neighbour(r.receiver, VX_IF, PEER_INNER, PEER_INNER_MAC)
    sink = (
        f"table inet {SINK_TABLE} {{\n  chain input {{\n"
        "    type filter hook input priority 0; policy accept;\n"
        f"    udp dport {SINK_PORT} counter drop\n  }}\n}}\n"
    )
    r.receiver.run(["nft", "-f", "-"], input=sink)


def _delivered(r: Rig) -> int:
    out = r.receiver.run(["nft", "list", "chain", "inet", SINK_TABLE, "input"])
    return int(_COUNTER.findall(out.stdout)[-1])


def _window(profile: Profile, sender: Sender, path: str, dp: Dataplane) -> tuple[Window, int]:
    with rig() as r, ExitStack() as stack:
        _receiver(r)
        if path == "tidegate":
            dp.configure(RuntimeConfig(), if_mac=bytes.fromhex(r.receiver_mac.replace(":", "")))
            with r.receiver.enter():
                attach_mod.attach_xdp(r.receiver_ifname, dp.program.xdp_fn, "native")
        elif sender == "xdp":
            stack.enter_context(passing_xdp(r))
        vx_before = link_stats(r.receiver, VX_IF)["rx_packets"]
        w = measure(r, _frame(r), lambda: _delivered(r), profile.warmup_s, profile.window_s, sender)
        vx_moved = link_stats(r.receiver, VX_IF)["rx_packets"] - vx_before
    return w, vx_moved


Key = tuple[str, str]  # (sender, path)


def run(profile: Profile) -> Section:
    section = Section(NAME, TITLE, method=__doc__ or "")
    missing = missing_tools("trafgen", "nft")
    if missing:
        section.failures.append(f"{', '.join(missing)} not installed: no decap benchmark")
        return section
    dp = Dataplane.load()
    windows: dict[Key, list[Window]] = defaultdict(list)
    vx_moved: dict[Key, list[int]] = defaultdict(list)
    try:
        dp.maps.put_tunnel(TunnelEntry(vni=VNI, geneve=False))
        senders = list(SENDER_ORDER)
        for _ in range(profile.traffic_runs):
            for sender in list(senders):
                try:
                    for path, _label in PATHS:
                        w, moved = _window(profile, sender, path, dp)
                        windows[(sender, path)].append(w)
                        vx_moved[(sender, path)].append(moved)
                except Exception as exc:
                    if sender != "xdp" or LIVE_FRAMES_REFUSED not in str(exc):
                        raise
                    section.failures.append(f"{SENDER_SHORT[sender]}: {LIVE_FRAMES_NOT_MEASURED}")
                    senders.remove(sender)
                    for path, _label in PATHS:
                        windows.pop((sender, path), None)
                        vx_moved.pop((sender, path), None)
    finally:
        dp.close()
    _report(profile, windows, vx_moved, section)
    return section


WHY_VETH = (
    "With trafgen's skbs, veth turns every skb into an XDP frame before Tidegate sees it (a page and "
    "a copy, since the sender's skbs lack XDP headroom) and after XDP_PASS builds a new skb from it, "
    "while the kernel path keeps the original skb throughout: a cost of veth, not of the decap, that "
    "no NIC driver pays (it runs XDP on its own receive buffers). The XDP-frame rows take that copy away "
    "from both paths."
)


def _values(ws: list[Window]) -> dict[str, Value]:
    return {
        "pps": Value.of([w.counted_pps for w in ws], "pps"),
        "ns": Value.of([1e9 * w.softirq_s / w.counted if w.counted else float("nan") for w in ws], "ns"),
        "cap": Value.of([w.counted / w.softirq_s if w.softirq_s else float("nan") for w in ws], "pps"),
    }


def _report(profile: Profile, windows: dict[Key, list[Window]], vx_moved: dict[Key, list[int]],
            section: Section) -> None:
    v = {k: _values(ws) for k, ws in windows.items()}
    t = Table(f"VxLAN 110-byte frames (60-byte inner), {profile.traffic_runs}× {profile.window_s:g} s "
              "windows; median [min–max]",
              ["sender", "path", "delivered/s", "× kernel", "receive CPU per delivered packet",
               "receive capacity per core", "× kernel", "vx100 rx packets"])
    measured = [s for s in SENDER_ORDER if (s, "kernel") in v]
    for sender in measured:
        base = v[(sender, "kernel")]
        for path, label in PATHS:
            x = v[(sender, path)]
            t.add(SENDERS[sender], label + (KERNEL_XDP_NOTE if sender == "xdp" and path == "kernel" else ""),
                  x["pps"], x["pps"].ratio_to(base["pps"]), x["ns"], x["cap"],
                  x["cap"].ratio_to(base["cap"]), f"{sum(vx_moved[(sender, path)]):,}")
    section.tables.append(t)
    if any(any(vx_moved[(s, "tidegate")]) for s in measured):
        section.notes.append("vx100 received packets while Tidegate was attached: Tidegate did not "
                             "decap them all.")
    section.notes.append("Receive CPU counts softirq time on all CPUs over the window, divided by the "
                         "packets the sink counted; 'capacity per core' is its inverse. With XDP frames "
                         "the senders' own work is system time in their syscall, not softirq.")
    section.notes.append(WHY_VETH)
    labels = [f"{label}\n{sender} sender" for sender in measured for _, label in PATHS]
    section.plots.append(Plot("decap.png", "bar", "Decap: receive CPU per delivered packet", "", "ns/packet",
                              [Series("ns/packet", labels,
                                      [v[(s, p)]["ns"] for s in measured for p, _ in PATHS])]))
    _target(v, section)


def _target(v: dict[Key, dict[str, Value]], section: Section) -> None:
    """Judged where the frames arrive as a NIC delivers them; the skb rows are shown beside it."""
    parts = {}
    for sender in (s for s in SENDER_ORDER if (s, "kernel") in v):
        base, tg = v[(sender, "kernel")], v[(sender, "tidegate")]
        cap = tg["cap"].ratio_to(base["cap"])
        meeting = runs_meeting(cap, lambda x: x >= TARGET_RATIO)
        pps = fmt_value(tg["pps"].ratio_to(base["pps"]))
        ns = f"{fmt_value(tg['ns'])} vs {fmt_value(base['ns'])}"
        parts[sender] = (cap, f"{fmt_value(cap)} per receive core{meeting} ({ns} of receive CPU per "
                              f"delivered packet), {pps} in delivered/s")
    judged_sender = JUDGED_SENDER if JUDGED_SENDER in parts else next(iter(parts))
    cap, _ = parts[judged_sender]
    met = cap.median >= TARGET_RATIO
    measured = "; ".join(f"{SENDER_SHORT[s]}: {text}" for s, (_, text) in parts.items())
    goal = f"Tidegate decap ≥ {TARGET_RATIO:g}x the kernel vxlan path"
    judged = (f"The target is judged on {SENDER_SHORT[judged_sender]}"
              + (", the way a NIC's driver delivers frames." if judged_sender == JUDGED_SENDER
                 else f" (this kernel refuses the {SENDER_SHORT[JUDGED_SENDER]} sender)."))
    section.notes.append(judged)
    section.targets.append(Target("Decap vs kernel vxlan", goal, measured, met,
                                  "" if met else f"{judged} {WHY_VETH}"))
