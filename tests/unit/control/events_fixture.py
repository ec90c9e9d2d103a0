"""A real dataplane.kernel.events.PolicyEvent with defaults, for tests that need one without a kernel."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from dataplane import abi
from dataplane.kernel.events import PolicyEvent

DEFAULTS: dict[str, Any] = {
    "ts_ns": 1_000, "ifindex": 3, "rule_id": 42, "reason": abi.Reason.DROP_DENIED, "action": abi.Action.DENY,
    "vni": None, "family": 4, "src": ip_address("10.0.0.2"), "dst": ip_address("10.0.1.1"), "proto": 17,
    "sport": 5000, "dport": 9, "length": 60,
}


def Ev(**fields: Any) -> PolicyEvent:  # noqa: N802 - reads like the class it builds
    return PolicyEvent(**{**DEFAULTS, **fields})
