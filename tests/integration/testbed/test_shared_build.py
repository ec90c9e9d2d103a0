"""Restart and attach cost (issue 16, item 4; issue 11): one compile per daemon, not one per
interface, and none on a restart onto pins of the same build.

A real daemon attaches two interfaces: the first compiles the data plane, the second is a copy of
that build (dataplane.kernel.clone). Restarted without detaching, the daemon compiles nothing: both
interfaces' pinned programs are this very build (dataplane.kernel.warm), adopted without loading
anything: their ids stay what they were, and both still verify (health SERVING).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from dataplane.kernel import bpf_info
from testbed.daemon import DaemonProcess
from testbed.flow_checks import attach
from testbed.netns import Namespace, veth_pair

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

FIRST, SECOND = "sb0", "sb2"


@pytest.fixture
def ns(bpf_available: None) -> Iterator[Namespace]:
    with Namespace(prefix="tgsb") as n:
        veth_pair(n, FIRST, n, "sb1")
        veth_pair(n, SECOND, n, "sb3")
        yield n


def loads(daemon: DaemonProcess, since: int) -> list[dict[str, object]]:
    """The daemon's "data plane loaded" log records after byte `since` of its log."""
    text = daemon.log_path.read_bytes()[since:].decode(errors="replace")
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("msg") == "data plane loaded":
            records.append(record)
    return records


def prog_ids(ns: Namespace) -> dict[str, int | None]:
    with ns.enter():
        return {name: bpf_info.xdp_prog_id(socket.if_nametoindex(name)) for name in (FIRST, SECOND)}


def test_a_second_interface_compiles_once_and_a_restart_not_at_all(ns):
    with DaemonProcess(ns, detach_on_exit=False) as d:
        timings = []
        for ifname in (FIRST, SECOND):
            started = time.monotonic()
            attach(d, ifname)
            timings.append(time.monotonic() - started)
        print(f"\nAttachInterface: first {timings[0]:.2f} s (compiles), second {timings[1]:.2f} s (a copy)")
        assert [r["compiled"] for r in loads(d, 0)] == [True, False]
        before = prog_ids(ns)
        assert None not in before.values()

        mark = d.log_path.stat().st_size
        started = time.monotonic()
        d.restart()  # SIGTERM without detaching, then a start that adopts both interfaces
        print(f"restart with 2 interfaces: {time.monotonic() - started:.2f} s to SERVING")
        records = loads(d, mark)
        assert [(r["ifname"], r["adopted"], r["compiled"]) for r in records] == \
               [(FIRST, True, False), (SECOND, True, False)]
        assert prog_ids(ns) == before  # adopted as pinned: nothing loaded for either
        assert d.serving()  # both verified: the programs attached use the maps the daemon writes
        d.stop(keep=True)
        d.start(detach_on_exit=True)  # so that leaving the `with` detaches both
