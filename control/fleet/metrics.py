"""Prometheus metrics of a fleet member (registered beside control.observe.metrics' when both are on)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class FleetCollector(Collector):
    def __init__(self, member: Any) -> None:
        self.member = member

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        m = self.member
        stats = m.watcher.stats
        applied = m.applied
        yield GaugeMetricFamily("tidegate_fleet_connected",
                                "1 while the watch on etcd is up; 0 while etcd cannot be reached (the "
                                "data plane keeps the last applied policy)", value=int(stats.connected))
        yield GaugeMetricFamily("tidegate_fleet_status_online",
                                "1 if the node's status key was last written or refreshed successfully",
                                value=int(m.status.online))
        yield GaugeMetricFamily("tidegate_fleet_applied_revision",
                                "etcd mod revision of the policy this node enforces (0: the empty policy)",
                                value=applied.revision if applied is not None else 0)
        yield GaugeMetricFamily("tidegate_fleet_seen_revision",
                                "etcd revision up to which this node has seen every change",
                                value=m.watcher.mirror.revision)
        yield GaugeMetricFamily("tidegate_fleet_error",
                                "1 if the policy etcd assigns could not be applied (see the status key)",
                                value=int(m.error is not None))
        applies = CounterMetricFamily("tidegate_fleet_applies", "Fleet targets handled, by result",
                                      labels=["result"])
        for result, n in sorted(m.applies.items()):
            applies.add_metric([result], n)
        yield applies
        for name, value, what in (("lists", stats.lists, "Full lists of the intent keys (start, compaction)"),
                                  ("compactions", stats.compactions, "Watch resumes refused as compacted"),
                                  ("reconnects", stats.reconnects, "Watch streams opened again")):
            yield CounterMetricFamily(f"tidegate_fleet_{name}", what, value=value)
