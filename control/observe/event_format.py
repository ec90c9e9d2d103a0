"""Policy events as JSON-ready dicts: the one shape of an event line, written by the daemon's
exporter (config `events.export`) and printed by `tidegate events -j` alike. Every dict has a
"type" ("event", "loss"). Pure functions of the API's messages: no gRPC calls, no I/O.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from control.rpc.api import pb2
from dataplane import protocols

Data = dict[str, Any]



def enum_name(enum: Any, prefix: str, number: int) -> str:
    """The name of a proto enum value without its prefix; a number the enum lacks, as digits."""
    try:
        return str(enum.Name(number)).removeprefix(prefix)
    except ValueError:
        return str(number)


def protocol_name(number: int) -> str:
    """A protocol the API names by its name; any other by its number."""
    return protocols.NAMES.get(number, str(number))


def iso_time(unix_ns: int) -> str:
    """"2024-05-01T12:00:00.123456Z" (UTC, microseconds)."""
    t = dt.datetime.fromtimestamp(unix_ns / 1e9, tz=dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def policy_event_data(msg: pb2.PolicyEvent) -> Data:
    return {
        "type": "event",
        "time": iso_time(msg.time_unix_nano),
        "ts_ns": msg.ts_ns,
        "interface": msg.interface,
        "ifindex": msg.ifindex,
        "rule_id": msg.rule_id,
        "reason": enum_name(pb2.Reason, "REASON_", msg.reason),
        "action": enum_name(pb2.Action, "ACTION_", msg.action).lower(),
        "vni": msg.vni if msg.HasField("vni") else None,
        "src": msg.src,
        "dst": msg.dst,
        "protocol": protocol_name(msg.protocol),
        "sport": msg.sport,
        "dport": msg.dport,
        "length": msg.length,
    }


def event_loss_data(msg: pb2.EventLoss) -> Data:
    return {"type": "loss", "dropped": msg.dropped, "rate_limited": msg.rate_limited,
            "ringbuf_full": msg.ringbuf_full}
