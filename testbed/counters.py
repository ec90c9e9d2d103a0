"""Before/after views of a data plane's counters, so traffic checks compare what one action moved.

Counters are cumulative and shared by everything that crosses the interface (also background
traffic such as IPv6 neighbour discovery), so a check takes a snapshot, sends, takes another and
looks at the difference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from dataplane.kernel.maps import Counter

K = TypeVar("K")


@dataclass(frozen=True)
class Snapshot:
    reasons: Mapping[Any, Counter]     # abi.Reason -> Counter
    events: Mapping[Any, Counter]      # abi.Event -> Counter (packets only)
    tunnels: Mapping[int, Counter]     # VNI -> decapped packets / outer bytes
    acl: Mapping[int, Counter]         # ACL rule id -> matches
    classifiers: Mapping[int, Counter]  # classifier id -> matches

    def __sub__(self, earlier: Snapshot) -> Snapshot:
        parts = zip(self._parts(), earlier._parts(), strict=True)
        return Snapshot(*(_minus(now, then) for now, then in parts))

    def _parts(self) -> tuple[Mapping[Any, Counter], ...]:
        return (self.reasons, self.events, self.tunnels, self.acl, self.classifiers)

    def reason(self, reason: Any) -> int:
        return self.reasons.get(reason, Counter()).packets

    def event(self, event: Any) -> int:
        return self.events.get(event, Counter()).packets

    def tunnel(self, vni: int) -> int:
        return self.tunnels.get(vni, Counter()).packets

    def acl_rule(self, rule_id: int) -> int:
        return self.acl.get(rule_id, Counter()).packets

    def classifier(self, classifier_id: int) -> int:
        return self.classifiers.get(classifier_id, Counter()).packets


def _minus(now: Mapping[K, Counter], then: Mapping[K, Counter]) -> dict[K, Counter]:
    out = {}
    for key, counter in now.items():
        old = then.get(key, Counter())
        out[key] = Counter(counter.packets - old.packets, counter.bytes - old.bytes)
    return out


def snapshot(dp: Any) -> Snapshot:
    """Every counter of a loaded `dataplane.Dataplane`, summed over CPUs."""
    return Snapshot(
        reasons=dp.maps.reason_counts(),
        events=dp.maps.event_counts(),
        tunnels=dp.maps.tunnel_counts(),
        acl=dp.acl.counts_by_rule(),
        classifiers=dp.classifiers.counts_by_rule(),
    )


# --- the same through the daemon's API (StatsService.GetStats) ------------------------------------


@dataclass(frozen=True)
class ApiSnapshot:
    """A GetStatsResponse as mappings; reasons and events by their ABI name ("DROP_DENIED")."""

    reasons: Mapping[str, Counter]
    events: Mapping[str, Counter]
    tunnels: Mapping[int, Counter]
    acl: Mapping[int, Counter]
    legs: Mapping[tuple[str, str], Counter]  # (chain, "forward" | "return_path")
    interfaces: Mapping[str, Counter]
    generation: int = 0

    def __sub__(self, earlier: ApiSnapshot) -> ApiSnapshot:
        reasons, events, tunnels, acl, legs, interfaces = (
            _minus(now, then) for now, then in zip(self._parts(), earlier._parts(), strict=True))
        return ApiSnapshot(reasons, events, tunnels, acl, legs, interfaces, self.generation)

    def _parts(self) -> tuple[Mapping[Any, Counter], ...]:
        return (self.reasons, self.events, self.tunnels, self.acl, self.legs, self.interfaces)

    def reason(self, name: str) -> int:
        return self.reasons.get(name, Counter()).packets

    def event(self, name: str) -> int:
        return self.events.get(name, Counter()).packets

    def tunnel(self, vni: int) -> int:
        return self.tunnels.get(vni, Counter()).packets

    def acl_rule(self, rule_id: int) -> int:
        return self.acl.get(rule_id, Counter()).packets

    def leg(self, chain: str, leg: str) -> int:
        return self.legs.get((chain, leg), Counter()).packets

    def interface(self, name: str) -> int:
        return self.interfaces.get(name, Counter()).packets


def api_snapshot(response: Any) -> ApiSnapshot:
    """A tidegate.v1 GetStatsResponse as an ApiSnapshot."""
    from control.rpc.api import pb2

    def c(counter: Any) -> Counter:
        return Counter(counter.packets, counter.bytes)

    return ApiSnapshot(
        reasons={pb2.Reason.Name(r.reason).removeprefix("REASON_"): c(r.counter) for r in response.reasons},
        events={pb2.Event.Name(e.event).removeprefix("EVENT_"): c(e.counter) for e in response.events},
        tunnels={t.vni: c(t.counter) for t in response.tunnels},
        acl={r.rule_id: c(r.counter) for r in response.acl_rules},
        legs={(g.chain, g.leg): c(g.counter) for g in response.chain_legs},
        interfaces={i.name: c(i.counter) for i in response.interfaces},
        generation=response.generation,
    )
