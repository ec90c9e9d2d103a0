"""Benchmark 4: the control plane, through a real daemon.

The daemon (testbed.daemon.DaemonProcess) runs in a namespace, attached natively to a veth, and
is driven through gRPC as a client would:

- apply: ApplyPolicy with N rules (testbed.bench.rules) onto an empty policy, timed at the
  client, as AclRule messages and as one packed AclColumns; beside it, in fresh namespaces,
  `iptables-restore`, `iptables-legacy-restore` and `nft -f` loading the same rules
  (iptables-restore is the baseline of the ratios);
- update: AddAclRule, then DeleteAclRule of the same rules, one call at a time on top of each
  `update_bases` rule count: latency per call, p50/p99, `update_samples` calls or as many as
  fit in `update_budget_s` (at least 10); beside it `nft add rule` and `iptables -A` on top of
  the same rules;
- metrics: a Prometheus scrape of the daemon holding the largest policy, with no rule, 1,000
  rules and every rule marked `metrics: true` (testbed.bench.scrape): series, bytes, time;
- the daemon: time from process start to health SERVING (fresh; restarting gracefully into two
  attached interfaces with the update test's policy (the daemon does not detach on exit); and
  after SIGKILL with the largest update
  base in place: the pinned programs and maps adopted as they stand), the AttachInterface call
  for a first interface (a compile) and a second one (a copy of that build,
  dataplane.kernel.clone), and its memory (VmRSS, VmHWM) idle, attached, after the largest apply;
- ClassBench: the acl1, fw1 and ipc1 sets (testbed.bench.control_classbench);
- profile: the daemon's own controller and reconciler run in process (no gRPC) for the
  largest apply and for single updates, timed, then once more under cProfile
  (testbed.bench.control_profile).
"""

from __future__ import annotations

import logging
import random
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from functools import partial
from typing import Any

from control.rpc.api import pb2, pb2_grpc
from testbed.bench import control_classbench, control_profile, rules, scrape
from testbed.bench.common import Profile, Section
from testbed.bench.control_report import (
    KILL_RESTART,
    TIDEGATE_ADD,
    TIDEGATE_APPLY,
    TIDEGATE_APPLY_PACKED,
    TIDEGATE_DELETE,
    report,
)
from testbed.bench.control_rig import CAPACITIES, IFACE, PEER, channel, restore_loaders, rss, timed
from testbed.bench.engines import NFT_TABLE
from testbed.bench.load import PREFIX, missing_tools
from testbed.daemon import DaemonProcess
from testbed.netns import Namespace, veth_pair

log = logging.getLogger(__name__)

NAME = "control"
TITLE = "Control plane: applying rules, single updates, the daemon"
IFACE_2, PEER_2 = "c2", "c3"  # the second interface: a copy of the first one's build
RPC_TIMEOUT = 600.0
UPDATE_FIRST_ID = 900_000
MIN_UPDATE_SAMPLES = 10
PROFILED_UPDATES = 5  # timed in process without the profiler, then one under it


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
        sizes = {*profile.control_sizes, *profile.update_bases}
        self.specs = {n: rules.ruleset(n) for n in sizes}
        self.apply: dict[tuple[str, int], list[float]] = defaultdict(list)
        self.updates: dict[int, dict[str, list[float]]] = defaultdict(dict)  # base -> how -> seconds
        self.ready: dict[str, list[float]] = defaultdict(list)
        self.attach: dict[str, list[float]] = defaultdict(list)
        self.rss: dict[str, dict[str, float]] = {}
        self.classbench: control_classbench.Results | None = None
        self.steps: tuple[control_profile.Profiled, control_profile.Profiled] | None = None
        self.scrapes: list[scrape.Scrape] = []

    # --- the daemon ---------------------------------------------------------------------------
    def daemon_runs(self) -> None:
        for _ in range(self.profile.control_runs):
            with Namespace(prefix=f"{PREFIX}c") as ns:
                d = DaemonProcess(ns, capacities=CAPACITIES)
                d.health_poll = 0.01
                try:
                    self.ready["fresh start"].append(timed(d.start))
                    self.rss.setdefault("idle", rss(d.proc.pid))  # type: ignore[union-attr]
                finally:
                    d.close()
        with ExitStack() as stack:
            ns = stack.enter_context(Namespace(prefix=f"{PREFIX}c"))
            veth_pair(ns, IFACE, ns, PEER)
            veth_pair(ns, IFACE_2, ns, PEER_2)
            d = DaemonProcess(ns, capacities=CAPACITIES, metrics_listen=scrape.METRICS, detach_on_exit=False)
            d.health_poll = 0.01
            stack.callback(d.close)
            d.start()
            for label, ifname in (
                ("first interface (compiles)", IFACE),
                ("second interface (a copy of the build)", IFACE_2),
            ):
                request = pb2.AttachInterfaceRequest(
                    interface=pb2.Interface(name=ifname, mode=pb2.XDP_MODE_NATIVE)
                )
                self.attach[label].append(
                    timed(partial(d.interfaces.AttachInterface, request, timeout=RPC_TIMEOUT))
                )
            self.rss["attached"] = rss(d.proc.pid)  # type: ignore[union-attr]
            ch = channel(d)
            stack.callback(ch.close)
            policy = pb2_grpc.PolicyServiceStub(ch)
            self._applies(policy)
            self.rss[f"after {max(self.profile.control_sizes):,} rules"] = rss(d.proc.pid)  # type: ignore[union-attr]
            self._scrapes(ns, policy)
            for base in sorted(self.profile.update_bases):
                self._updates(policy, base)
            largest = max(self.profile.update_bases)
            for _ in range(self.profile.control_runs):
                d.stop(keep=True)
                self.ready[f"restart: 2 interfaces, {largest:,} rules"].append(timed(d.start))
            for _ in range(self.profile.control_runs):
                d.kill(signal.SIGKILL)
                self.ready[f"{KILL_RESTART}: 2 interfaces, {largest:,} rules"].append(timed(d.start))
            self.rss[f"restarted into {largest:,} rules"] = rss(d.proc.pid)  # type: ignore[union-attr]

    def _applies(self, policy: Any) -> None:
        empty = pb2.ApplyPolicyRequest(policy=pb2.Policy())
        for _ in range(self.profile.control_runs):
            for n in self.profile.control_sizes:
                plain = pb2.ApplyPolicyRequest(policy=rules.proto_policy(self.specs[n]))
                packed = pb2.ApplyPolicyRequest(policy=rules.packed_policy(self.specs[n]))
                for label, request in ((TIDEGATE_APPLY, plain), (TIDEGATE_APPLY_PACKED, packed)):
                    policy.ApplyPolicy(empty, timeout=RPC_TIMEOUT)
                    self.apply[(label, n)].append(
                        timed(partial(policy.ApplyPolicy, request, timeout=RPC_TIMEOUT))
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

    def _updates(self, policy: Any, base_size: int) -> None:
        base = self.specs[base_size]
        policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=rules.proto_policy(base)), timeout=RPC_TIMEOUT)
        extra = self._extra_rules()
        added: list[float] = []
        deadline = time.monotonic() + self.profile.update_budget_s
        for r in extra:
            if len(added) >= MIN_UPDATE_SAMPLES and time.monotonic() > deadline:
                break  # bounded: each update could take as long as a whole apply
            request = pb2.AddAclRuleRequest(rule=rules.proto_rule(r))
            added.append(timed(partial(policy.AddAclRule, request, timeout=RPC_TIMEOUT)))
        deleted = [
            timed(partial(policy.DeleteAclRule, pb2.DeleteAclRuleRequest(id=r.rule_id), timeout=RPC_TIMEOUT))
            for r in extra[: len(added)]
        ]
        self.updates[base_size] = {TIDEGATE_ADD: added, TIDEGATE_DELETE: deleted}
        self._baseline_updates(base_size, base, extra[: len(added)])

    def _extra_rules(self) -> list[rules.RuleSpec]:
        rng = random.Random(rules.SEED + 7)
        return rules.generate(
            self.profile.update_samples, seed=rng.randrange(1 << 30), first_id=UPDATE_FIRST_ID
        )

    # --- baselines ----------------------------------------------------------------------------
    def _baseline_applies(self, n: int) -> None:
        render: dict[str, Render] = {"nft -f": _nft_chain}
        for label, cmd in restore_loaders():
            text = render.get(label, rules.iptables_restore)(self.specs[n])
            with Namespace(prefix=f"{PREFIX}c") as ns:
                self.apply[(label, n)].append(timed(partial(ns.run, cmd, input=text, timeout=600)))

    def _baseline_updates(
        self, base_size: int, base: Sequence[rules.RuleSpec], extra: Sequence[rules.RuleSpec]
    ) -> None:
        cases: list[tuple[str, list[str], Render, Callable[[rules.RuleSpec], list[str]]]] = []
        if not missing_tools("nft"):
            cases.append(("nft add rule", ["nft", "-f", "-"], _nft_chain, _nft_add))
        if not missing_tools("iptables-restore"):
            cases.append(("iptables -A", ["iptables-restore"], rules.iptables_restore, _iptables_add))
        for label, load, render, add in cases:
            with Namespace(prefix=f"{PREFIX}c") as ns:
                ns.run(load, input=render(base), timeout=600)
                samples: list[float] = []
                deadline = time.monotonic() + self.profile.update_budget_s
                for r in extra:
                    if len(samples) >= MIN_UPDATE_SAMPLES and time.monotonic() > deadline:
                        break
                    samples.append(timed(partial(ns.run, add(r), timeout=60)))
                self.updates[base_size][label] = samples

    # --- profile ------------------------------------------------------------------------------
    def profile_steps(self) -> None:
        largest = self.specs[max(self.profile.control_sizes)]
        base = self.specs[max(self.profile.update_bases)]
        extra = self._extra_rules()[: PROFILED_UPDATES + 1]
        try:
            self.steps = control_profile.profile(largest, base, extra, CAPACITIES, IFACE, PEER)
        except Exception as exc:  # noqa: BLE001 - the profile explains; its absence is reported
            log.exception("control plane profile failed")
            self.section.failures.append(f"in-process profile of the daemon: {type(exc).__name__}: {exc}")


def run(profile: Profile) -> Section:
    bench = Bench(profile)
    bench.daemon_runs()
    bench.classbench = control_classbench.run(profile, bench.section)
    bench.profile_steps()
    report(bench)
    return bench.section
