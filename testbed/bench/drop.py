"""Benchmark 2: dropping a denied flow whose rule sits behind N other rules, on a veth.

For each N, one rule set (testbed.bench.rules: N random rules, then the flow's deny rule,
last in first-match order) is given to every engine (testbed.bench.engines). Each repetition
measures every engine once, each in a fresh pair of namespaces (testbed.bench.load): trafgen
sends the flow's 60-byte UDP frames from every CPU, and over a fixed window the benchmark reads
the engine's own drop counter, the packets veth handed to the receiver, and the softirq time
of all CPUs (where veth's NAPI/backlog runs XDP, netfilter and the stack).

Reported per engine and N: drops/s (what the shared CPUs achieved with senders and receiver
competing), receive CPU per packet (softirq time / packets handed over) and the receive
capacity of one core at that cost, each also as a ratio to iptables in the same repetition.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from testbed.bench import engines as eng
from testbed.bench import rules
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
from testbed.bench.load import Rig, Sender, Window, measure, missing_tools, passing_xdp, rig
from testbed.bench.xdpgen import LIVE_FRAMES_NOT_MEASURED, LIVE_FRAMES_REFUSED

log = logging.getLogger(__name__)

NAME = "drop"
TITLE = "Drop rate of a denied flow in the veth testbed"
BASELINE = "iptables"
TARGET_SIZE = 1_000
TARGET_RATIO = 5.0
# Issue 14 item 5: Tidegate's receive CPU per dropped packet against xdp-filter's, same run.
FILTER = "xdp-filter"
FILTER_RATIO = 1.2
FILTER_SIZES = (1, 1_000)
PAYLOAD = bytes(18)  # 60-byte frames (64 on a wire, with the FCS)


def probe_frame(r: Rig) -> bytes:
    return bytes(
        Ether(src=r.sender_mac, dst=r.receiver_mac)
        / IP(src=rules.PROBE_SRC, dst=rules.PROBE_DST, ttl=64)
        / UDP(sport=rules.PROBE_SPORT, dport=rules.PROBE_DPORT, chksum=0)
        / PAYLOAD
    )


def all_engines() -> list[eng.Engine]:
    return [
        eng.Tidegate(),
        eng.Iptables("iptables"),
        eng.Iptables("iptables-legacy"),
        eng.NftChain(),
        eng.NftSet(),
        eng.XdpFilter(),
        eng.XdpDrop(),
    ]


def run(profile: Profile) -> Section:
    section = Section(NAME, TITLE, method=__doc__ or "")
    if missing_tools("trafgen"):
        section.failures.append(
            "trafgen (Debian netsniff-ng) is not installed: no traffic, no drop benchmark"
        )
        return section
    engines = []
    for e in all_engines():
        reason = e.unavailable()
        if reason:
            section.failures.append(f"{e.label}: not measured: {reason}")
        else:
            engines.append(e)
    windows: dict[tuple[str, int], list[Window]] = defaultdict(list)
    frames: dict[tuple[str, int], list[Window]] = defaultdict(list)  # the XDP-frame sender's
    frames_allowed = True
    try:
        for n in profile.drop_sizes:
            _measure_size(profile, n, engines, windows, section)
            if n in _frame_sizes(profile) and frames_allowed:
                frames_allowed = _measure_frames(
                    profile, n, [e for e in engines if windows.get((e.key, n))], frames, section)
    finally:
        for e in engines:
            e.close()
    _report(profile, engines, windows, section)
    if frames:
        section.tables.append(
            _frames_table(profile, engines, {k: _values(ws) for k, ws in frames.items() if ws}))
        section.notes.append(FRAMES_NOTE)
    return section


def _frame_sizes(profile: Profile) -> tuple[int, ...]:
    """Where the XDP-frame sender is measured too: the fewest rules and the target's size."""
    return tuple(n for n in profile.drop_sizes if n in (profile.drop_sizes[0], TARGET_SIZE))


def _measure_frames(profile: Profile, n: int, engines: list[eng.Engine],
                    frames: dict[tuple[str, int], list[Window]], section: Section) -> bool:
    """The same rule set (prepared, and measured with skbs, by _measure_size), sent as XDP frames.
    False when the kernel refuses the sender itself (then no engine can be measured this way)."""
    for _ in range(profile.traffic_runs):
        for e in engines:
            try:
                window = _window(profile, e, "xdp")
            except Exception as exc:  # noqa: BLE001 - one engine failing must not stop the others
                if LIVE_FRAMES_REFUSED in str(exc):
                    section.failures.append(f"XDP frames: {LIVE_FRAMES_NOT_MEASURED}")
                    return False
                log.exception("drop benchmark (XDP frames): %s with %d rules failed", e.label, n)
                section.failures.append(f"{e.label}, {n:,} rules, XDP frames: {type(exc).__name__}: {exc}")
            else:
                frames[(e.key, n)].append(window)
    return True



def _measure_size(
    profile: Profile,
    n: int,
    engines: list[eng.Engine],
    windows: dict[tuple[str, int], list[Window]],
    section: Section,
) -> None:
    spec = rules.ruleset(n + 1)  # n other rules, then the flow's own
    active = [e for e in engines if not (isinstance(e, eng.XdpDrop) and n != profile.drop_sizes[0])]
    failed: set[str] = set()
    for e in active:
        try:
            e.prepare(spec)
        except Exception as exc:  # noqa: BLE001 - one engine failing must not stop the others
            section.failures.append(f"{e.label}, {n:,} rules: preparing failed: {exc}")
            failed.add(e.key)
    for _ in range(profile.traffic_runs):
        for e in active:
            if e.key in failed:
                continue
            try:
                windows[(e.key, n)].append(_window(profile, e))
            except Exception as exc:  # noqa: BLE001
                log.exception("drop benchmark: %s with %d rules failed", e.label, n)
                section.failures.append(f"{e.label}, {n:,} rules: {type(exc).__name__}: {exc}")
                failed.add(e.key)
    for e in active:
        if isinstance(e, eng.XdpFilter) and e.left_out:
            section.notes.append(
                f"xdp-filter, {n:,} rules: its address map holds {eng.XDP_FILTER_MAX_IPV4:,} "
                f"entries, so {e.left_out:,} of the other rules' addresses were left out."
            )
        if isinstance(e, eng.NftSet) and e.refused:
            section.notes.append(
                f"nftables set, {n:,} rules: the kernel refused {e.refused} elements that "
                "overlap one already in the set (a concatenated interval set allows no "
                "overlap); measured without them."
            )


def _window(profile: Profile, e: eng.Engine, sender: Sender = "skb") -> Window:
    with rig() as r, ExitStack() as stack:
        if sender == "xdp" and not e.xdp:
            stack.enter_context(passing_xdp(r))
        e.enable(r)
        try:
            w = measure(r, probe_frame(r), lambda: e.dropped(r), profile.warmup_s, profile.window_s, sender)
        finally:
            e.disable(r)
    if not w.sender_ok:
        log.warning("a sender process ended early", extra={"engine": e.key, "stderr": w.sender_errors})
    return w


def _values(ws: list[Window]) -> dict[str, Value]:
    return {
        "pps": Value.of([w.counted_pps for w in ws], "pps"),
        "ns": Value.of([w.rx_ns_per_packet for w in ws], "ns"),
        "cap": Value.of([w.rx_capacity_pps for w in ws], "pps"),
        "dropped_share": Value.of([w.counted / w.handed if w.handed else 0.0 for w in ws], "x"),
    }


def _report(profile: Profile, engines: list[eng.Engine], windows: dict[tuple[str, int], list[Window]],
            section: Section) -> None:
    values = {k: _values(ws) for k, ws in windows.items() if ws}
    section.tables.append(_table(profile, engines, values))
    def cells(bad: Callable[[Window], bool]) -> list[str]:
        return sorted({f"{key} ({n:,} rules)" for (key, n), ws in windows.items() for w in ws if bad(w)})

    unhealthy = cells(lambda w: not w.sender_ok)
    if unhealthy:
        section.notes.append("A trafgen process exited early (EAGAIN on a full veth ring) during: "
                             f"{', '.join(unhealthy)}. Per-packet CPU stays valid; drops/s is lower there.")
    ring = cells(lambda w: w.ring_drops > 0)
    if ring:
        section.notes.append("veth dropped packets for want of ring space (the receiver was saturated) "
                             f"during: {', '.join(ring)}.")
    section.notes.append("Engines: " + "; ".join(f"**{e.label}**: {e.note}" for e in engines) + ".")
    _plots(profile, engines, values, section)
    section.targets.append(_target(values, section))
    section.targets.append(_filter_target(values))


Values = dict[tuple[str, int], dict[str, Value]]


def _table(profile: Profile, engines: list[eng.Engine], values: Values) -> Table:
    t = Table(f"Denied flow, 60-byte frames from {profile.traffic_runs}× {profile.window_s:g} s windows per "
              "cell; median [min–max]",
              ["other rules in front", "engine", "dropped/s", "× iptables", "receive CPU per packet",
               "receive capacity per core", "× iptables"])
    for n in profile.drop_sizes:
        base = values.get((BASELINE, n))
        for e in engines:
            v = values.get((e.key, n))
            if v is not None:
                t.add(f"{n:,}", e.label, v["pps"], v["pps"].ratio_to(base["pps"]) if base else None, v["ns"],
                      v["cap"], v["cap"].ratio_to(base["cap"]) if base else None)
    return t


FRAMES_NOTE = (
    "The second table sends the same frames as XDP frames (testbed.bench.xdpgen), the way a NIC's driver "
    "hands its receive buffers to XDP: the XDP engines then run without veth's copy of each skb into an "
    "XDP frame, while iptables and nftables, which need an skb, get a `return XDP_PASS` on r0 (veth takes "
    "such frames only into an XDP program) and the skb veth builds after it. The first table, with "
    "trafgen's skbs, is the conservative one for XDP; the target is judged there."
)


def _frames_table(profile: Profile, engines: list[eng.Engine], values: Values) -> Table:
    t = Table(f"The same denied flow sent as XDP frames (as a NIC delivers them), {profile.traffic_runs}× "
              f"{profile.window_s:g} s windows per cell; median [min–max]",
              ["other rules in front", "engine", "dropped/s", "× iptables", "receive CPU per packet",
               "receive capacity per core", "× iptables"])
    for n in sorted({n for _, n in values}):
        base = values.get((BASELINE, n))
        for e in engines:
            v = values.get((e.key, n))
            if v is not None:
                label = e.label if e.xdp else f"{e.label} (+ `return XDP_PASS` on r0)"
                t.add(f"{n:,}", label, v["pps"], v["pps"].ratio_to(base["pps"]) if base else None, v["ns"],
                      v["cap"], v["cap"].ratio_to(base["cap"]) if base else None)
    return t


def _plots(
    profile: Profile,
    engines: list[eng.Engine],
    values: dict[tuple[str, int], dict[str, Value]],
    section: Section,
) -> None:
    def series(metric: str) -> list[Series]:
        out = []
        for e in engines:
            xs = [n for n in profile.drop_sizes if (e.key, n) in values]
            if xs and not isinstance(e, eng.XdpDrop):
                out.append(Series(e.label, xs, [values[(e.key, n)][metric] for n in xs]))
        return out

    def reference(metric: str) -> list[tuple[str, float, str]]:
        """The bare XDP drop, measured once, as a horizontal line."""
        found = [v[metric].median for (key, _n), v in values.items() if key == eng.XdpDrop.key]
        return [(eng.XdpDrop.label, found[0], "y")] if found else []

    xlabel = "other rules in front of the denied flow"
    section.plots.append(
        Plot(
            "drop_rx_cpu.png",
            "line",
            "Receive CPU per dropped packet (veth, softirq time)",
            xlabel,
            "ns/packet",
            series("ns"),
            logx=True,
            logy=True,
            marks=reference("ns"),
        )
    )
    section.plots.append(
        Plot(
            "drop_pps.png",
            "line",
            "Drops/s with every CPU sending and receiving",
            xlabel,
            "packets/s",
            series("pps"),
            logx=True,
            logy=True,
            marks=reference("pps"),
        )
    )


def _target(values: dict[tuple[str, int], dict[str, Value]], section: Section) -> Target:
    goal = f"XDP drop ≥ {TARGET_RATIO:g}x iptables at {TARGET_SIZE:,} rules"
    tg, ipt = values.get(("tidegate", TARGET_SIZE)), values.get((BASELINE, TARGET_SIZE))
    if tg is None or ipt is None:
        return Target(
            "XDP drop vs iptables", goal, f"not measured in this profile: no {TARGET_SIZE:,}-rule cells", None
        )
    cap, pps = tg["cap"].ratio_to(ipt["cap"]), tg["pps"].ratio_to(ipt["pps"])
    met = cap.median >= TARGET_RATIO
    measured = (
        f"{fmt_value(cap)} per receive core{runs_meeting(cap, lambda x: x >= TARGET_RATIO)} "
        f"({fmt_value(tg['ns'])} vs {fmt_value(ipt['ns'])} of receive CPU per packet); "
        f"{fmt_value(pps)} in drops/s with senders and receiver sharing the 2 CPUs"
    )
    explanation = ""
    floor = values.get(("xdp-drop", min(k[1] for k in values)))
    if not met:
        floor_txt = (
            f" The cheapest possible XDP drop on this veth costs {fmt_value(floor['ns'])}." if floor else ""
        )
        explanation = (
            f"Tidegate's program is a small part of its receive cost here: veth must build an XDP "
            f"frame for each skb (a page and a copy: trafgen's skbs have no XDP headroom) before any "
            f"XDP program runs.{floor_txt} iptables pays per rule it walks instead."
        )
    return Target("XDP drop vs iptables", goal, measured, met, explanation)


def _filter_target(values: Values) -> Target:
    """Tidegate against the simplest XDP filter beside it, per receive core, at 1 and 1,000 rules."""
    goal = (f"Tidegate's receive CPU per dropped packet ≤ {FILTER_RATIO:g}x xdp-filter's, at "
            f"{' and at '.join(f'{n:,}' for n in FILTER_SIZES)} rule(s), same run; judged on trafgen's "
            "skbs (this kernel refuses the XDP-frame sender)")
    cells = [(n, values.get(("tidegate", n)), values.get((FILTER, n))) for n in FILTER_SIZES]
    measured_cells = [(n, tg, xf) for n, tg, xf in cells if tg is not None and xf is not None]
    if not measured_cells:
        return Target("Drop vs xdp-filter", goal, "not measured in this profile", None)
    parts, met = [], len(measured_cells) == len(FILTER_SIZES)
    for n, tg, xf in measured_cells:
        ratio = tg["ns"].ratio_to(xf["ns"])
        met = met and ratio.median <= FILTER_RATIO
        parts.append(f"{n:,} rule{'s' if n != 1 else ''}: {fmt_value(ratio)}"
                     f"{runs_meeting(ratio, lambda x: x <= FILTER_RATIO)} ({fmt_value(tg['ns'])} vs "
                     f"{fmt_value(xf['ns'])})")
    missing = [f"{n:,}" for n, tg, xf in cells if tg is None or xf is None]
    if missing:
        parts.append(f"not measured at {', '.join(missing)} rules in this profile")
    explanation = "" if met else (
        "Both figures include veth's copy of each skb into an XDP frame (the `return XDP_DROP` row), "
        "which a NIC driver does not pay; the difference is the programs': the per-packet cost section "
        "shows where Tidegate's nanoseconds go.")
    return Target("Drop vs xdp-filter", goal, "; ".join(parts), met, explanation)
