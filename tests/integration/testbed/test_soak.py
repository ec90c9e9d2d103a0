"""The soak (testbed.soak) in short: traffic, rule churn, whole-policy swaps (one refused by the
kernel part-way) and a WatchEvents stream together for ~35 s against a real daemon; the policy
must hold packet by packet and every policy event the kernel wrote must reach the stream or be
counted as dropped for it."""

from __future__ import annotations

import pytest

from testbed import soak

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

DURATION = 35.0


def test_a_short_soak_holds_the_policy_and_accounts_for_every_event(bpf_available):
    cfg = soak.SoakConfig(duration=DURATION, rate=3000, swap_every=5.0, bad_every=3, seed=20261126)
    report = soak.soak(cfg)
    print("\n" + report.text())

    assert report.daemon_alive
    assert report.violations == 0, report.flows
    assert report.packets["allowed_sent"] > DURATION * 1000  # the traffic really ran at a rate
    assert report.verdict_counters["DROP_DEFAULT"] == 0
    # churn happened, and only the intended refusals failed
    assert report.changes.get("swap ok", 0) >= 3
    assert report.changes.get("refused_apply (refused as intended)", 0) >= 1
    assert report.changes.get("add_rule ok", 0) > 0 and report.changes.get("delete_rule ok", 0) > 0
    assert report.change_errors == []
    # nothing lost silently: the kernel wrote events and each reached the stream or was counted
    events = report.events
    assert events["sent"] > 0
    assert events["unaccounted"] == 0, events
    assert events["read"] == events["sent"]
    assert len(report.rss_kib) >= DURATION / cfg.rss_every
    assert all(kib > 0 for _, kib in report.rss_kib)
