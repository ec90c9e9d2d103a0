"""What a Prometheus scrape of the daemon costs with a big policy (part of the control bench).

With the largest policy of the control benchmark applied, /metrics is scraped as Prometheus
would (over HTTP, from the daemon's namespace) with no rule marked `metrics: true` (the
default), with MARKED rules marked, and with every rule marked (what every scrape cost when each
rule had its series): samples, of which per rule, bytes, seconds (median of SCRAPES).
"""

from __future__ import annotations

import statistics
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from testbed.netns import Namespace

METRICS = "127.0.0.1:9152"  # inside the daemon's namespace
MARKED = 1_000
SCRAPES = 3
TIMEOUT = 120.0


@dataclass(frozen=True)
class Scrape:
    marked: str       # which rules have per-rule series
    samples: int      # every sample of the exposition
    per_rule: int     # of them tidegate_acl_rule_*
    size: int         # bytes of the exposition
    seconds: list[float]


def _scrape(ns: Namespace) -> tuple[str, float]:
    with ns.enter():  # this thread only
        started = time.perf_counter()
        with urllib.request.urlopen(f"http://{METRICS}/metrics", timeout=TIMEOUT) as answer:
            text = answer.read().decode()
        return text, time.perf_counter() - started


def measure(ns: Namespace, label: str) -> Scrape:
    times, text = [], ""
    for _ in range(SCRAPES):
        text, seconds = _scrape(ns)
        times.append(seconds)
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    per_rule = sum(1 for s in samples if s.name.startswith("tidegate_acl_rule_"))
    return Scrape(label, len(samples), per_rule, len(text.encode()), times)


def run(ns: Namespace, policy: Any, apply: Callable[[Any], None]) -> list[Scrape]:
    """Scrapes with `policy` (a pb2.Policy, applied already) as it is, with MARKED and with all of
    its rules marked; `apply` sends a policy. The daemon holds `policy` unmarked again after."""
    n = len(policy.acl)
    out = [measure(ns, "none (the default)")]
    for k in sorted({min(MARKED, n), n}):
        marked = type(policy)()
        marked.CopyFrom(policy)
        for rule in marked.acl[:k]:
            rule.metrics = True
        apply(marked)
        out.append(measure(ns, f"{k:,} marked" + (" (every rule)" if k == n else "")))
    apply(policy)
    return out


def median(s: Scrape) -> float:
    return statistics.median(s.seconds)
