"""Judging sequence-numbered flows (testbed.flows) against the policy, and the daemon calls the
reliability tests and the soak share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control.policy.models import Policy
from control.rpc import convert
from control.rpc.api import pb2
from testbed.counters import ApiSnapshot, api_snapshot
from testbed.daemon import RPC_TIMEOUT, DaemonProcess
from testbed.flows import FlowCount

APPLY_TIMEOUT = 180.0  # a 10k-rule policy compiles and is written in a second or two


@dataclass(frozen=True)
class Verdicts:
    """What the flows say about the policy: allowed packets lost, denied packets that arrived."""

    allowed_sent: int
    allowed_received: int
    denied_sent: int
    denied_arrived: int
    duplicates: int

    @property
    def allowed_lost(self) -> int:
        return self.allowed_sent - self.allowed_received

    @property
    def violations(self) -> int:
        return self.allowed_lost + self.denied_arrived

    def __str__(self) -> str:
        return (f"allowed: sent {self.allowed_sent}, received {self.allowed_received}, "
                f"lost {self.allowed_lost}; denied: sent {self.denied_sent}, arrived {self.denied_arrived}")


def verdicts(report: Mapping[str, FlowCount]) -> Verdicts:
    allowed = [c for c in report.values() if c.flow.expect]
    denied = [c for c in report.values() if not c.flow.expect]
    return Verdicts(sum(c.sent for c in allowed), sum(c.received for c in allowed),
                    sum(c.sent for c in denied), sum(len(c.seen) - c.seen.count(0) for c in denied),
                    sum(c.duplicates for c in report.values()))


def describe(report: Mapping[str, FlowCount]) -> str:
    return "\n".join(c.summary() for c in report.values())


def attach(daemon: DaemonProcess, ifname: str) -> None:
    daemon.interfaces.AttachInterface(pb2.AttachInterfaceRequest(
        interface=pb2.Interface(name=ifname, mode=pb2.XDP_MODE_NATIVE)), timeout=RPC_TIMEOUT)


def apply(daemon: DaemonProcess, policy: Policy | Any, **fields: Any) -> int:
    """ApplyPolicy with a model (or a ready proto); the new generation."""
    proto = convert.policy_to_proto(policy) if isinstance(policy, Policy) else policy
    return int(daemon.policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=proto, **fields),
                                         timeout=APPLY_TIMEOUT).generation)


def current(daemon: DaemonProcess) -> tuple[Policy, int]:
    """The daemon's policy (as the model) and generation."""
    got = daemon.policy.GetPolicy(pb2.GetPolicyRequest(), timeout=RPC_TIMEOUT)
    return convert.policy_from_proto(got.policy), int(got.generation)


def stats(daemon: DaemonProcess) -> ApiSnapshot:
    return api_snapshot(daemon.stats.GetStats(pb2.GetStatsRequest(), timeout=RPC_TIMEOUT))


def rss_kib(pid: int) -> int:
    """Resident set size of a process (VmRSS), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
