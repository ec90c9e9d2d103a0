"""The Prometheus collector with fakes: what it reads at scrape time, labels, map occupancy from
the compiled tables, apply health, a scrape during a long change, and the HTTP endpoint."""

from __future__ import annotations

import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from control.apply.controller import Controller
from control.apply.reconcile import ApplyError, InvalidState, Stats, occupancy
from control.apply.state import StateStore
from control.observe.fanout import EventFilter, Fanout
from control.observe.metrics import MetricsServer, TidegateCollector, chosen_rules, parse_listen
from control.policy.intent import interface_intent
from control.policy.models import DesiredState
from dataplane.acl import acl_capacity, acl_rule, cls_capacity
from dataplane.kernel.build_settings import Capacities, DataplaneSettings
from dataplane.kernel.maps import Counter
from dataplane.match import planner
from dataplane.match.adapter import compile_rules, empty
from dataplane.match.columns import RuleColumns
from dataplane.match.live import count_buckets
from dataplane.match.table import ACL_TABLES, CLS_TABLES, MatchTable

CT_CAPACITY = 256
CAPS = Capacities(acl_rules=64, acl_buckets=128, acl_buckets4=96, tunnels=16, conntrack=CT_CAPACITY)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class FakePlane:
    def __init__(self, rules: Any) -> None:
        """`rules`: RuleColumns (a policy's ACL) or MatchRules."""
        no_maps = SimpleNamespace  # occupancy reads what the table holds, not its maps
        self.acl = MatchTable(no_maps, ACL_TABLES, acl_capacity(CAPS))
        compile = planner.compile_rules if isinstance(rules, RuleColumns) else compile_rules
        self.acl.current = compile(rules, empty(), acl_capacity(CAPS), "acl").live()
        self.classifiers = MatchTable(no_maps, CLS_TABLES, cls_capacity(CAPS))
        self.xdp_mode: str | None = "native"
        self.flows = 0  # what the programs' conntrack count would say (the real one: tests/integration)
        self.maps = SimpleNamespace(conntrack_live=lambda: self.flows)

    def map_memory(self) -> dict[str, int]:
        return {"acl_rules": 4096, "acl_rule_stats": 8192}


class FakeReconciler:
    """A Reconciler's surface as the controller and the collector use it, without BPF."""

    def __init__(self) -> None:
        self.settings = DataplaneSettings(capacities=CAPS)
        self.planes: dict[str, FakePlane] = {}
        self.intents: dict[str, Any] = {}
        self.applied = DesiredState()
        self.counts: dict[str, Stats] = {}
        self.fail_next: BaseException | None = None
        self.delay = 0.0
        self.asked: list[Any] = []  # the rule_ids of each stats() call
        self.mismatches: dict[str, str] = {}

    def restore(self, state: DesiredState) -> None:
        self.apply(state)

    def verify_kept(self, new: DesiredState) -> None: ...

    def index_ahead(self) -> None: ...

    def preflight(self, state: DesiredState) -> None:
        pass

    def apply(self, state: DesiredState) -> None:
        time.sleep(self.delay)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.applied = state
        for iface in state.interfaces:
            intent = interface_intent(state, iface.name)
            self.planes[iface.name] = FakePlane(intent.acl.columns)
            self.intents[iface.name] = intent

    def stats(self, names: list[str] | None = None, rule_ids: Any = None) -> Stats:
        (name,) = names or [None]
        self.asked.append(rule_ids)
        found = self.counts.get(name, Stats())
        if rule_ids is None:
            return found
        return replace(found, rules={r: c for r, c in found.rules.items() if r in rule_ids})


class FakePump:
    def __init__(self) -> None:
        self.kernel = {"eth0": {"sent": 10, "rate_limited": 3, "ringbuf_full": 1}}
        self.read = {"eth0": 9}

    def kernel_counts(self, names: Any = None) -> dict[str, dict[str, int]]:
        return self.kernel

    def read_counts(self) -> dict[str, int]:
        return self.read


@pytest.fixture
def parts() -> Iterator[tuple[Controller, FakeReconciler, FakePump, Fanout, TidegateCollector]]:
    directory = tempfile.mkdtemp(prefix="tgmetrics")
    reconciler = FakeReconciler()
    controller = Controller(StateStore(Path(directory)), reconciler)  # type: ignore[arg-type]
    controller.start()
    pump, fanout = FakePump(), Fanout()
    traces = SimpleNamespace(active=lambda: 1)
    collector = TidegateCollector(controller, pump, fanout, traces, lock_timeout=0.3)
    yield controller, reconciler, pump, fanout, collector


def scrape(collector: TidegateCollector) -> Samples:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def with_policy(controller: Controller) -> None:
    def edit(s: DesiredState) -> DesiredState:
        return DesiredState.model_validate({
            "interfaces": [{"name": "eth0"}],
            "policy": {"acl": [{"id": 5, "action": "deny", "match": {"src": "10.0.0.0/8"}, "metrics": True},
                               {"id": 6, "action": "allow", "match": {"protocol": "udp", "dport": 53}}],
                       "tunnels": [{"vni": 100}, {"vni": 200}]}})
    controller.change(edit)


def test_counters_are_read_at_scrape_time_with_labels(parts: Any) -> None:
    controller, reconciler, pump, fanout, collector = parts
    with_policy(controller)
    reconciler.counts["eth0"] = Stats(
        rules={5: Counter(3, 300), 6: Counter(9, 900)}, tunnels={100: Counter(2, 200)},
        legs={("web", "forward"): Counter(4, 400)},
        reasons={"DROP_DENIED": Counter(3, 300), "PASS_ALLOWED": Counter(7, 700)},
        events={"DECAP_VXLAN": Counter(2, 200), "POLICY_SENT": Counter(5, 500)},
        interfaces={"eth0": Counter(10, 1000)})
    s = scrape(collector)
    assert value(s, "tidegate_acl_rule_packets_total", interface="eth0", rule_id="5") == 3
    assert value(s, "tidegate_acl_rule_bytes_total", interface="eth0", rule_id="5") == 300
    # rule 6 is not marked `metrics: true`: counted, but no series; only rule 5's counters were read
    assert not [k for k in s if k[0].startswith("tidegate_acl_rule") and ("rule_id", "6") in k[1]]
    assert reconciler.asked[-1] == {5}
    assert value(s, "tidegate_tunnel_packets_total", interface="eth0", vni="100") == 2
    assert value(s, "tidegate_chain_leg_packets_total", interface="eth0", chain="web", leg="forward") == 4
    assert value(s, "tidegate_reason_packets_total", interface="eth0", reason="DROP_DENIED",
                 verdict="drop") == 3
    assert value(s, "tidegate_reason_packets_total", interface="eth0", reason="PASS_ALLOWED",
                 verdict="pass") == 7
    assert value(s, "tidegate_dataplane_events_total", interface="eth0", event="DECAP_VXLAN") == 2
    assert value(s, "tidegate_interface_attached", interface="eth0") == 1
    assert value(s, "tidegate_kernel_memory_bytes", interface="eth0", map="acl_rule_stats") == 8192
    # no count twice: policy events are tidegate_policy_events_*, totals are sums over reasons
    assert value(s, "tidegate_dataplane_events_total", interface="eth0", event="POLICY_SENT") is None
    assert not [k for k in s if k[0].startswith(("tidegate_interface_packets", "tidegate_up"))]

    reconciler.counts["eth0"] = Stats(rules={5: Counter(8, 800)})  # no polling loop: a scrape reads anew
    assert value(scrape(collector), "tidegate_acl_rule_packets_total", interface="eth0", rule_id="5") == 8


def test_top_rules_adds_the_busiest_rules_reading_every_rule(parts: Any) -> None:
    controller, reconciler, pump, fanout, _ = parts
    with_policy(controller)
    reconciler.counts["eth0"] = Stats(rules={5: Counter(1, 100), 6: Counter(9, 900)})
    collector = TidegateCollector(controller, pump, fanout, SimpleNamespace(active=lambda: 0), top_rules=1)
    s = scrape(collector)
    assert reconciler.asked[-1] is None  # the busiest can only be found among all of them
    assert value(s, "tidegate_acl_rule_packets_total", interface="eth0", rule_id="6") == 9  # busiest
    assert value(s, "tidegate_acl_rule_packets_total", interface="eth0", rule_id="5") == 1  # marked


def test_chosen_rules() -> None:
    counts = {1: Counter(0, 0), 2: Counter(5, 50), 3: Counter(7, 70), 4: Counter(1, 10)}
    assert chosen_rules(counts, {1}, 0) == {1: counts[1]}
    assert chosen_rules(counts, set(), 2) == {3: counts[3], 2: counts[2]}
    assert chosen_rules(counts, {4}, 1) == {4: counts[4], 3: counts[3]}
    assert chosen_rules({1: Counter(0, 0)}, set(), 5) == {}  # idle rules are not "busiest"
    assert chosen_rules(counts, {99}, 0) == {}  # marked, but not on this interface


def test_map_occupancy_comes_from_the_compiled_tables_and_tunnels(parts: Any) -> None:
    controller, reconciler, _, _, collector = parts
    with_policy(controller)
    s = scrape(collector)
    current = reconciler.planes["eth0"].acl.current
    assert value(s, "tidegate_map_entries", interface="eth0", map="acl_rules") == 2 == len(current)
    assert value(s, "tidegate_map_capacity", interface="eth0", map="acl_rules") == 64
    # the IPv4 rule's bucket is in the IPv4 map, the any-family rule's in both
    v4, v6 = count_buckets(current.keys)
    assert value(s, "tidegate_map_entries", interface="eth0", map="acl_buckets4") == v4 >= 1
    assert value(s, "tidegate_map_capacity", interface="eth0", map="acl_buckets4") == 96
    assert value(s, "tidegate_map_entries", interface="eth0", map="acl_buckets") == v6 >= 1
    assert value(s, "tidegate_map_capacity", interface="eth0", map="acl_buckets") == 128
    assert value(s, "tidegate_map_entries", interface="eth0", map="tunnels") == 2
    assert value(s, "tidegate_map_capacity", interface="eth0", map="tunnels") == 16
    assert value(s, "tidegate_map_entries", interface="eth0", map="cls_rules") == 0
    assert value(s, "tidegate_map_entries", interface="eth0", map="conntrack") == 0
    reconciler.planes["eth0"].flows = 7
    s = scrape(collector)
    assert value(s, "tidegate_map_entries", interface="eth0", map="conntrack") == 7
    assert value(s, "tidegate_map_capacity", interface="eth0", map="conntrack") == CT_CAPACITY
    assert occupancy(reconciler)[("eth0", "acl_buckets")][0] >= 1


def test_occupancy_of_a_bigger_table() -> None:
    rules = [acl_rule(i, i, "deny", src=f"10.{i}.0.0/16") for i in range(1, 21)]
    plane = FakePlane(rules)
    reconciler = SimpleNamespace(settings=DataplaneSettings(capacities=CAPS), planes={"eth1": plane},
                                 intents={})
    found = occupancy(reconciler)
    assert found[("eth1", "acl_rules")] == (20, 64)
    assert found[("eth1", "acl_buckets4")] == (len(plane.acl.current.keys), 96)  # IPv4 rules only
    assert found[("eth1", "acl_buckets")] == (0, 128)
    assert found[("eth1", "tunnels")] == (0, 16)
    assert found[("eth1", "conntrack")] == (0, CT_CAPACITY)


def test_health_generation_and_last_apply(parts: Any) -> None:
    controller, reconciler, _, _, collector = parts
    s = scrape(collector)
    assert value(s, "tidegate_scrape_complete") == 1
    assert value(s, "tidegate_policy_generation") == 0
    assert value(s, "tidegate_last_apply_success") == 1  # the start-up restore
    assert value(s, "tidegate_applies_total", result="ok") == 1
    assert value(s, "tidegate_traces_active") == 1

    with_policy(controller)
    reconciler.fail_next = ApplyError("the kernel refused; the previous state is in force again")
    with pytest.raises(ApplyError):
        controller.change(lambda st: st.model_copy())
    reconciler.fail_next = InvalidState([("policy", "does not fit")])  # refused before writing: no apply
    with pytest.raises(InvalidState):
        controller.change(lambda st: st.model_copy())
    s = scrape(collector)
    assert value(s, "tidegate_policy_generation") == 1
    assert value(s, "tidegate_last_apply_success") == 0
    assert value(s, "tidegate_applies_total", result="ok") == 2
    assert value(s, "tidegate_applies_total", result="failed") == 1
    duration = value(s, "tidegate_last_apply_duration_seconds")
    assert duration is not None and 0 <= duration < 5
    stamp = value(s, "tidegate_last_apply_timestamp_seconds")
    assert stamp is not None and abs(stamp - time.time()) < 60


def test_policy_event_losses(parts: Any) -> None:
    _, _, pump, fanout, collector = parts
    slow = fanout.subscribe(EventFilter(), capacity=1, kind="watch")
    for _ in range(4):
        fanout.publish("eth0", SimpleNamespace(rule_id=1, reason=6, src=None, dst=None))
    s = scrape(collector)
    assert value(s, "tidegate_policy_events_sent_total", interface="eth0") == 10
    assert value(s, "tidegate_policy_events_lost_total", interface="eth0", cause="rate_limited") == 3
    assert value(s, "tidegate_policy_events_lost_total", interface="eth0", cause="ringbuf_full") == 1
    assert value(s, "tidegate_policy_events_read_total", interface="eth0") == 9
    assert value(s, "tidegate_policy_events_dropped_total", consumer="watch") == 3
    assert value(s, "tidegate_policy_events_dropped_total", consumer="export") == 0
    assert value(s, "tidegate_policy_event_watchers") == 1
    fanout.unsubscribe(slow)  # the stream is gone, its losses are not
    s = scrape(collector)
    assert value(s, "tidegate_policy_events_dropped_total", consumer="watch") == 3
    assert value(s, "tidegate_policy_event_watchers") == 0


def test_a_scrape_during_a_long_change_answers_health_only(parts: Any) -> None:
    controller, reconciler, _, _, collector = parts
    with_policy(controller)
    reconciler.delay = 1.5
    changing = threading.Thread(target=controller.change, args=(lambda st: st.model_copy(),))
    changing.start()
    time.sleep(0.2)
    started = time.monotonic()
    s = scrape(collector)
    assert time.monotonic() - started < 1.0  # the lock timeout (0.3 s), not the change
    changing.join()
    assert value(s, "tidegate_scrape_complete") == 0 and value(s, "tidegate_policy_generation") == 1
    assert not any(name.startswith("tidegate_acl_rule") for name, _ in s)
    assert value(scrape(collector), "tidegate_scrape_complete") == 1


def test_the_endpoint_serves_over_http(parts: Any) -> None:
    *_, collector = parts
    server = MetricsServer("127.0.0.1:0", collector)
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        assert answer.status == 200
        assert "tidegate_scrape_complete 1.0" in text and "process_cpu_seconds_total" in text
    finally:
        server.stop()


@pytest.mark.parametrize(("listen", "expected"), [("127.0.0.1:9150", ("127.0.0.1", 9150)),
                                                  ("[::1]:9150", ("::1", 9150)),
                                                  ("localhost:80", ("localhost", 80))])
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9150", "127.0.0.1", "127.0.0.1:70000", ":9150"])
def test_parse_listen_refuses(listen: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(listen)
