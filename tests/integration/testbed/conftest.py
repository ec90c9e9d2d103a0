"""Namespace topologies with Tidegate attached; torn down whatever the tests do.

Order of teardown (pytest unwinds in reverse): the per-test policy reset, then Tidegate detached
and its pin root removed, then the namespaces, then the leak check.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataplane.kernel.attach import AttachError
from dataplane.kernel.interface import Dataplane
from dataplane.map_config import RuntimeConfig, TunnelEntry
from testbed import cleanup, flow_topology, migrate_bed, policy_sets, topology
from testbed.daemon import DaemonProcess
from testbed.netns import created_namespaces, list_namespaces


def _leftovers() -> list[str]:
    live = set(list_namespaces())
    netns = [n for n in created_namespaces() if n in live]
    pins = [key.removeprefix("bpffs:") for key in cleanup.REGISTRY.history() if key.startswith("bpffs:")]
    return netns + [p for p in pins if os.path.exists(p)]


@pytest.fixture(scope="module", autouse=True)
def no_leftovers() -> Iterator[None]:
    """After the module: none of the namespaces or pin roots it created may remain."""
    yield
    left = _leftovers()
    assert not left, f"the testbed left these behind: {left}"


@pytest.fixture(scope="module")
def topo(bpf_available: None) -> Iterator[topology.Topology]:
    with topology.build() as t:
        yield t


@pytest.fixture(scope="module")
def flow_topo(bpf_available: None) -> Iterator[flow_topology.FlowTopology]:
    """A sender and a receiver namespace (testbed.flow_topology) for sequence-numbered flows to
    policy_sets.DST, for the module."""
    with flow_topology.build([policy_sets.DST]) as t:
        yield t


@pytest.fixture(scope="module")
def import_beds(bpf_available: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[migrate_bed.Bed]:
    """The import's two beds (testbed/migrate_bed.py) and a daemon on the second, for the module."""
    try:
        with migrate_bed.build(tmp_path_factory.mktemp("migrate")) as bed:
            yield bed
    except migrate_bed.NativeXdpRefused as exc:
        pytest.skip(f"this kernel refuses native XDP on veth: {exc}")


@pytest.fixture
def live(daemon: DaemonProcess) -> DaemonProcess:
    """The module's `daemon` fixture, started again (same state dir and pin root) if a test left
    it stopped or killed it."""
    if not daemon.running:
        daemon.start()
    return daemon


@pytest.fixture(scope="module")
def attached(topo: topology.Topology) -> Iterator[Dataplane]:
    """Tidegate in native XDP mode on the appliance's underlay veth, for the whole module."""
    try:
        ctx = topology.tidegate(topo.appliance, topo.underlay, mode="native")
        dp = ctx.__enter__()
    except AttachError as exc:
        pytest.skip(f"this kernel refuses native XDP on veth: {exc}")
    try:
        yield dp
    finally:
        ctx.__exit__(None, None, None)


@pytest.fixture
def dp(attached: Dataplane, topo: topology.Topology) -> Iterator[Dataplane]:
    """The module's data plane with default config, both tunnels and no rules, per test."""
    _reset(attached, topo)
    yield attached
    _reset(attached, topo)


def _reset(dp: Dataplane, topo: topology.Topology) -> None:
    dp.acl.replace([])
    dp.classifiers.replace([])
    for tunnel in dp.maps.tunnels():
        dp.maps.delete_tunnel(tunnel.vni)
    for plan in topo.tunnels:
        dp.maps.put_tunnel(TunnelEntry(vni=plan.vni))
    with topo.appliance.enter():  # configure reads the interface's MAC in its namespace
        dp.configure(RuntimeConfig())


@pytest.fixture
def pin_root() -> Iterator[Path]:
    with topology.pin_root_owned() as root:
        yield root
