"""The BPF_PROG_TEST_RUN harness itself: repeat mode (what the benchmarks use) and its errors."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from dataplane import abi

from ..verdicts import XDP_PASS

pytestmark = pytest.mark.root

PACKET = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
               / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / b"x")
REPEAT = 1000


def test_repeat_runs_the_program_every_time_and_reports_ns_per_packet(dp):
    before = dp.maps.reason_counts()[abi.Reason.PASS_DEFAULT].packets
    result = dp.run_xdp(PACKET, repeat=REPEAT)
    after = dp.maps.reason_counts()[abi.Reason.PASS_DEFAULT].packets
    assert result.action == XDP_PASS
    assert after - before == REPEAT, "every repetition is a real run of the program"
    assert result.duration_ns > 0


def test_tc_repeat_reports_ns_per_packet(dp):
    result = dp.run_tc(PACKET, repeat=REPEAT)
    assert result.retval == 0 and result.duration_ns > 0


def test_a_refused_run_raises_with_the_errno():
    from dataplane.kernel.testrun import run_xdp

    with pytest.raises(OSError, match="BPF_PROG_TEST_RUN on fd"):
        run_xdp(-1, PACKET)
