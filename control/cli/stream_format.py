"""Output of the commands that follow the daemon (`tidegate events`, `trace`, `top`): messages as
JSON-ready dicts, and those dicts as one text line (or a frame).

Policy events and losses take their dicts from control.observe.event_format, the shape the
daemon's exporter (config `events.export`) writes too. Every dict has a "type" ("event", "loss",
"started", "ended", "top"). Pure functions: no gRPC calls, no I/O.
"""

from __future__ import annotations

from control.cli.response_format import NONE, table
from control.observe.event_format import Data, enum_name, iso_time, protocol_name
from control.rpc.api import pb2
from dataplane import protocols


def _clock(iso: str) -> str:
    """The time of day of an iso_time(): "12:00:00.123456"."""
    return iso[11:-1]


def _endpoint(addr: str, port: int, protocol: str) -> str:
    if protocol not in protocols.PORTED:
        return addr or NONE
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


# --- policy events ------------------------------------------------------------------------------

def policy_event_text(d: Data) -> str:
    """"12:00:00.123456 eth0 DROP_DENIED rule 42 deny udp 10.0.0.2:5000 -> 10.0.0.1:9 len 60"."""
    rule = f"rule {d['rule_id']}" if d["rule_id"] else "default"
    flow = (f"{d['protocol']} {_endpoint(d['src'], d['sport'], d['protocol'])} -> "
            f"{_endpoint(d['dst'], d['dport'], d['protocol'])}")
    vni = f" vni {d['vni']}" if d["vni"] is not None else ""
    return (f"{_clock(d['time'])} {d['interface']} {d['reason']} {rule} {d['action']} {flow} "
            f"len {d['length']}{vni}")


def event_loss_text(d: Data) -> str:
    return (f"lost so far: {d['dropped']} dropped for this client (read faster), "
            f"{d['rate_limited']} over the kernel's rate limit, "
            f"{d['ringbuf_full']} with the ring buffer full")


# --- traces -------------------------------------------------------------------------------------

def trace_started_data(msg: pb2.TraceStarted) -> Data:
    return {"type": "started", "hooks": list(msg.hooks),
            "capabilities": {c.hook: c.supported for c in msg.capabilities},
            "duration_s": msg.duration_s, "max_events": msg.max_events}


def trace_started_text(d: Data) -> str:
    hooks = ", ".join(d["hooks"]) or "none"
    return (f"tracing at {hooks} for up to {d['duration_s']:g} s or {d['max_events']} events "
            "(Ctrl-C stops)")


def trace_event_data(msg: pb2.TraceEvent) -> Data:
    return {"type": "event", "time": iso_time(msg.time_unix_nano), "ts_ns": msg.ts_ns, "hook": msg.hook,
            "interface": msg.interface or None, "ifindex": msg.ifindex, "src": msg.src, "dst": msg.dst,
            "protocol": protocol_name(msg.protocol), "sport": msg.sport, "dport": msg.dport,
            "detail": msg.detail or None, "drop_reason": msg.drop_reason or None}


def trace_event_text(d: Data) -> str:
    """"12:00:00.123456 kfree_skb eth0 udp 10.0.0.2:5000 -> 10.0.0.1:9 drop in ... drop: NO_SOCKET"."""
    where = d["interface"] or (f"if{d['ifindex']}" if d["ifindex"] else NONE)
    protocol = "ip" if d["protocol"] == "0" else d["protocol"]  # a hook that saw no L4 header
    flow = (f"{protocol} {_endpoint(d['src'], d['sport'], d['protocol'])} -> "
            f"{_endpoint(d['dst'], d['dport'], d['protocol'])}")
    parts = [_clock(d["time"]), d["hook"], where, flow]
    if d["detail"]:
        parts.append(d["detail"])
    if d["drop_reason"]:
        parts.append(f"drop: {d['drop_reason']}")
    return " ".join(parts)


def trace_ended_data(msg: pb2.TraceEnded) -> Data:
    reason = enum_name(pb2.TraceEndReason, "TRACE_END_REASON_", msg.reason).lower()
    return {"type": "ended", "reason": reason, "events": msg.events, "dropped": msg.dropped}


def trace_ended_text(d: Data) -> str:
    why = {"time_limit": "time limit reached", "max_events": "event limit reached",
           "daemon_stopping": "the daemon is stopping"}.get(d["reason"], d["reason"])
    lost = f", {d['dropped']} dropped (read faster)" if d["dropped"] else ""
    return f"trace ended: {why}; {d['events']} events{lost}"


def capabilities_text(msg: pb2.TraceCapabilitiesResponse) -> str:
    rows = [(c.hook, c.supported) for c in msg.capabilities]
    body = table(["HOOK", "SUPPORTED"], rows) if rows else "no hooks known"
    return f"{body}\n\nactive traces: {msg.active_traces}"


# --- top ----------------------------------------------------------------------------------------

def _rates(now: dict[str, Data], before: dict[str, Data], seconds: float) -> dict[str, Data]:
    """Per key: packets/s, bytes/s and the total. A counter that went down (a rule re-created,
    a data plane reloaded) counts from zero."""
    out = {}
    for key, c in now.items():
        prev = before.get(key, {"packets": 0, "bytes": 0})
        dp, db = c["packets"] - prev["packets"], c["bytes"] - prev["bytes"]
        if dp < 0 or db < 0:
            dp, db = c["packets"], c["bytes"]
        out[key] = {"pps": dp / seconds, "bps": db / seconds, "packets": c["packets"]}
    return out


def _by_rate(rates: dict[str, Data], rows: int | None = None) -> dict[str, Data]:
    ordered = sorted(rates.items(), key=lambda kv: (-kv[1]["pps"], -kv[1]["bps"], kv[0]))
    return dict(ordered[:rows] if rows else ordered)


def top_data(before: Data, now: Data, seconds: float, rows: int = 20) -> Data:
    """One frame of `tidegate top` from two stats_data() dicts taken `seconds` apart."""
    seconds = max(seconds, 1e-6)
    reasons = {k: c for k, c in now["reasons"].items() if c["packets"]}  # never seen: not worth a row
    return {"type": "top", "generation": now["generation"], "interval_s": round(seconds, 3),
            "interfaces": _by_rate(_rates(now["interfaces"], before["interfaces"], seconds)),
            "reasons": _by_rate(_rates(reasons, before["reasons"], seconds)),
            "acl_rules": _by_rate(_rates(now["acl_rules"], before["acl_rules"], seconds), rows)}


def _rate(value: float) -> str:
    """Human rate: 12, 3.4k, 5.6M."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.1f}{suffix}"
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def top_text(d: Data, clock: str = "") -> str:
    head = f"tidegate top  generation {d['generation']}  every {d['interval_s']:g} s"
    out = [f"{head}  {clock}".rstrip()]
    for section, key in (("interfaces", "INTERFACE"), ("reasons", "REASON"), ("acl_rules", "RULE")):
        rows = [(k, _rate(r["pps"]), _rate(r["bps"]), r["packets"]) for k, r in d[section].items()]
        out += ["", table([key, "PKT/S", "BYTE/S", "PACKETS"], rows) if rows else f"{key}: none"]
    return "\n".join(out)
