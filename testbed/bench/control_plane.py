"""Benchmark 4: the control plane, through a real daemon.

The daemon (testbed.daemon.DaemonProcess) runs in a namespace, attached natively to a veth, and
is driven through gRPC as a client would:

- apply: ApplyPolicy with N rules (testbed.bench.rules) onto an empty policy, timed at the
  client; beside it, in fresh namespaces, `iptables-restore`, `iptables-legacy-restore` and
  `nft -f` loading the same rules (iptables-restore is the baseline of the ratios);
- update: AddAclRule, one new rule at a time on top of `update_base` rules: latency per call,
  p50/p99, `update_samples` of them or as many as fit in `update_budget_s` (at least 10);
  beside it `nft add rule` and `iptables -A` on top of the same rules;
- metrics: a Prometheus scrape of the daemon holding the largest policy, with no rule, 1,000
  rules and every rule marked `metrics: true` (testbed.bench.scrape): series, bytes, time;
- the daemon: time from process start to health SERVING (fresh, and restarting into two
  attached interfaces with the update test's policy: one compile, the pins adopted, apply), the
  AttachInterface call for a first interface (a compile) and a second one (a copy of that build,
  dataplane.kernel.clone), and its memory (VmRSS, VmHWM from /proc/PID/status) idle, attached,
  after the largest apply;
- profile: the daemon's own controller and reconciler run in process (no gRPC) for the
  largest apply and for single updates, timed, then once more under cProfile
  (testbed.bench.control_profile).
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from functools import partial
from typing import Any

import grpc

from control.rpc.api import pb2, pb2_grpc
from testbed.bench import control_profile, rules, scrape
from testbed.bench.common import Profile, Section
from testbed.bench.control_report import TIDEGATE_APPLY, TIDEGATE_UPDATE, report
from testbed.bench.engines import NFT_TABLE
from testbed.bench.load import PREFIX, missing_tools
from testbed.daemon import DaemonProcess
from testbed.netns import Namespace, veth_pair

log = logging.getLogger(__name__)

NAME = "control"
TITLE = "Control plane: applying rules, single updates, the daemon"
CAPACITIES = {"acl_rules": 262_144, "acl_src": 262_144, "acl_dst": 1 << 20, "acl_port": 1 << 20}
IFACE, PEER = "c0", "c1"
IFACE_2, PEER_2 = "c2", "c3"  # the second interface: a copy of the first one's build
RPC_TIMEOUT = 600.0
MAX_MESSAGE = 256 << 20
UPDATE_FIRST_ID = 900_000
MIN_UPDATE_SAMPLES = 10
PROFILED_UPDATES = 5  # timed in process without the profiler, then one under it


def _rss(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


Render = Callable[[Sequence[rules.RuleSpec]], str]


def _nft_chain(spec: Sequence[rules.RuleSpec]) -> str:
    return rules.nft_chain(spec, NFT_TABLE)


def _nft_add(rule: rules.RuleSpec) -> list[str]:
    match = rules.nft_match(rule).split()
    return ["nft", "add", "rule", "ip", NFT_TABLE, "prerouting", *match, "counter", "accept"]


def _iptables_add(rule: rules.RuleSpec) -> list[str]:
    match = rules.iptables_match(rule).split()
    return ["iptables", "-t", "raw", "-A", "PREROUTING", *match, "-j", "ACCEPT"]


class Bench:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.section = Section(NAME, TITLE, method=__doc__ or "")
        self.specs = {n: rules.ruleset(n) for n in {*profile.control_sizes, profile.update_base}}
        self.apply: dict[tuple[str, int], list[float]] = defaultdict(list)
        self.updates: dict[str, list[float]] = {}
        self.ready: dict[str, list[float]] = defaultdict(list)
        self.attach: dict[str, list[float]] = defaultdict(list)
        self.rss: dict[str, dict[str, float]] = {}
        self.steps: tuple[control_profile.Profiled, control_profile.Profiled] | None = None
        self.scrapes: list[scrape.Scrape] = []

    # --- the daemon ---------------------------------------------------------------------------
    def daemon_runs(self) -> None:
        for _ in range(self.profile.control_runs):
            with Namespace(prefix=f"{PREFIX}c") as ns:
                d = DaemonProcess(ns, capacities=CAPACITIES)
                d.health_poll = 0.01
                try:
                    self.ready["fresh start"].append(_timed(d.start))
                    self.rss.setdefault("idle", _rss(d.proc.pid))  # type: ignore[union-attr]
                finally:
                    d.close()
        with ExitStack() as stack:
            ns = stack.enter_context(Namespace(prefix=f"{PREFIX}c"))
            veth_pair(ns, IFACE, ns, PEER)
            veth_pair(ns, IFACE_2, ns, PEER_2)
            d = DaemonProcess(ns, capacities=CAPACITIES, metrics_listen=scrape.METRICS)
            d.health_poll = 0.01
            stack.callback(d.close)
            d.start()
            for label, ifname in (("first interface (compiles)", IFACE),
                                  ("second interface (a copy of the build)", IFACE_2)):
                request = pb2.AttachInterfaceRequest(interface=pb2.Interface(name=ifname,
                                                                             mode=pb2.XDP_MODE_NATIVE))
                self.attach[label].append(
                    _timed(partial(d.interfaces.AttachInterface, request, timeout=RPC_TIMEOUT)))
            self.rss["attached"] = _rss(d.proc.pid)  # type: ignore[union-attr]
            channel = grpc.insecure_channel(
                f"unix:{d.socket}",
                options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE),
                    ("grpc.max_send_message_length", MAX_MESSAGE),
                ],
            )
            stack.callback(channel.close)
            policy = pb2_grpc.PolicyServiceStub(channel)
            self._applies(policy)
            self.rss[f"after {max(self.profile.control_sizes):,} rules"] = _rss(d.proc.pid)  # type: ignore[union-attr]
            self._scrapes(ns, policy)
            self._updates(policy)
            rule_count = self.profile.update_base + len(self.updates[TIDEGATE_UPDATE])
            for _ in range(self.profile.control_runs):
                d.stop(keep=True)
                self.ready[f"restart: 2 interfaces, {rule_count:,} rules"].append(_timed(d.start))

    def _applies(self, policy: Any) -> None:
        empty = pb2.ApplyPolicyRequest(policy=pb2.Policy())
        for _ in range(self.profile.control_runs):
            for n in self.profile.control_sizes:
                policy.ApplyPolicy(empty, timeout=RPC_TIMEOUT)
                request = pb2.ApplyPolicyRequest(policy=rules.proto_policy(self.specs[n]))
                self.apply[(TIDEGATE_APPLY, n)].append(
                    _timed(partial(policy.ApplyPolicy, request, timeout=RPC_TIMEOUT))
                )
                self._baseline_applies(n)

    def _scrapes(self, ns: Namespace, policy: Any) -> None:
        largest = rules.proto_policy(self.specs[max(self.profile.control_sizes)])  # what _applies left

        def apply(p: Any) -> None:
            policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=p), timeout=RPC_TIMEOUT)

        try:
            self.scrapes = scrape.run(ns, largest, apply)
        except Exception as exc:  # noqa: BLE001 - the report says what could not be measured
            log.exception("metrics scrape benchmark failed")
            self.section.failures.append(f"metrics scrapes: {type(exc).__name__}: {exc}")

    def _updates(self, policy: Any) -> None:
        base = self.specs[self.profile.update_base]
        policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=rules.proto_policy(base)), timeout=RPC_TIMEOUT)
        extra = self._extra_rules()
        samples: list[float] = []
        deadline = time.monotonic() + self.profile.update_budget_s
        for r in extra:
            if len(samples) >= MIN_UPDATE_SAMPLES and time.monotonic() > deadline:
                break  # bounded: each update can take as long as a whole apply
            request = pb2.AddAclRuleRequest(rule=rules.proto_rule(r))
            samples.append(_timed(partial(policy.AddAclRule, request, timeout=RPC_TIMEOUT)))
        self.updates[TIDEGATE_UPDATE] = samples
        self._baseline_updates(base, extra)

    def _extra_rules(self) -> list[rules.RuleSpec]:
        rng = random.Random(rules.SEED + 7)
        fresh = rules.generate(
            self.profile.update_samples, seed=rng.randrange(1 << 30), first_id=UPDATE_FIRST_ID
        )
        return fresh

    # --- baselines ----------------------------------------------------------------------------
    def _baseline_applies(self, n: int) -> None:
        loaders: list[tuple[str, list[str], Render]] = [
            (f"{b}-restore", [f"{b}-restore"], rules.iptables_restore)
            for b in ("iptables", "iptables-legacy")
            if not missing_tools(f"{b}-restore")
        ]
        if not missing_tools("nft"):
            loaders.append(("nft -f", ["nft", "-f", "-"], _nft_chain))
        for label, cmd, render in loaders:
            text = render(self.specs[n])
            with Namespace(prefix=f"{PREFIX}c") as ns:
                self.apply[(label, n)].append(_timed(partial(ns.run, cmd, input=text, timeout=600)))

    def _baseline_updates(self, base: Sequence[rules.RuleSpec], extra: Sequence[rules.RuleSpec]) -> None:
        cases: list[tuple[str, list[str], Render, Callable[[rules.RuleSpec], list[str]]]] = []
        if not missing_tools("nft"):
            cases.append(("nft add rule", ["nft", "-f", "-"], _nft_chain, _nft_add))
        if not missing_tools("iptables-restore"):
            cases.append(("iptables -A", ["iptables-restore"], rules.iptables_restore, _iptables_add))
        for label, load, render, add in cases:
            with Namespace(prefix=f"{PREFIX}c") as ns:
                ns.run(load, input=render(base), timeout=600)
                self.updates[label] = [_timed(partial(ns.run, add(r), timeout=60)) for r in extra]

    # --- profile ------------------------------------------------------------------------------
    def profile_steps(self) -> None:
        largest = self.specs[max(self.profile.control_sizes)]
        base = self.specs[self.profile.update_base]
        extra = self._extra_rules()[: PROFILED_UPDATES + 1]
        try:
            self.steps = control_profile.profile(largest, base, extra, CAPACITIES, IFACE, PEER)
        except Exception as exc:  # noqa: BLE001 - the profile explains; its absence is reported
            log.exception("control plane profile failed")
            self.section.failures.append(f"in-process profile of the daemon: {type(exc).__name__}: {exc}")


def run(profile: Profile) -> Section:
    bench = Bench(profile)
    bench.daemon_runs()
    bench.profile_steps()
    report(bench)
    return bench.section
