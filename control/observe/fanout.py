"""Policy events from the readers to every subscriber, none of whom can hold up another.

    fanout = Fanout()
    sub = fanout.subscribe(EventFilter(rule_ids=frozenset({42})), capacity=1024, kind="watch")
    fanout.publish("eth0", event)        # a reader thread: never blocks
    events = sub.get(timeout=1.0)        # the subscriber's thread: a batch, [] after the timeout
    sub.close()                          # also wakes a get() in progress

Each subscription has its own bounded queue. publish() appends to every matching queue that has
room and, for a full one, drops the event *for that subscriber only* and counts it
(`Subscription.dropped`, and `Fanout.dropped[kind]` over every subscription ever made, so the
count survives the stream). Dropping the newest event keeps what the subscriber already has in
order, like the kernel's ring buffer does. Pure Python and no I/O: tested with fakes.

Events are duck-typed as dataplane.kernel.events.PolicyEvent: `.rule_id`, `.reason`, `.src`, `.dst`
(ipaddress objects). The interface name travels beside the event (a reader serves one interface).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

Network = IPv4Network | IPv6Network

DEFAULT_CAPACITY = 4096  # events queued per subscriber before it starts losing them


@dataclass(frozen=True)
class EventFilter:
    """Fields combine with AND, values within a field with OR; empty = anything."""

    rule_ids: frozenset[int] = frozenset()
    reasons: frozenset[int] = frozenset()
    interfaces: frozenset[str] = frozenset()
    src: Network | None = None
    dst: Network | None = None

    @classmethod
    def build(cls, rule_ids: Iterable[int] = (), reasons: Iterable[int] = (), interfaces: Iterable[str] = (),
              src: str = "", dst: str = "") -> EventFilter:
        """From request values; ValueError naming the field for a malformed prefix."""
        return cls(frozenset(int(r) for r in rule_ids), frozenset(int(r) for r in reasons),
                   frozenset(interfaces), _prefix("src", src), _prefix("dst", dst))

    def matches(self, interface: str, event: Any) -> bool:
        if self.interfaces and interface not in self.interfaces:
            return False
        if self.rule_ids and int(event.rule_id) not in self.rule_ids:
            return False
        if self.reasons and int(event.reason) not in self.reasons:
            return False
        # `in` is False across families (an IPv4 address is in no IPv6 prefix)
        if self.src is not None and event.src not in self.src:
            return False
        return self.dst is None or event.dst in self.dst


def _prefix(name: str, text: str) -> Network | None:
    if not text:
        return None
    try:
        return ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc} (write a prefix such as 10.0.0.0/8 or 2001:db8::/32)") from None


@dataclass(eq=False)  # identity: two subscriptions with the same filter are different consumers
class Subscription:
    """One consumer's bounded queue of (interface, event)."""

    filter: EventFilter
    capacity: int
    kind: str
    dropped: int = 0
    delivered: int = 0
    _queue: deque[tuple[str, Any]] = field(default_factory=deque)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _closed: bool = False

    def offer(self, interface: str, event: Any) -> bool:
        """Queues the event if there is room; else counts it as dropped. Never blocks."""
        with self._cond:
            if self._closed:
                return False
            if len(self._queue) >= self.capacity:
                self.dropped += 1
                return False
            self._queue.append((interface, event))
            self._cond.notify()
            return True

    def get(self, timeout: float | None = None, max_batch: int = 256) -> list[tuple[str, Any]]:
        """Up to max_batch queued events; waits up to `timeout` for the first. [] when closed."""
        with self._cond:
            if not self._queue and not self._closed:
                self._cond.wait(timeout)
            out: list[tuple[str, Any]] = []
            while self._queue and len(out) < max_batch:
                out.append(self._queue.popleft())
            self.delivered += len(out)
            return out

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)


class Fanout:
    """The set of subscriptions, and the totals of those that are gone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []
        self._dropped_gone: dict[str, int] = {}

    def subscribe(self, flt: EventFilter, capacity: int = DEFAULT_CAPACITY,
                  kind: str = "watch") -> Subscription:
        if capacity < 1:
            raise ValueError(f"capacity: must be at least 1, got {capacity}")
        sub = Subscription(flt, capacity, kind)
        with self._lock:
            self._subs = [*self._subs, sub]  # copy on write: publish() iterates without the lock
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Closes it and keeps its drop count in the totals. Idempotent."""
        sub.close()
        with self._lock:
            if any(s is sub for s in self._subs):
                self._subs = [s for s in self._subs if s is not sub]
                self._dropped_gone[sub.kind] = self._dropped_gone.get(sub.kind, 0) + sub.dropped

    def publish(self, interface: str, event: Any) -> None:
        """Offers the event to every matching subscription (a reader thread calls this)."""
        for sub in self._subs:
            if sub.filter.matches(interface, event):
                sub.offer(interface, event)

    def publish_many(self, interface: str, events: Iterable[Any]) -> None:
        for event in events:
            self.publish(interface, event)

    def count(self, kind: str | None = None) -> int:
        """Open subscriptions (of one kind)."""
        return sum(1 for s in self._subs if kind is None or s.kind == kind)

    def dropped(self) -> dict[str, int]:
        """Events dropped per kind of subscriber, over every subscription since the start."""
        with self._lock:
            out = dict(self._dropped_gone)
            for sub in self._subs:
                out[sub.kind] = out.get(sub.kind, 0) + sub.dropped
        return out

    def close(self, kind: str | None = None) -> None:
        """Closes every subscription (of one kind): their get() returns what is queued, then []."""
        with self._lock:
            subs = [s for s in self._subs if kind is None or s.kind == kind]
        for sub in subs:
            self.unsubscribe(sub)
