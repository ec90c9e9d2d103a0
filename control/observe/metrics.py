"""Prometheus metrics (config `metrics.listen`): read from the kernel at scrape time.

    server = MetricsServer("127.0.0.1:9150", TidegateCollector(controller, pump, fanout, traces))
    server.start()   # GET http://127.0.0.1:9150/metrics
    server.stop()

There is no polling loop: TidegateCollector.collect() runs for each scrape and reads the per-CPU
counters of every loaded data plane then, under the controller's lock (so no change unloads a
data plane while it reads). A change that holds the lock for longer than SCRAPE_LOCK_TIMEOUT_S
(a big policy compiling) does not stall the scrape: it answers the health metrics only, with
`tidegate_scrape_complete 0`. Counters are labelled by interface; rule, tunnel and leg counters
start from zero when the rule, tunnel or leg is (re)created, as in GetStats.

Map occupancy is computed from what the daemon wrote (the compiled match tables and the
tunnels of each interface), not by walking the maps; conntrack, which the programs fill, from
the programs' own count of its flows. Kernel memory per map is the kernel's own figure
(dataplane.kernel.memory).

Series are bounded by what is configured, not by the size of the policy: per-rule series exist
only for the rules marked `metrics: true` (their counters alone are read) and, with
`metrics.top_rules: N`, the N busiest rules of each interface; everything else is a fixed set
per interface (reasons, events, maps) or per tunnel and chain leg. Nothing is exported twice:
the policy-event counts of the data plane's event counters are tidegate_policy_events_*, an
interface's total is `sum by (interface) (tidegate_reason_packets_total)` and whether the
daemon is up is Prometheus' own `up`.
"""

from __future__ import annotations

import heapq
import logging
import re
from collections.abc import Collection, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from control.apply.controller import Busy, DataplaneView
from dataplane import abi

log = logging.getLogger(__name__)

SCRAPE_LOCK_TIMEOUT_S = 2.0
_LISTEN = re.compile(r"^\[?(?P<host>[0-9A-Za-z.:-]+?)\]?:(?P<port>\d{1,5})$")


def _verdict(reason: str) -> str:
    return "drop" if abi.is_drop(abi.Reason[reason]) else "pass"


# Data plane events that tidegate_policy_events_{sent,lost}_total report (the same kernel
# counters): left out of tidegate_dataplane_events_total so no count is exported twice.
POLICY_EVENT_COUNTS = frozenset({"POLICY_SENT", "POLICY_RATE_LIMITED", "POLICY_RINGBUF_FULL"})


def chosen_rules(counts: dict[int, Any], marked: Collection[int], top: int) -> dict[int, Any]:
    """The rules that get series: those in `marked`, and the `top` with the most packets (only
    rules that matched something); `counts` maps rule id -> Counter."""
    out = {rid: c for rid, c in counts.items() if rid in marked}
    if top:
        busiest = heapq.nlargest(top, ((c.packets, rid) for rid, c in counts.items() if c.packets))
        out.update((rid, counts[rid]) for _, rid in busiest)
    return out


class _Families:
    """A packets and a bytes counter family over the same labels."""

    def __init__(self, name: str, what: str, labels: list[str]) -> None:
        self.packets = CounterMetricFamily(f"tidegate_{name}_packets", f"Packets {what}", labels=labels)
        self.bytes = CounterMetricFamily(f"tidegate_{name}_bytes", f"Bytes {what}", labels=labels)

    def add(self, labels: list[str], counter: Any) -> None:
        self.packets.add_metric(labels, counter.packets)
        self.bytes.add_metric(labels, counter.bytes)

    def __iter__(self) -> Iterator[Metric]:
        yield self.packets
        yield self.bytes


class TidegateCollector(Collector):
    """Every Tidegate metric, read at scrape time. The arguments are the daemon's parts (or fakes
    with the same attributes): a Controller, an EventPump, a Fanout and a TraceManager."""

    def __init__(self, controller: Any, pump: Any, fanout: Any, traces: Any,
                 lock_timeout: float = SCRAPE_LOCK_TIMEOUT_S, top_rules: int = 0) -> None:
        self.controller = controller
        self.pump = pump
        self.fanout = fanout
        self.traces = traces
        self.lock_timeout = lock_timeout
        self.top_rules = top_rules  # config metrics.top_rules

    def describe(self) -> list[Metric]:
        return []  # names are not known before a scrape; the registry must not collect to find them

    def collect(self) -> Iterator[Metric]:
        yield from self._health()
        complete, read = 1, []
        try:
            with self.controller.locked(self.lock_timeout) as view:
                read = [*self._dataplane(view), *self._policy_events()]
        except Busy:
            complete = 0
            log.warning("metrics scrape answered without counters: a change holds the controller")
        except Exception:  # noqa: BLE001 - the health metrics still answer
            complete = 0
            log.exception("metrics scrape could not read the data plane")
        yield from read
        yield GaugeMetricFamily("tidegate_scrape_complete",
                                "1 if this scrape read the data plane; 0 if a long change held it off",
                                value=complete)

    def _health(self) -> Iterator[Metric]:
        c = self.controller
        yield GaugeMetricFamily("tidegate_policy_generation", "Generation of the applied desired state",
                                value=c.state.generation)
        last = c.last_apply
        if last is not None:
            yield GaugeMetricFamily("tidegate_last_apply_success",
                                    "1 if the last change that reached the kernel was applied, "
                                    "0 if it failed", value=int(last.ok))
            yield GaugeMetricFamily("tidegate_last_apply_duration_seconds",
                                    "How long the last apply (or start-up restore) took",
                                    value=last.duration_s)
            yield GaugeMetricFamily("tidegate_last_apply_timestamp_seconds",
                                    "When the last apply ended (Unix time)", value=last.finished_unix)
        applies = CounterMetricFamily("tidegate_applies", "Applies since the daemon started, by result",
                                      labels=["result"])
        for result, n in sorted(c.applies.items()):
            applies.add_metric([result], n)
        yield applies
        yield GaugeMetricFamily("tidegate_traces_active", "Packet traces running now",
                                value=self.traces.active())

    def _dataplane(self, view: DataplaneView) -> Iterator[Metric]:
        iface = ["interface"]
        attached = GaugeMetricFamily("tidegate_interface_attached",
                                     "1 if the data plane's programs are attached to the interface",
                                     labels=iface)
        reasons = _Families("reason", "by verdict reason (every packet the XDP program saw, once)",
                            [*iface, "reason", "verdict"])
        rules = _Families("acl_rule", "that matched the ACL rule (rules marked `metrics: true`, and "
                          "the busiest with metrics.top_rules)", [*iface, "rule_id"])
        tunnels = _Families("tunnel", "decapsulated per VNI", [*iface, "vni"])
        legs = _Families("chain_leg", "marked by the service chain leg", [*iface, "chain", "leg"])
        events = CounterMetricFamily("tidegate_dataplane_events", "Data plane events (decaps, marks, ...)",
                                     labels=[*iface, "event"])
        memory = GaugeMetricFamily("tidegate_kernel_memory_bytes",
                                   "Kernel memory of the interface's BPF maps, per map (the kernel's "
                                   "memlock figure)", labels=[*iface, "map"])
        marked = self.controller.metric_rules()
        for name, is_attached in sorted(view.attached().items()):
            attached.add_metric([name], int(is_attached))
            stats = view.stats(name, rule_ids=None if self.top_rules else marked)
            for reason, c in stats.reasons.items():
                reasons.add([name, reason, _verdict(reason)], c)
            for rule_id, c in sorted(chosen_rules(stats.rules, marked, self.top_rules).items()):
                rules.add([name, str(rule_id)], c)
            for vni, c in sorted(stats.tunnels.items()):
                tunnels.add([name, str(vni)], c)
            for (chain, leg), c in sorted(stats.legs.items()):
                legs.add([name, chain, leg], c)
            for event, c in stats.events.items():
                if event not in POLICY_EVENT_COUNTS:  # tidegate_policy_events_* has them
                    events.add_metric([name, event], c.packets)
            for map_name, size in view.map_memory(name).items():
                memory.add_metric([name, map_name], size)
        yield attached
        for families in (reasons, rules, tunnels, legs):
            yield from families
        yield events
        yield memory
        entries = GaugeMetricFamily("tidegate_map_entries",
                                    "Entries in a map: those the daemon wrote, or for conntrack the "
                                    "flows the programs hold",
                                    labels=[*iface, "map"])
        capacity = GaugeMetricFamily("tidegate_map_capacity", "Entries a map can hold (max_entries)",
                                     labels=[*iface, "map"])
        for (name, map_name), (used, cap) in sorted(view.occupancy().items()):
            entries.add_metric([name, map_name], used)
            capacity.add_metric([name, map_name], cap)
        yield entries
        yield capacity

    def _policy_events(self) -> Iterator[Metric]:
        iface = ["interface"]
        sent = CounterMetricFamily("tidegate_policy_events_sent",
                                   "Policy events the kernel wrote to the ring buffer", labels=iface)
        lost = CounterMetricFamily("tidegate_policy_events_lost",
                                   "Policy events the kernel could not write, by cause",
                                   labels=[*iface, "cause"])
        for name, c in sorted(self.pump.kernel_counts().items()):
            sent.add_metric([name], c["sent"])
            lost.add_metric([name, "rate_limited"], c["rate_limited"])
            lost.add_metric([name, "ringbuf_full"], c["ringbuf_full"])
        read = CounterMetricFamily("tidegate_policy_events_read", "Policy events the daemon read",
                                   labels=iface)
        for name, n in sorted(self.pump.read_counts().items()):
            read.add_metric([name], n)
        dropped = CounterMetricFamily("tidegate_policy_events_dropped",
                                      "Policy events dropped for consumers that read too slowly",
                                      labels=["consumer"])
        found = self.fanout.dropped()
        for consumer in ("watch", "export"):
            dropped.add_metric([consumer], found.get(consumer, 0))
        yield from (sent, lost, read, dropped)
        yield GaugeMetricFamily("tidegate_policy_event_watchers", "WatchEvents streams open now",
                                value=self.fanout.count("watch"))


def parse_listen(listen: str) -> tuple[str, int]:
    """"127.0.0.1:9150" / "[::1]:9150" -> (host, port); ValueError otherwise."""
    m = _LISTEN.fullmatch(listen)
    if not m or int(m["port"]) > 65535:
        raise ValueError(f"{listen!r}: write HOST:PORT, e.g. 127.0.0.1:9150 or [::1]:9150")
    return m["host"], int(m["port"])


class MetricsServer:
    """The HTTP endpoint (/metrics) on its own registry: Tidegate's collector and the process's."""

    def __init__(self, listen: str, collector: Collector) -> None:
        self.host, self.requested_port = parse_listen(listen)
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        ProcessCollector(registry=self.registry)
        self._httpd: Any = None
        self._thread: Any = None

    @property
    def port(self) -> int:
        """The bound port (the requested one, or the kernel's pick for port 0)."""
        return int(self._httpd.server_address[1]) if self._httpd else self.requested_port

    def start(self) -> None:
        self._httpd, self._thread = start_http_server(self.requested_port, addr=self.host,
                                                      registry=self.registry)
        log.info("metrics endpoint listening", extra={"host": self.host, "port": self.port})

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5.0)
            self._httpd = None
