"""A bounded soak: traffic, policy churn and event streaming together against a real daemon.

    python -m testbed.soak --duration 180          # as root; prints a report, exit 1 on a violation

In two namespaces (testbed.flow_topology) a daemon runs with Tidegate on the receiver's link and
policy set A of testbed.policy_sets (10k rules by default). For `--duration` seconds, at once:

  * traffic: sequence-numbered UDP probe flows (testbed.flows), half allowed, half denied, at
    `--rate` frames/s, counted per sequence number at the receiver;
  * churn: one-rule AddAclRule / DeleteAclRule calls (rules no probe matches) and, every
    `--swap-every` seconds, a whole-policy swap to the other set (A <-> B, fresh filler each
    time); every `--bad-every`-th swap is one the kernel refuses part-way (a chain whose next
    hop has no route), which must roll back to the set in force;
  * events: a WatchEvents stream with no filter, read as fast as it comes;
  * the daemon's RSS, sampled every `--rss-every` seconds.

The report: packets against policy (allowed sent vs received, denied that arrived, verdict
counters that moved other than the traffic says: a DROP_DEFAULT is a packet judged by no whole
set), policy events received on the stream vs what the kernel says it sent, rate limited and
could not write, and what the stream was told it dropped; the RSS samples; the changes made and
refused. Exit status: 0 when the policy held, 1 when it was violated (or the daemon died), 2 on a
setup error, 128 + signal when stopped. Everything it creates is removed, also on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import threading
import time
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc

from control.policy.models import Leg, NextHop, Policy, ServiceChain
from control.rpc import convert
from control.rpc.api import pb2
from testbed import cleanup, flow_topology, policy_sets
from testbed.daemon import RPC_TIMEOUT, DaemonError, DaemonProcess
from testbed.flow_checks import apply, attach, describe, rss_kib, stats, verdicts
from testbed.flows import interface_drops

log = logging.getLogger("testbed.soak")

CHURN_FIRST_ID = 500_000
UNREACHABLE_VIA = "10.99.0.2"
VERDICTS = ("PASS_ALLOWED", "DROP_DENIED", "DROP_DEFAULT")
SETTLE_EVENTS = 5.0  # after the traffic, how long the stream may take to deliver what is in flight


@dataclass(frozen=True)
class SoakConfig:
    duration: float = 180.0
    rate: float = 3000.0
    probes: int = 8
    filler: int = policy_sets.FILLER
    swap_every: float = 5.0
    bad_every: int = 4
    churn_pause: float = 0.05
    rss_every: float = 2.0
    seed: int = 0


@dataclass
class SoakReport:
    config: dict[str, Any]
    packets: dict[str, int] = field(default_factory=dict)
    verdict_counters: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    rss_kib: list[tuple[float, int]] = field(default_factory=list)
    changes: dict[str, int] = field(default_factory=dict)
    change_errors: list[str] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    daemon_alive: bool = True
    flows: str = ""

    @property
    def violations(self) -> int:
        """Packets the policy was not applied to: allowed lost, denied arrived, judged by no set."""
        p, v = self.packets, self.verdict_counters
        return (p["allowed_lost"] + p["denied_arrived"] + v["DROP_DEFAULT"]
                + abs(v["PASS_ALLOWED"] - p["allowed_sent"]) + abs(v["DROP_DENIED"] - p["denied_sent"]))

    @property
    def ok(self) -> bool:
        return self.daemon_alive and self.violations == 0

    def text(self) -> str:
        p, e, c = self.packets, self.events, self.changes
        rss = [kib for _, kib in self.rss_kib] or [0]
        lines = [
            f"soak of {self.config['duration']:.0f} s, {self.config['rate']:.0f} frames/s, "
            f"{self.config['filler']} filler rules per set, seed {self.config['seed']}",
            f"packets: allowed sent {p['allowed_sent']}, received {p['allowed_received']}, "
            f"lost {p['allowed_lost']}; denied sent {p['denied_sent']}, arrived {p['denied_arrived']}; "
            f"testbed drops (interfaces) {p['testbed_drops']}",
            "verdict counters moved: " + ", ".join(f"{k} {v}" for k, v in self.verdict_counters.items()),
            f"policy events: kernel sent {e['sent']}, rate limited {e['rate_limited']}, ring full "
            f"{e['ringbuf_full']}; daemon read {e['read']}; stream received {e['received']}, "
            f"told dropped {e['stream_dropped']}; unaccounted {e['unaccounted']}",
            f"daemon RSS (MiB): start {rss[0] / 1024:.1f}, max {max(rss) / 1024:.1f}, "
            f"end {rss[-1] / 1024:.1f} ({len(rss)} samples: "
            + " ".join(f"{kib / 1024:.0f}" for kib in _spread(rss, 12)) + ")",
            "changes: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())),
            "latency ms: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(self.latency_ms.items())),
        ]
        if self.change_errors:
            lines.append("unexpected errors: " + "; ".join(self.change_errors[:5]))
        if not self.daemon_alive:
            lines.append("THE DAEMON DIED")
        held = "" if self.violations else " (the policy held)"
        lines.append(f"policy violations: {self.violations}{held}")
        return "\n".join(lines)


def _spread(values: list[int], n: int) -> list[int]:
    if len(values) <= n:
        return values
    return [values[round(i * (len(values) - 1) / (n - 1))] for i in range(n)]


class EventWatch:
    """A WatchEvents stream with no filter, counted in a thread."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.call = daemon.events.WatchEvents(pb2.WatchEventsRequest())
        self.received = 0
        self.by_reason: Tally[str] = Tally()
        self.loss = pb2.EventLoss()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="soak-events", daemon=True)
        self.thread.start()
        if not self.ready.wait(RPC_TIMEOUT):
            raise DaemonError("WatchEvents sent no first EventLoss report")

    def _run(self) -> None:
        try:
            for msg in self.call:
                if msg.HasField("event"):
                    self.received += 1
                    self.by_reason[pb2.Reason.Name(msg.event.reason)] += 1
                else:
                    self.loss = msg.loss
                    self.ready.set()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc
        finally:
            self.ready.set()

    def stop(self) -> None:
        self.call.cancel()
        self.thread.join(5.0)


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float) -> None:
        super().__init__(name="soak-rss", daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []
        self.stopping = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while True:
            self.samples.append((round(time.monotonic() - self.started_at, 1), rss_kib(self.pid)))
            if self.stopping.wait(self.every):
                self.samples.append((round(time.monotonic() - self.started_at, 1), rss_kib(self.pid)))
                return


class Churn:
    """Rule adds/deletes and whole-policy swaps until a deadline, counted."""

    def __init__(self, daemon: DaemonProcess, cfg: SoakConfig, rng: random.Random) -> None:
        self.daemon, self.cfg, self.rng = daemon, cfg, rng
        self.side = "A"
        self.added: list[int] = []
        self.next_id = CHURN_FIRST_ID
        self.swaps = 0
        self.counts: Tally[str] = Tally()
        self.errors: list[str] = []
        self.latency: dict[str, list[float]] = {}

    def policy(self, side: str) -> Policy:
        seed = self.rng.randrange(1 << 30)
        return policy_sets.swap_policy(side, self.cfg.probes, self.cfg.filler, seed=seed)

    def run(self, deadline: float) -> None:
        next_swap = time.monotonic() + self.cfg.swap_every
        while time.monotonic() < deadline:
            if time.monotonic() >= next_swap:
                self.swap()
                next_swap = time.monotonic() + self.cfg.swap_every
            elif self.added and self.rng.random() < 0.4:
                self.delete_rule(self.added.pop(self.rng.randrange(len(self.added))))
            else:
                self.add_rule()
            time.sleep(self.cfg.churn_pause)

    def add_rule(self) -> None:
        rule = policy_sets.filler_rules(self.next_id, 1, self.rng.randrange(1 << 30))[0]
        self.next_id += 1
        request = pb2.AddAclRuleRequest(rule=convert.acl_rule_to_proto(rule))
        if self._call("add_rule", lambda: self.daemon.policy.AddAclRule(request, timeout=RPC_TIMEOUT)):
            self.added.append(rule.id)

    def delete_rule(self, rule_id: int) -> None:
        request = pb2.DeleteAclRuleRequest(id=rule_id)
        self._call("delete_rule", lambda: self.daemon.policy.DeleteAclRule(request, timeout=RPC_TIMEOUT))

    def swap(self) -> None:
        self.swaps += 1
        other = "B" if self.side == "A" else "A"
        new = self.policy(other)
        if self.cfg.bad_every and self.swaps % self.cfg.bad_every == 0:
            refused = new.model_copy(update={"chains": [unreachable_chain()]})
            self._call("refused_apply", lambda: apply(self.daemon, refused),
                       expect=grpc.StatusCode.FAILED_PRECONDITION)
            return
        if self._call("swap", lambda: apply(self.daemon, new)):
            self.side = other
            self.added.clear()

    def _call(self, kind: str, fn: Any, expect: grpc.StatusCode | None = None) -> bool:
        started = time.monotonic()
        try:
            fn()
        except grpc.RpcError as exc:
            if exc.code() == expect:
                self.counts[f"{kind} (refused as intended)"] += 1
            else:
                self.counts[f"{kind} failed"] += 1
                self.errors.append(f"{kind}: {exc.code().name}: {exc.details()}")
            return False
        finally:
            self.latency.setdefault(kind, []).append(time.monotonic() - started)
        if expect is not None:
            self.counts[f"{kind} NOT refused"] += 1
            self.errors.append(f"{kind}: accepted, but the kernel should have refused it")
            return True
        self.counts[f"{kind} ok"] += 1
        return True


def unreachable_chain() -> ServiceChain:
    """A chain whose next hop has no route: preflight passes, the kernel refuses the route after
    the maps were written, and the daemon programs the previous state again."""
    hop = NextHop.model_validate({"via": UNREACHABLE_VIA})
    return ServiceChain(name="soak", forward=Leg(interfaces=[flow_topology.RECV_IF], mark=0x40, table=1040,
                                                 nexthops=[hop]))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


def soak(cfg: SoakConfig) -> SoakReport:
    rng = random.Random(cfg.seed)
    report = SoakReport(config=asdict(cfg))
    flows = policy_sets.probe_flows(cfg.probes)
    with flow_topology.build([policy_sets.DST]) as topo, \
            DaemonProcess(topo.receiver, detach_on_exit=True) as daemon:
        attach(daemon, flow_topology.RECV_IF)
        churn = Churn(daemon, cfg, rng)
        apply(daemon, churn.policy("A"))
        assert daemon.proc is not None
        watch = EventWatch(daemon)
        before, delivery_before = stats(daemon), _delivery(daemon)
        drops_before = interface_drops(topo.receiver, topo.recv_if)
        rss = RssSampler(daemon.proc.pid, cfg.rss_every)
        rss.start()
        log.info("soak running for %.0f s", cfg.duration)
        try:
            with topo.traffic(flows, cfg.rate) as traffic:
                churn.run(time.monotonic() + cfg.duration)
                flow_counts = traffic.stop()
        finally:
            rss.stopping.set()
            rss.join(5.0)
        report.daemon_alive = daemon.running
        if report.daemon_alive:
            delivery = _settle_events(daemon, watch, delivery_before)
            moved = stats(daemon) - before
            report.verdict_counters = {r: moved.reason(r) for r in VERDICTS}
            report.events = {
                "sent": delivery.sent - delivery_before.sent,
                "rate_limited": delivery.rate_limited - delivery_before.rate_limited,
                "ringbuf_full": delivery.ringbuf_full - delivery_before.ringbuf_full,
                "read": delivery.read - delivery_before.read,
                "received": watch.received,
                "stream_dropped": watch.loss.dropped,
            }
            report.events["unaccounted"] = (report.events["sent"] - report.events["received"]
                                            - report.events["stream_dropped"])
        watch.stop()
        if watch.error is not None:
            report.change_errors.append(f"WatchEvents ended: {watch.error!r}")
        v = verdicts(flow_counts)
        drops_after = interface_drops(topo.receiver, topo.recv_if)
        report.packets = {"allowed_sent": v.allowed_sent, "allowed_received": v.allowed_received,
                          "allowed_lost": v.allowed_lost, "denied_sent": v.denied_sent,
                          "denied_arrived": v.denied_arrived, "duplicates": v.duplicates,
                          "testbed_drops": sum(drops_after[k] - drops_before[k] for k in drops_before)}
        report.flows = describe(flow_counts)
        report.rss_kib = rss.samples
        report.changes = dict(churn.counts)
        report.change_errors += churn.errors
        report.latency_ms = {f"{k} {stat}": fn(v) * 1000 for k, v in churn.latency.items()
                             for stat, fn in (("median", _median), ("max", max))}
        if not report.ok:
            log.error("daemon log (last lines):\n%s", daemon.log_tail())
    return report


def _delivery(daemon: DaemonProcess) -> Any:
    return daemon.stats.GetStats(pb2.GetStatsRequest(), timeout=RPC_TIMEOUT).policy_events


def _settle_events(daemon: DaemonProcess, watch: EventWatch, before: Any) -> Any:
    """The delivery counters once the stream has caught up with what the kernel sent."""
    deadline = time.monotonic() + SETTLE_EVENTS
    while True:
        delivery = _delivery(daemon)
        if watch.received + watch.loss.dropped >= delivery.sent - before.sent or time.monotonic() > deadline:
            return delivery
        time.sleep(0.2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.soak", description=__doc__.split("\n\n")[0])
    defaults = SoakConfig()
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds (default 180)")
    parser.add_argument("--rate", type=float, default=defaults.rate, help="frames/s over all probe flows")
    parser.add_argument("--probes", type=int, default=defaults.probes, help="allowed and denied flows each")
    parser.add_argument("--filler", type=int, default=defaults.filler, help="other rules per policy set")
    parser.add_argument("--swap-every", type=float, default=defaults.swap_every,
                        help="seconds between whole-policy swaps")
    parser.add_argument("--bad-every", type=int, default=defaults.bad_every,
                        help="every Nth swap is one the kernel refuses (0: none)")
    parser.add_argument("--rss-every", type=float, default=defaults.rss_every, help="RSS sampling period")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    cfg = SoakConfig(duration=args.duration, rate=args.rate, probes=args.probes, filler=args.filler,
                     swap_every=args.swap_every, bad_every=args.bad_every, rss_every=args.rss_every,
                     seed=random.randrange(1 << 30) if args.seed is None else args.seed)
    result: list[SoakReport] = []

    def run() -> bool:
        report = soak(cfg)
        result.append(report)
        print(report.text(), flush=True)
        if report.violations:
            print(report.flows, flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({**asdict(report), "violations": report.violations, "ok": report.ok}, f, indent=1)
        return report.ok

    return cleanup.run_torn_down(run, log, (DaemonError, OSError))


if __name__ == "__main__":
    sys.exit(main())
