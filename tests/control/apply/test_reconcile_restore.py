"""The reconciler at start-up and with next hops naming missing devices, against fakes.

No BPF and no root: data planes are fakes, routing is a fake that can fail, and the only kernel
access is netlink link dumps of the test's own namespace ("lo" exists, "nosuch0" does not).
"""

from __future__ import annotations

import pytest

from control.apply.reconcile import ApplyError, MissingInterface, Reconciler, _without_missing
from control.policy.models import DesiredState, Interface, Policy, ServiceChain
from dataplane.kernel.build_settings import DataplaneSettings
from dataplane.matcher import empty


class FakeTable:
    def __init__(self) -> None:
        self.current = empty()

    def adopt(self, intended: object = ()) -> None: ...

    def apply(self, compiled: object) -> None:
        self.current = compiled  # type: ignore[assignment]


class FakeMaps:
    def __init__(self) -> None:
        self.entries: dict[int, object] = {}

    def tunnels(self) -> list[object]:
        return list(self.entries.values())

    def put_tunnel(self, tunnel: object) -> None:
        self.entries[tunnel.vni] = tunnel  # type: ignore[attr-defined]

    def delete_tunnel(self, vni: int) -> None:
        self.entries.pop(vni)


class FakePlane:
    """A data plane a previous daemon left pinned and attached."""

    adopted = True

    def __init__(self) -> None:
        self.acl, self.classifiers, self.maps = FakeTable(), FakeTable(), FakeMaps()
        self.xdp_mode: str | None = None
        self.detached = False

    def configure(self, config: object) -> None: ...

    def attach(self, mode: str) -> None:
        self.xdp_mode = "native" if mode == "auto" else mode

    def detach(self) -> None:
        self.detached = True

    def close(self) -> None: ...


class Routing:
    """Policy routing that fails (as the kernel does for an unreachable via) once chains exist."""

    def check(self, chains: list[ServiceChain]) -> None: ...

    def sync(self, chains: list[ServiceChain]) -> None:
        if chains:
            raise RuntimeError("route default via 10.70.0.2 in table 1010: Network is unreachable")

    def remove_all(self) -> None: ...


def state(dev: str | None = "lo", chained: bool = True, generation: int = 3) -> DesiredState:
    hops = [{"via": "10.70.0.2"}] + ([{"dev": dev}] if dev else [])
    chain = ServiceChain.model_validate(
        {"name": "fw", "forward": {"interfaces": ["lo"], "mark": 16, "table": 1010, "nexthops": hops}})
    return DesiredState(generation=generation, interfaces=[Interface(name="lo")],
                        policy=Policy(chains=[chain] if chained else []))


@pytest.fixture
def planes() -> dict[str, FakePlane]:
    return {}


@pytest.fixture
def reconciler(planes: dict[str, FakePlane]) -> Reconciler:
    def load(name: str, settings: DataplaneSettings) -> FakePlane:
        planes[name] = FakePlane()
        return planes[name]

    return Reconciler(DataplaneSettings(), Routing(), loader=load)  # type: ignore[arg-type]


def test_a_failed_restore_leaves_the_adopted_data_plane_enforcing(reconciler, planes):
    """Rolling back to the empty state would detach everything: fail-open after a restart."""
    with pytest.raises(ApplyError, match="nothing was rolled back"):
        reconciler.restore(state())
    assert not planes["lo"].detached
    assert "lo" in reconciler.planes


def test_a_failed_apply_while_running_still_restores_the_previous_state(reconciler, planes):
    before = state(chained=False)
    reconciler.restore(before)
    with pytest.raises(ApplyError, match="previous state is in force again"):
        reconciler.apply(state(generation=4))
    assert reconciler.applied == before
    assert not planes["lo"].detached


def test_a_next_hop_device_that_does_not_exist_is_refused_before_any_write(reconciler, planes):
    reconciler.restore(state(chained=False))
    with pytest.raises(MissingInterface) as refused:
        reconciler.apply(state("nosuch0"))
    assert refused.value.errors == [("policy.chains[0].forward.nexthops[1].dev",
                                     "interface 'nosuch0' does not exist in this network namespace")]
    assert reconciler.applied == state(chained=False)


def test_a_restart_drops_the_chains_whose_next_hop_device_vanished():
    restored = _without_missing(state("nosuch0"), present={"lo"})
    assert restored.policy.chains == []
    assert [i.name for i in restored.interfaces] == ["lo"]
    assert restored.generation == 3
    kept = state("lo")
    assert _without_missing(kept, present={"lo"}) is kept
