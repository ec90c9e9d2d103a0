"""Policy events from the data plane: what the ACL denied, and what `log` rules allowed.

The XDP program writes one struct tg_event_record per event into the `policy_events` ring
buffer, paced per CPU by a token bucket (RuntimeConfig.event_rate / event_burst). Every event is
counted exactly once as sent, rate limited or ring buffer full, so a reader can tell what it
missed:

    reader = EventReader(dp)              # dp loaded with or without an interface
    for ev in reader.poll(timeout_ms=100):
        print(ev.rule_id, ev.reason.name, ev.src, ev.dst, ev.dport)
    reader.counts()                       # EventCounts(sent=..., rate_limited=..., ringbuf_full=...)

The ring buffer is pinned with the other maps, so a restarted daemon reads the events written
while it was away (up to the ring's size). Records are decoded through the ctypes type BCC
generates from the C struct (the ring buffer table's Leaf), never a copy of the layout.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from dataplane import abi

RING = "policy_events"
_V4_LEN = 4
_DECAPPED = abi.define("TG_EVENT_RECORD_F_DECAPPED")
_FAMILY_V4 = abi.define("TG_FAMILY_V4")


@dataclass(frozen=True)
class PolicyEvent:
    ts_ns: int  # CLOCK_MONOTONIC (bpf_ktime_get_ns), not wall time
    ifindex: int  # ingress interface
    rule_id: int  # 0: no rule matched, the default action applied
    reason: abi.Reason  # type: ignore[valid-type]  # DROP_DENIED, DROP_DEFAULT or PASS_ALLOWED
    action: abi.Action  # type: ignore[valid-type]
    vni: int | None  # the tunnel the packet was decapped from; None when it was not
    family: int  # 4 or 6
    src: IPv4Address | IPv6Address  # of the judged packet: the inner one when decapped
    dst: IPv4Address | IPv6Address
    proto: int
    sport: int  # 0 for port-less protocols and non-first fragments
    dport: int
    length: int  # bytes of the judged frame (the inner frame when decapped)


@dataclass(frozen=True)
class EventCounts:
    """Policy events since the maps were created (they survive a restart with the pins)."""

    sent: int
    rate_limited: int
    ringbuf_full: int

    @property
    def total(self) -> int:
        return self.sent + self.rate_limited + self.ringbuf_full

    def __sub__(self, other: EventCounts) -> EventCounts:
        return EventCounts(self.sent - other.sent, self.rate_limited - other.rate_limited,
                           self.ringbuf_full - other.ringbuf_full)


def _address(family: int, raw: bytes) -> IPv4Address | IPv6Address:
    return ip_address(raw[:_V4_LEN] if family == _FAMILY_V4 else raw)


def decode(record: Any) -> PolicyEvent:
    """A struct tg_event_record (BCC's ctypes view of it) as a PolicyEvent."""
    return PolicyEvent(
        ts_ns=int(record.ts_ns),
        ifindex=int(record.ifindex),
        rule_id=int(record.rule_id),
        reason=abi.Reason(record.reason),
        action=abi.Action(record.action),
        vni=int(record.vni) if record.flags & _DECAPPED else None,
        family=int(record.family),
        src=_address(record.family, bytes(record.src)),
        dst=_address(record.family, bytes(record.dst)),
        proto=int(record.proto),
        sport=int(record.sport),
        dport=int(record.dport),
        length=int(record.length),
    )


class EventReader:
    """Reads one data plane's policy events. One reader per loaded data plane receives them: a
    new EventReader on the same Dataplane takes the ring buffer over from the previous one."""

    def __init__(self, dp: Any) -> None:
        self._program = dp.program
        self._maps = dp.maps
        self._record = self._program.table(RING).Leaf
        self._batch: list[PolicyEvent] = []
        self._error: Exception | None = None
        self._program.open_ring_buffer(RING, self._on_record)

    def poll(self, timeout_ms: int = 0) -> list[PolicyEvent]:
        """Every event waiting in the ring buffer, waiting up to timeout_ms (-1: forever) for the
        first one; [] when none came. Events are returned once."""
        if self._program.ring_sink(RING) != self._on_record:
            raise RuntimeError("another EventReader took over this data plane's policy events: poll that one")
        self._program.poll_rings(timeout_ms)
        batch, self._batch = self._batch, []
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"{RING}: undecodable record (is the ABI header newer than the "
                               f"loaded program? reload the data plane)") from error
        return batch

    def counts(self) -> EventCounts:
        """Sent, rate limited and ring-buffer-full events, summed over the CPUs."""
        c = self._maps.event_counts()
        return EventCounts(sent=c[abi.Event["POLICY_SENT"]].packets,
                           rate_limited=c[abi.Event["POLICY_RATE_LIMITED"]].packets,
                           ringbuf_full=c[abi.Event["POLICY_RINGBUF_FULL"]].packets)

    def _on_record(self, data: int, size: int) -> None:
        # Runs inside BCC's ctypes callback, where an exception would only be printed: keep it
        # for poll() to raise.
        try:
            if size < ctypes.sizeof(self._record):
                raise ValueError(f"record of {size} bytes, struct tg_event_record has "
                                 f"{ctypes.sizeof(self._record)}")
            self._batch.append(decode(ctypes.cast(data, ctypes.POINTER(self._record)).contents))
        except Exception as err:  # noqa: BLE001 - re-raised by poll()
            self._error = err
