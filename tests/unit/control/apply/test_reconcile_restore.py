"""The reconciler at start-up, with next hops naming missing devices, and when the kernel's
programs do not use its maps (verification), against fakes.

No BPF and no root: data planes are fakes, routing is a fake that can fail, and the only kernel
access is netlink link dumps of the test's own namespace ("lo" exists, "nosuch0" does not).
"""

from __future__ import annotations

import pytest

from control.apply.controller import Controller
from control.apply.reconcile import (
    ApplyError,
    DataplaneMismatch,
    MissingInterface,
    Reconciler,
    _without_missing,
)
from control.apply.state import StateStore
from control.policy.models import DesiredState, Interface, Policy, ServiceChain
from dataplane.kernel.build_settings import DataplaneSettings
from dataplane.kernel.verify import Mismatch
from dataplane.match.adapter import empty


class FakeTable:
    def __init__(self) -> None:
        self.current = empty()

    def adopt(self, intended: object = ()) -> None: ...

    def apply(self, compiled: object) -> None:
        self.current = compiled.live()  # type: ignore[attr-defined]

    def index_ahead(self) -> None: ...


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
        self.next_program: str | None = None
        self.detached = False
        self.foreign = False  # another's program is attached: verify() says so
        self.writes = 0

    def configure(self, config: object) -> None:
        self.writes += 1

    def verify(self) -> None:
        if self.foreign:
            raise Mismatch("lo", ["the xdp program attached is not this daemon's (id 9, using maps 1-3)"])

    def attach(self, mode: str, replace: bool = False) -> None:
        self.xdp_mode = "native" if mode == "auto" else mode

    def set_next_program(self, path: str | None) -> None:
        self.next_program = path

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


# --- verification: the maps written must be the ones the attached programs use -----------------

def test_an_apply_onto_programs_that_do_not_use_our_maps_is_refused_before_writing(reconciler, planes):
    before = state(chained=False)
    reconciler.restore(before)
    planes["lo"].foreign = True
    writes = planes["lo"].writes
    with pytest.raises(DataplaneMismatch, match="nothing was written.*detach and attach lo again") as refused:
        reconciler.apply(before.model_copy(update={"generation": 4}))  # the very same policy
    assert "using maps 1-3" in str(refused.value)
    assert planes["lo"].writes == writes and reconciler.applied == before
    assert set(reconciler.mismatches) == {"lo"}
    planes["lo"].foreign = False  # the operator removed what replaced ours
    reconciler.apply(before.model_copy(update={"generation": 4}))
    assert reconciler.mismatches == {}


def test_a_mismatch_found_after_programming_puts_the_previous_state_back(reconciler, planes):
    before = state(chained=False)
    reconciler.restore(before)

    class Replaced(FakePlane):
        def attach(self, mode: str, replace: bool = False) -> None:  # attached, and at once replaced
            super().attach(mode)
            self.foreign = True

    planes["lo"].__class__ = Replaced
    planes["lo"].xdp_mode = None  # attached again by the next apply
    with pytest.raises(DataplaneMismatch, match="previous state is written to the maps again"):
        reconciler.apply(state(chained=False, generation=4))
    assert reconciler.applied == before and set(reconciler.mismatches) == {"lo"}


def test_the_controller_reports_mismatches_to_its_listener(tmp_path, reconciler, planes):
    controller = Controller(StateStore(tmp_path), reconciler)
    heard: list[dict[str, str]] = []
    controller.on_verified = heard.append
    controller.start()
    controller.change(lambda s: s.model_copy(update={"interfaces": [Interface(name="lo")]}))
    assert heard == [{}, {}]
    planes["lo"].foreign = True
    with pytest.raises(DataplaneMismatch):
        controller.change(lambda s: s, dry_run=True)  # a dry run does not say "would change nothing"
    with pytest.raises(DataplaneMismatch):
        controller.change(lambda s: s)
    assert [set(h) for h in heard[2:]] == [{"lo"}, {"lo"}]
    assert controller.read().generation == 1  # nothing applied


def test_a_change_the_kernel_refuses_leaves_the_state_file_as_it_was(tmp_path, reconciler, planes):
    """The snapshot is written while the kernel is programmed: refused, nothing of it stays."""
    controller = Controller(StateStore(tmp_path), reconciler)
    controller.start()
    controller.change(lambda s: s.model_copy(update={"interfaces": [Interface(name="lo")]}))
    saved = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    planes["lo"].foreign = True
    with pytest.raises(DataplaneMismatch):
        controller.change(lambda s: s.model_copy(update={"policy": Policy(tunnels=[{"vni": 7}])}))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == saved
    assert StateStore(tmp_path).load() == controller.read()
