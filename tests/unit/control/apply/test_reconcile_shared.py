"""A policy is compiled once for every interface whose tables hold the same content (Live.token),
and each interface still gets a compile made against its own table: against fakes that refuse a
compile made for another table, as dataplane.match.table does. Interfaces whose tables differ
are compiled each on its own."""

from __future__ import annotations

import random

import numpy as np
import pytest

from control.apply.reconcile import ApplyError, Reconciler
from control.policy import edits
from control.policy.acl_table import AclTable, block_of
from control.policy.models import AclRule, DesiredState, Interface, Policy
from dataplane.kernel import attach as attach_mod
from dataplane.kernel.build_settings import DataplaneSettings
from dataplane.match import compiler as cp
from dataplane.match.live import Live

from .test_reconcile_restore import FakePlane, FakeTable, Routing

NAMES = ("tgs0", "tgs1", "tgs2")


class StrictTable(FakeTable):
    def apply(self, compiled: object) -> None:
        assert compiled.base is self.current, "compiled against another table"  # type: ignore[attr-defined]
        super().apply(compiled)


class Plane(FakePlane):
    adopted = False

    def __init__(self) -> None:
        super().__init__()
        self.acl, self.classifiers = StrictTable(), StrictTable()


@pytest.fixture
def reconciler(monkeypatch: pytest.MonkeyPatch) -> Reconciler:
    # the interfaces exist (the reconciler asks the kernel; this test has no namespace of its own)
    monkeypatch.setattr(attach_mod, "ifindex", lambda name: 1 + NAMES.index(name))
    monkeypatch.setattr(attach_mod, "foreign_xdp", lambda name: None)
    r = Reconciler(DataplaneSettings(), Routing(), loader=lambda name, settings: Plane())  # type: ignore[arg-type]
    compiles: list[object] = []
    real = r._acl.compile

    def counted(*args: object, **kwargs: object) -> cp.Compiled:
        compiles.append(args[0])
        return real(*args, **kwargs)  # type: ignore[arg-type]

    r._acl.compile = counted  # type: ignore[method-assign]
    r.compiles = compiles  # type: ignore[attr-defined]
    return r


def rules(n: int, seed: int = 1) -> list[AclRule]:
    rng = random.Random(seed)
    return [AclRule.model_validate({"id": i + 1, "priority": rng.randrange(100, 200), "action": "deny",
                                    "match": {"src": f"10.{rng.randrange(256)}.{rng.randrange(256)}.0/24",
                                              "protocol": "tcp", "dport": rng.randrange(1, 65536)}})
            for i in range(n)]


def held(plane: Plane) -> list[tuple[int, bytes]]:
    live = plane.acl.current
    return sorted(zip(live.slots.tolist(), live.records.view(f"V{cp.RULE.itemsize}").ravel().tolist(),
                      strict=True))


def test_one_compile_serves_every_interface_with_the_same_tables(reconciler):
    state = DesiredState(generation=1, interfaces=[Interface(name=n) for n in NAMES],
                         policy=Policy(acl=AclTable.from_block(block_of(rules(300)))))
    reconciler.apply(state)
    assert len(reconciler.compiles) == 1
    planes = list(reconciler.planes.values())
    assert len({p.acl.current.token for p in planes}) == 1
    assert held(planes[0]) == held(planes[1]) == held(planes[2])
    assert len(planes[0].acl.current) == 300

    # a rule added, then a whole other policy: once each, every table edited or switched alike
    added = edits.add_rule(state, rules(301, seed=2)[300].model_copy(update={"id": 9999}))
    reconciler.apply(added.model_copy(update={"generation": 2}))
    assert len(reconciler.compiles) == 2
    assert held(planes[0]) == held(planes[1]) == held(planes[2]) and len(planes[0].acl.current) == 301
    other = state.model_copy(update={"generation": 3, "policy": Policy(
        acl=AclTable.from_block(block_of(rules(50, seed=3))))})
    reconciler.apply(other)
    assert len(reconciler.compiles) == 3
    assert held(planes[0]) == held(planes[1]) == held(planes[2]) and len(planes[0].acl.current) == 50


def test_tables_of_different_content_are_compiled_each_for_itself(reconciler):
    state = DesiredState(generation=1, interfaces=[Interface(name=n) for n in NAMES[:2]],
                         policy=Policy(acl=AclTable.from_block(block_of(rules(40)))))
    reconciler.apply(state)
    first, second = reconciler.planes.values()
    # the second table read back from its maps (a restart's adopt): the same rules, a token of its own
    live = second.acl.current
    second.acl.current = Live(live.bank, live.records.copy(), live.slots.copy(), live.keys.copy(),
                              live.buckets.copy(), live.tables.copy())
    assert second.acl.current.token != first.acl.current.token
    before = len(reconciler.compiles)
    reconciler.apply(state.model_copy(update={"generation": 2, "policy": Policy(
        acl=AclTable.from_block(block_of(rules(45, seed=4))))}))
    assert len(reconciler.compiles) == before + 2
    assert held(first) == held(second)


def test_a_compile_is_rebased_only_onto_a_table_of_the_same_content():
    cols = AclTable.from_block(block_of(rules(20))).columns
    capacity = cp.Capacity(rules=64, buckets=128, buckets4=128)
    compiled = cp.compile_full(cols, Live(), capacity)
    assert compiled.rebased(Live()).base is not compiled.base  # two empty tables in bank 0
    with pytest.raises(ValueError, match="different contents"):
        compiled.rebased(Live(bank=1))
    o = compiled.live()
    with pytest.raises(ValueError, match="different contents"):
        compiled.rebased(Live(o.bank, o.records, o.slots, o.keys, o.buckets, o.tables))
    stale = Live()
    stale.stale = np.zeros(1, dtype=cp.KEY)
    with pytest.raises(ValueError, match="different contents"):
        compiled.rebased(stale)


class FailingOnce(StrictTable):
    """A table whose next bank switch the kernel refuses (before anything is written)."""

    fail = False

    def apply(self, compiled: object) -> None:
        if self.fail and compiled.edit is None and not compiled.unchanged:  # type: ignore[attr-defined]
            self.fail = False
            raise OSError(28, "acl_buckets: update of element 0 of 60 refused by the kernel: ENOSPC")
        super().apply(compiled)


def test_tables_written_side_by_side_fail_as_one_change(reconciler):
    """Two interfaces switching banks are written at the same time; when one fails, the other's
    write is waited for and recorded, the error is the change's, and the previous policy is
    programmed back on both."""
    before = DesiredState(generation=1, interfaces=[Interface(name=n) for n in NAMES[:2]],
                          policy=Policy(acl=AclTable.from_block(block_of(rules(40)))))
    reconciler.apply(before)
    first, second = reconciler.planes.values()
    second.acl.__class__ = FailingOnce
    second.acl.fail = True
    old = held(first)
    after = before.model_copy(update={"generation": 2, "policy": Policy(
        acl=AclTable.from_block(block_of(rules(300, seed=5))))})  # past EDIT_MAX: a bank switch
    with pytest.raises(ApplyError, match="ENOSPC.*the previous state is in force again"):
        reconciler.apply(after)
    assert held(first) == held(second) == old and len(first.acl.current) == 40
    reconciler.apply(after)  # and the next try goes through on both
    assert held(first) == held(second) and len(first.acl.current) == 300
