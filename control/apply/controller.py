"""The daemon's one writer: desired state in, kernel and disk brought to it, in that order.

Every change (API call, start-up restore) goes through `change()`, serialised by a lock:
validate -> reconcile (all-or-nothing, control.apply.reconcile) -> persist -> publish. A change that
fails leaves the applied state, the kernel and the file as they were.

A whole policy is replaced through `apply_policy()`, for ApplyPolicy and for fleet mode alike.
When the policy has another source (`policy_source`, set by a fleet member), only that source
may change it: local policy edits and applies are refused (PolicyOwned), interfaces stay local.

After the start and after every change, `on_verified` (the daemon's health) is told what the
reconciler's verification found: interface -> problem, empty when the kernel's programs use the
maps this daemon writes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from control.apply.reconcile import DataplaneMismatch, InvalidState, Reconciler, Stats, occupancy
from control.apply.state import StateStore
from control.errors import NotFound, PolicyOwned
from control.policy.edits import Edit, PolicyDiff, check_generation, diff, replace_policy
from control.policy.models import DesiredState, Policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApplyRecord:
    """How the last change (or the start-up restore) that reached the kernel went."""

    ok: bool
    duration_s: float
    finished_unix: float  # time.time() when it ended
    generation: int       # the generation it tried to apply


@dataclass(frozen=True)
class PolicyChange:
    """What apply_policy did: the state now (the current one for a dry run, or when the policy
    was the one in force) and the diff from the policy in force to the one applied."""

    state: DesiredState
    diff: PolicyDiff

    @property
    def unchanged(self) -> bool:
        return self.diff.empty


class Busy(TimeoutError):
    """The controller stayed locked (a long apply) for longer than the caller would wait."""


class DataplaneView:
    """What a reader of the kernel's maps (a metrics scrape) may ask about the loaded data planes,
    while it holds the controller (Controller.locked): no change loads or unloads one meanwhile."""

    def __init__(self, reconciler: Reconciler) -> None:
        self._reconciler = reconciler

    def attached(self) -> dict[str, bool]:
        """Every interface with a loaded data plane -> whether its programs are attached."""
        return {name: plane.xdp_mode is not None for name, plane in self._reconciler.planes.items()}

    def stats(self, name: str, rule_ids: Collection[int] | None = None) -> Stats:
        """The counters of one loaded interface (of only `rule_ids` among the rules, when given)."""
        return self._reconciler.stats([name], rule_ids=rule_ids)

    def map_memory(self, name: str) -> dict[str, int]:
        """{map: bytes} of one loaded interface: the kernel's own figures."""
        return dict(self._reconciler.planes[name].map_memory())

    def occupancy(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(interface, map) -> (entries written, capacity)."""
        return occupancy(self._reconciler)


class Controller:
    def __init__(self, store: StateStore, reconciler: Reconciler) -> None:
        self.store = store
        self.reconciler = reconciler
        self._lock = threading.RLock()
        self.state = DesiredState()
        self.last_apply: ApplyRecord | None = None
        self.applies = {"ok": 0, "failed": 0}
        # who alone may change the policy (a description, e.g. the fleet's etcd and key), or None
        self.policy_source: str | None = None
        self._metric_rules: tuple[DesiredState, frozenset[int]] | None = None
        self.on_verified: Callable[[dict[str, str]], None] = lambda mismatches: None

    @contextmanager
    def _recorded(self, generation: int) -> Iterator[None]:
        """Records how programming went; a state refused before anything was written
        (InvalidState: the caller's error) is not an apply."""
        started = time.monotonic()
        try:
            yield
        except InvalidState:
            raise
        except BaseException:
            self._record(False, started, generation)
            raise
        self._record(True, started, generation)

    def _record(self, ok: bool, started: float, generation: int) -> None:
        self.last_apply = ApplyRecord(ok, time.monotonic() - started, time.time(), generation)
        self.applies["ok" if ok else "failed"] += 1

    def start(self) -> None:
        """Restores the persisted state (adopting pinned maps a previous daemon left)."""
        with self._lock, self._verification_published():
            persisted = self.store.load()
            try:
                with self._recorded(persisted.generation):
                    self.reconciler.restore(persisted)
            except DataplaneMismatch:  # programmed, but not what the kernel runs: serve, NOT_SERVING
                log.exception("the restored state is not what the kernel enforces")
            self.state = self.reconciler.applied
            self.reconciler.index_ahead()
            log.info("state restored", extra={"generation": self.state.generation,
                                              "interfaces": [i.name for i in self.state.interfaces]})

    @contextmanager
    def _verification_published(self) -> Iterator[None]:
        try:
            yield
        finally:
            mismatches = dict(self.reconciler.mismatches)
            try:
                self.on_verified(mismatches)
            except Exception:  # noqa: BLE001 - the listener never decides a change's outcome
                log.exception("publishing the verification failed")

    def _check_source(self, source: str | None) -> None:
        if self.policy_source is not None and source != self.policy_source:
            raise PolicyOwned(f"this daemon's policy comes from {self.policy_source}: local policy changes "
                              "are refused so that two writers never fight; change it there (`tidegate "
                              "fleet push` / `tidegate fleet assign`), or remove the daemon config's "
                              "fleet: section and restart it to manage it locally")

    def apply_policy(self, policy: Policy, expected_generation: int = 0, dry_run: bool = False,
                     source: str | None = None) -> PolicyChange:
        """Replaces the whole policy (validated as a model already); `source` must be the
        policy's owner when it has one (a dry run changes nothing and is always allowed). The
        policy in force again is no change: the generation stays (PolicyChange.unchanged)."""
        if not dry_run:
            self._check_source(source)
        found: list[PolicyDiff] = []

        def edit(state: DesiredState) -> DesiredState:
            found.append(diff(state.policy, policy))  # against the state it edits, under the lock
            return state if found[-1].empty else replace_policy(state, policy)

        state = self.change(edit, expected_generation, dry_run)
        return PolicyChange(state, found[-1])

    def change(self, edit: Callable[[DesiredState], DesiredState], expected_generation: int = 0,
               dry_run: bool = False) -> DesiredState:
        """Applies edit(current) and returns the new state (the old one for a dry run).
        Policy list edits (Edit) are refused while the policy has another source. An edit that
        returns the current state itself (`is`) changes nothing: nothing is programmed or saved,
        and the generation stays, once the kernel is verified to run what this daemon writes
        (DataplaneMismatch otherwise: never a silent "no changes")."""
        if isinstance(edit, Edit) and not dry_run:
            self._check_source(None)
        with self._lock, self._verification_published():
            check_generation(self.state, expected_generation)
            new = edit(self.state)
            if new is self.state:  # the edit found nothing to change: no apply, the generation stays
                self.reconciler.verify_kept(new)  # "unchanged" only while the kernel runs what we write
                log.info("state unchanged", extra={"generation": new.generation})
                return new
            if dry_run:
                self.reconciler.preflight(new)
                self.reconciler.verify_kept(new)  # "would change nothing" only when the maps are in use
                return new
            new = new.model_copy(update={"generation": self.state.generation + 1})
            with self._recorded(new.generation):
                # a snapshot is written to disk while the kernel is programmed; it becomes the
                # state file only once that went through (control.apply.state.StateStore.begin)
                saving = self.store.begin(new, edit if isinstance(edit, Edit) else None, base=self.state)
                try:
                    self.reconciler.apply(new)
                except BaseException:
                    saving.discard()
                    raise
                try:
                    saving.commit()
                except Exception:
                    log.exception("saving the state failed: putting the previous state back in the kernel")
                    self.reconciler.apply(self.state)
                    raise
            self.state = new
            self.reconciler.index_ahead()  # now: the change is persisted; the next edit will need it
            log.info("state applied", extra={"generation": new.generation})
            return new

    def stats(self, interfaces: list[str] | None = None) -> Stats:
        """Counters summed over the attached interfaces (or over the ones named)."""
        with self._lock:
            unknown = sorted(set(interfaces or ()) - set(self.reconciler.planes))
            if unknown:
                raise NotFound(f"interfaces not attached: {', '.join(unknown)}")
            return self.reconciler.stats(interfaces or None)

    def read(self) -> DesiredState:
        with self._lock:
            return self.state

    def kernel_memory(self) -> dict[str, dict[str, int]]:
        """{interface: {map: bytes}} of the loaded data planes: the kernel's own figures."""
        with self._lock:
            return {name: plane.map_memory() for name, plane in self.reconciler.planes.items()}

    def metric_rules(self) -> frozenset[int]:
        """Ids of the ACL rules marked `metrics: true` in the applied policy (what the metrics
        endpoint exports per rule); computed once per state."""
        state = self.read()
        cached = self._metric_rules
        if cached is not None and cached[0] is state:
            return cached[1]
        ids = state.policy.acl.metric_ids()
        self._metric_rules = (state, ids)
        return ids

    def xdp_mode(self, name: str) -> str | None:
        """The XDP mode the interface's programs were attached in by the last change; None when
        no data plane is loaded there (whether they are still in the kernel is the caller's to ask)."""
        plane = self.reconciler.planes.get(name)
        return plane.xdp_mode if plane is not None else None

    @contextmanager
    def locked(self, timeout: float) -> Iterator[DataplaneView]:
        """The loaded data planes, with no change under way, for readers of the kernel's maps (a
        metrics scrape); Busy if a change holds the lock for longer than `timeout` seconds."""
        if not self._lock.acquire(timeout=timeout):
            raise Busy(f"a change has held the controller for over {timeout:g} s")
        try:
            yield DataplaneView(self.reconciler)
        finally:
            self._lock.release()
