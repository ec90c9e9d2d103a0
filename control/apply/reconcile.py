"""Makes the kernel (maps, attached programs, policy routing) match a desired state.

apply() is all-or-nothing from the caller's view:
 1. preflight, no writes: interfaces exist, every match table compiles within its capacity,
    the routing plan fits its band; any problem is an InvalidState naming the field;
 2. verify, no writes: the programs attached to the interfaces that stay use the maps this
    daemon writes (dataplane.kernel.verify, read back from the kernel); else DataplaneMismatch;
 3. program: load new interfaces (pins, not attached), write config, tunnels and match tables
    (each table switch is per-packet atomic, dataplane.match.table), attach, sync routing;
    then verify every interface again;
 4. if programming or that verification fails, the previous state is programmed again and
    ApplyError (DataplaneMismatch) says so.
`mismatches` holds what the last verification of each interface found, for the daemon's health.
Nothing here calls back up into the API layer; it is handed states and reports errors.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from control.apply.acl_compile import AclCompiler
from control.policy.acl_table import AclTable
from control.policy.intent import InterfaceIntent, interface_intent
from control.policy.models import DesiredState, ServiceChain
from dataplane.acl import acl_capacity, cls_capacity
from dataplane.kernel import attach as attach_mod
from dataplane.kernel.bpf_info import BPF_PROG_TYPE_XDP, pinned_prog, prog_info
from dataplane.kernel.build_settings import DataplaneSettings
from dataplane.kernel.interface import Dataplane
from dataplane.kernel.maps import Counter
from dataplane.kernel.verify import Mismatch
from dataplane.map_config import TunnelEntry
from dataplane.match.adapter import CompiledMatch, Live, MatchCapacity, MatchRule, compile_rules, empty

log = logging.getLogger(__name__)


class InvalidState(ValueError):
    """The state cannot be applied on this machine; nothing was written."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))


class MissingInterface(InvalidState):
    """An interface the state names does not exist in the daemon's network namespace."""


class InterfaceOccupied(InvalidState):
    """An interface to attach runs an XDP program Tidegate did not load (and no replace was asked),
    or its next_program is not a pinned XDP program."""


class ApplyError(RuntimeError):
    """Programming failed part-way; the previous state was programmed again."""


class DataplaneMismatch(RuntimeError):
    """The programs attached to interfaces are not this daemon's, or other programs share its
    maps, or its pins were swapped (dataplane.kernel.verify): what it writes is not what is enforced."""

    def __init__(self, failures: list[Mismatch], outcome: str) -> None:
        self.failures = failures
        detail = "; ".join(str(f) for f in failures)
        names = ", ".join(f.ifname for f in failures)
        super().__init__(f"what the kernel runs is not what this daemon writes ({detail}); "
                         f"{outcome}. Find what replaced them (bpftool net, in the daemon's namespace), "
                         f"then detach and attach {names} again, or restart the daemon")


class Routing(Protocol):
    def check(self, chains: list[ServiceChain]) -> None: ...
    def sync(self, chains: list[ServiceChain]) -> Any: ...
    def remove_all(self) -> None: ...


class PlaneObserver(Protocol):
    """Told when an interface's data plane is loaded, and before it is unloaded (detached or
    closed): whatever reads its maps or ring buffer in another thread stops there, before the
    BPF object is gone. Observers must not raise (an error is logged and ignored)."""

    def plane_added(self, name: str, plane: Dataplane) -> None: ...
    def plane_removing(self, name: str, plane: Dataplane) -> None: ...


# (table, base's token, its stale keys, capacity) -> [(source, previous source, compiled)]: the
# compiles of one change, for the interfaces whose tables hold the same content
_Shared = dict[tuple[str, object, int, MatchCapacity], list[tuple[Any, Any, CompiledMatch]]]


@dataclass
class _Compiled:
    intent: InterfaceIntent
    acl: CompiledMatch | Live  # Live: the table's current content itself (nothing to write)
    classifiers: CompiledMatch | Live
    acl_base: Live  # what each was compiled against: valid while the table still holds it
    cls_base: Live
    shared: _Shared  # the compiles of the change this belongs to, for every interface

    def valid_for(self, plane: Dataplane) -> bool:
        return plane.acl.current is self.acl_base and plane.classifiers.current is self.cls_base


@dataclass
class Stats:
    rules: dict[int, Counter] = field(default_factory=dict)
    tunnels: dict[int, Counter] = field(default_factory=dict)
    legs: dict[tuple[str, str], Counter] = field(default_factory=dict)
    reasons: dict[str, Counter] = field(default_factory=dict)
    events: dict[str, Counter] = field(default_factory=dict)
    interfaces: dict[str, Counter] = field(default_factory=dict)


def _add(into: dict, key: Any, counter: Counter) -> None:  # type: ignore[type-arg]
    into[key] = into.get(key, Counter()) + counter


class Reconciler:
    def __init__(self, settings: DataplaneSettings, routing: Routing,
                 loader: Callable[[str, DataplaneSettings], Dataplane] = Dataplane.load) -> None:
        self.settings = settings
        self.routing = routing
        self._loader = loader
        self.planes: dict[str, Dataplane] = {}
        self.intents: dict[str, InterfaceIntent] = {}
        self.applied = DesiredState()
        self.observers: list[PlaneObserver] = []
        self._acl = AclCompiler()
        # The chains the kernel's policy routing was last synced to (None: unknown, sync again).
        self._routed: list[ServiceChain] | None = None
        # (interface, "acl"/"cls") -> what that table held after it was last written, and what
        # it was compiled from (the ACL's table, the classifiers' rules)
        self._sources: dict[tuple[str, str], tuple[Live, Any]] = {}
        self.mismatches: dict[str, str] = {}  # interface -> what its last verification found
        # interface -> the tunnels its map was last synced to (reading the map costs a syscall
        # per entry; a change that leaves the tunnels alone skips it)
        self._tunnels: dict[str, tuple[TunnelEntry, ...]] = {}

    def _intent(self, state: DesiredState, name: str) -> InterfaceIntent:
        return interface_intent(state, name)

    def _notify(self, what: str, name: str, plane: Dataplane) -> None:
        for observer in self.observers:
            try:
                getattr(observer, what)(name, plane)
            except Exception:  # noqa: BLE001 - an observer never decides whether the kernel is programmed
                log.exception("plane observer failed", extra={"observer": type(observer).__name__,
                                                             "ifname": name, "call": what})

    def _unload(self, name: str, detach: bool) -> None:
        plane = self.planes[name]
        self._notify("plane_removing", name, plane)
        del self.planes[name]
        self.intents.pop(name, None)
        self.mismatches.pop(name, None)
        self._sources.pop((name, "acl"), None)
        self._sources.pop((name, "cls"), None)
        self._tunnels.pop(name, None)
        if detach:
            plane.detach()
        else:
            plane.close()

    # --- start-up ---------------------------------------------------------------------------
    def restore(self, state: DesiredState) -> None:
        """Adopts what a previous daemon left pinned, then applies the persisted state."""
        for iface in state.interfaces:
            try:
                attach_mod.ifindex(iface.name)
            except attach_mod.AttachError:
                log.warning("persisted interface is missing, skipping it", extra={"ifname": iface.name})
                continue
            self._load(iface.name, self._intent(state, iface.name))
        # No rollback here: the "previous state" would be the empty one this object starts with,
        # and programming it detaches every adopted interface, i.e. stops enforcing the policy.
        self.apply(_without_missing(state, set(self.planes)), rollback=False)

    def _load(self, name: str, intent: InterfaceIntent | None = None) -> Dataplane:
        """Loads (or adopts the pinned maps of) an interface. Adopting writes nothing: the pinned
        records say which rule each slot holds, so the compile of the persisted policy that
        follows finds those rules where they are (slots and counters kept)."""
        plane = self._loader(name, self.settings)
        if plane.adopted:
            plane.acl.adopt()
            plane.classifiers.adopt()
        self.planes[name] = plane
        self._notify("plane_added", name, plane)
        return plane

    # --- apply --------------------------------------------------------------------------------
    def apply(self, new: DesiredState, rollback: bool = True) -> None:
        """Programs `new`; if that fails, programs the previous state again (unless not `rollback`)."""
        compiled = self.preflight(new)
        self.verify_kept(new)
        old = self.applied
        try:
            self._program(new, compiled)
            failures = self._verify(list(self.planes))
            if failures:
                raise DataplaneMismatch(failures, "found after programming")
        except Exception as exc:
            if not rollback:
                log.exception("programming failed, leaving the kernel as it is", extra={"error": str(exc)})
                if isinstance(exc, DataplaneMismatch):
                    self.applied = new  # programmed as asked; what is wrong is what the kernel runs
                    raise DataplaneMismatch(exc.failures, "the state is written to the maps") from exc
                raise ApplyError(f"{exc}; nothing was rolled back: the data plane keeps enforcing what "
                                 "it held before") from exc
            log.exception("programming failed, restoring the previous state", extra={"error": str(exc)})
            self._routed = None  # the failure may have been half-way through routing
            try:
                self._program(old, None)
            except Exception as again:
                raise ApplyError(f"{exc}; restoring the previous state failed too: {again}") from exc
            if isinstance(exc, DataplaneMismatch):
                raise DataplaneMismatch(exc.failures, "the previous state is written to the maps again") \
                    from exc
            raise ApplyError(f"{exc}; the previous state is in force again") from exc
        self.applied = new

    def index_ahead(self) -> None:
        """Once a change is over: each table builds, in the background, the index its next edit
        needs (dataplane.match.table.MatchTable.index_ahead)."""
        for plane in self.planes.values():
            plane.acl.index_ahead()
            plane.classifiers.index_ahead()

    def verify_kept(self, new: DesiredState) -> None:
        """Before writing `new` (or answering that it changes nothing): DataplaneMismatch when
        an interface it keeps runs programs that do not use this daemon's maps."""
        failures = self._verify([i.name for i in new.interfaces])
        if failures:
            raise DataplaneMismatch(failures, "nothing was written")

    def verify(self) -> None:
        """Checks every attached interface now; DataplaneMismatch for those that fail."""
        failures = self._verify(list(self.planes))
        if failures:
            raise DataplaneMismatch(failures, "found on checking")

    def _verify(self, names: list[str]) -> list[Mismatch]:
        """Checks the named interfaces this daemon has attached (others are skipped: a plane
        loaded but not attached yet runs nothing to check), recording each in `mismatches`."""
        failures = []
        for name in names:
            plane = self.planes.get(name)
            if plane is None or plane.xdp_mode is None:
                continue
            try:
                plane.verify()
            except Mismatch as exc:
                log.error("data plane mismatch", extra={"ifname": name, "problems": exc.problems})
                self.mismatches[name] = str(exc)
                failures.append(exc)
            else:
                self.mismatches.pop(name, None)
        return failures

    def preflight(self, new: DesiredState) -> dict[str, _Compiled]:
        """Everything that can be known before writing; raises InvalidState."""
        errors: list[tuple[str, str]] = []
        for index, iface in enumerate(new.interfaces):
            try:
                attach_mod.ifindex(iface.name)
            except attach_mod.AttachError as exc:
                hint = "; it vanished while attached: detach it" if iface.name in self.planes else ""
                errors.append((f"interfaces[{index}].name", f"{exc}{hint}"))
        errors += _missing_nexthop_devices(new.policy.chains)
        if errors:
            raise MissingInterface(errors)
        errors = self._xdp_neighbours(new)
        if errors:
            raise InterfaceOccupied(errors)
        try:
            self.routing.check(new.policy.chains)
        except ValueError as exc:
            errors.append(("policy.chains", str(exc)))
        if errors:
            raise InvalidState(errors)
        shared: _Shared = {}
        return {iface.name: self._compile(new, iface.name, shared) for iface in new.interfaces}

    def _xdp_neighbours(self, new: DesiredState) -> list[tuple[str, str]]:
        """Other XDP programs: one holding an interface we are to attach (unless replace), and
        each next_program, which must be a pinned XDP program."""
        errors = []
        for index, iface in enumerate(new.interfaces):
            plane = self.planes.get(iface.name)
            if not iface.replace and (plane is None or plane.xdp_mode is None):
                why = attach_mod.foreign_xdp(iface.name)
                if why:
                    errors.append((f"interfaces[{index}].name", why))
            if iface.next_program:
                why = _not_an_xdp_program(iface.next_program)
                if why:
                    errors.append((f"interfaces[{index}].next_program", why))
        return errors

    def _compile(self, state: DesiredState, name: str, shared: _Shared | None = None) -> _Compiled:
        intent = self._intent(state, name)
        plane = self.planes.get(name)
        caps = self.settings.capacities
        acl_base = plane.acl.current if plane else empty()  # not loaded yet: its tables start empty
        cls_base = plane.classifiers.current if plane else empty()
        shared = {} if shared is None else shared
        try:
            return _Compiled(intent,
                             self._compiled(name, "acl", intent.acl, acl_base, acl_capacity(caps), shared),
                             self._compiled(name, "cls", intent.classifiers, cls_base, cls_capacity(caps),
                                            shared),
                             acl_base, cls_base, shared)
        except ValueError as exc:
            raise InvalidState([("policy", f"interface {name}: {exc}")]) from exc

    def _compiled(self, name: str, table: str, source: AclTable | tuple[MatchRule, ...], base: Live,
                  capacity: MatchCapacity, shared: _Shared) -> CompiledMatch | Live:
        """`base` itself when it is what the table holds for this very source (the classifiers
        when only ACL rules changed, and the other way round), else the compile against it:
        made once per change for every interface whose table holds the same content (Live.token)
        and was made from the same source (`shared`), rebased onto each one's own base."""
        done = self._sources.get((name, table))
        if done is not None and done[0] is base and (done[1] is source or done[1] == source):
            return base
        previous = done[1] if done is not None and done[0] is base else None  # what base was made from
        key = (table, base.token, len(base.stale), capacity)
        for src, prev, compiled in shared.get(key, ()):
            if (src is source and prev is previous) if isinstance(source, AclTable) else src == source:
                return compiled.rebased(base)  # (an ACL's compile depends on previous: an edit of it)
        if isinstance(source, AclTable):
            compiled = self._acl.compile(source, base, capacity, previous)
        else:
            compiled = compile_rules(list(source), base, capacity, table)
        shared.setdefault(key, []).append((source, previous, compiled))
        return compiled

    def _applied(self, name: str, table: str, held: Live, source: Any) -> None:
        self._sources[(name, table)] = (held, source)

    def _program(self, state: DesiredState, compiled: dict[str, _Compiled] | None) -> None:
        wanted = {i.name: i for i in state.interfaces}
        # (an interface loaded just now was compiled against an empty table: its own one holds
        # the same, so that compile is rebased onto it)
        shared: _Shared = next(iter(compiled.values())).shared if compiled else {}
        ready: list[tuple[str, Dataplane, _Compiled]] = []
        for name in wanted:
            plane = self.planes.get(name) or self._load(name)
            done = compiled.get(name) if compiled else None
            if done is None or not done.valid_for(plane):
                done = self._compile(state, name, shared)
            plane.configure(done.intent.config)
            if self._tunnels.get(name) != done.intent.tunnels:
                self._tunnels.pop(name, None)  # unknown until the sync below completes
                _sync_tunnels(plane, done.intent.tunnels)
                self._tunnels[name] = done.intent.tunnels
            ready.append((name, plane, done))
        self._write_tables(ready)
        for name, plane, done in ready:
            iface = wanted[name]
            if plane.next_program != iface.next_program:
                plane.set_next_program(iface.next_program)
            if plane.xdp_mode is None or (iface.mode != "auto" and plane.xdp_mode != iface.mode):
                plane.attach(iface.mode, replace=iface.replace)
            self.intents[name] = done.intent
        for name in [n for n in self.planes if n not in wanted]:
            self._unload(name, detach=True)
        self._sync_routing(state.policy.chains)

    def _write_tables(self, ready: list[tuple[str, Dataplane, _Compiled]]) -> None:
        """Each interface's ACL and classifier tables written. Interfaces with a bank switch to
        write (a whole policy) are written at the same time, each by a thread of its own: their
        maps are their own, and most of the work is the kernel's, done without the interpreter
        lock. Every write is waited for; then the first error, if any, is raised (what was
        written is recorded either way, for the rollback to compile against)."""
        def write(name: str, plane: Dataplane, done: _Compiled) -> None:
            if not isinstance(done.acl, Live):
                plane.acl.apply(done.acl)
                self._applied(name, "acl", plane.acl.current, done.intent.acl)
            if not isinstance(done.classifiers, Live):
                plane.classifiers.apply(done.classifiers)
                self._applied(name, "cls", plane.classifiers.current, done.intent.classifiers)

        switching = [r for r in ready if any(_switches(c) for c in (r[2].acl, r[2].classifiers))]
        if len(switching) < 2:
            for job in ready:
                write(*job)
            return
        with ThreadPoolExecutor(len(ready), thread_name_prefix="tables") as pool:
            futures = [pool.submit(write, *job) for job in ready]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]  # type: ignore[misc]

    def _sync_routing(self, chains: list[ServiceChain]) -> None:
        """Policy routing depends on the chains alone: a change that leaves them as they were
        (ACL rules, tunnels) skips reading the kernel's rules and routes. At start-up and after
        any failure it is synced again."""
        if self._routed is not None and self._routed == chains:
            return
        self._routed = None
        self.routing.sync(chains)
        self._routed = list(chains)

    # --- shutdown -------------------------------------------------------------------------------
    def close(self, detach: bool = False) -> None:
        """Drops handles; with detach, also takes programs, pins and routing away."""
        for name in list(self.planes):
            self._unload(name, detach=detach)
        if detach:
            self._routed = None
            self.routing.remove_all()

    # --- counters -------------------------------------------------------------------------------
    def stats(self, names: list[str] | None = None, rule_ids: Collection[int] | None = None) -> Stats:
        """Counters of the named interfaces (None: all), summed; per ACL rule only the rules in
        `rule_ids` when given (only theirs are read from the kernel: the metrics endpoint's
        chosen rules of a 100k-rule policy cost what they are, not what the policy is)."""
        out = Stats()
        for name, plane in self.planes.items():
            if names is not None and name not in names:
                continue
            for rid, c in plane.acl.counts_by_rule(rule_ids).items():
                _add(out.rules, rid, c)
            for vni, c in plane.maps.tunnel_counts().items():
                _add(out.tunnels, vni, c)
            legs = self.intents[name].legs if name in self.intents else {}
            for cid, c in plane.classifiers.counts_by_rule().items():
                if cid in legs:
                    _add(out.legs, (legs[cid].chain, legs[cid].leg), c)
            total = Counter()
            for reason, c in plane.maps.reason_counts().items():
                _add(out.reasons, reason.name, c)
                total = total + c
            out.interfaces[name] = total
            for event, c in plane.maps.event_counts().items():
                _add(out.events, event.name, c)
        return out


def _switches(compiled: CompiledMatch | Live) -> bool:
    """Whether writing this is a bank switch (a full compile), not an edit or nothing."""
    return not isinstance(compiled, Live) and not compiled.unchanged and compiled.edit is None


def occupancy(reconciler: Reconciler) -> dict[tuple[str, str], tuple[int, int]]:
    """(interface, map) -> (entries, capacity), from the compiled tables and the tunnels, and for
    conntrack (which the programs write, not the daemon) from the programs' count of its flows."""
    caps = reconciler.settings.capacities
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for name, plane in reconciler.planes.items():
        for table in (plane.acl, plane.classifiers):
            for map_name, used in table.occupancy().items():
                out[(name, map_name)] = used
        intent = reconciler.intents.get(name)
        out[(name, "tunnels")] = (len(intent.tunnels) if intent is not None else 0, caps.tunnels)
        out[(name, "conntrack")] = (plane.maps.conntrack_live(), caps.conntrack)
    return out


def _device_exists(name: str) -> bool:
    try:
        attach_mod.ifindex(name)
    except attach_mod.AttachError:
        return False
    return True


def _nexthop_devices(chain: ServiceChain) -> set[str]:
    return {hop.dev for _, leg in chain.legs() for hop in leg.nexthops if hop.dev is not None}


def _missing_nexthop_devices(chains: list[ServiceChain]) -> list[tuple[str, str]]:
    """Next hops naming a device this namespace lacks: refused here rather than by netlink
    half-way through programming (which would cost a rollback of everything else)."""
    errors = []
    for c_index, chain in enumerate(chains):
        for leg_name, leg in chain.legs():
            for h_index, hop in enumerate(leg.nexthops):
                if hop.dev is not None and not _device_exists(hop.dev):
                    errors.append((f"policy.chains[{c_index}].{leg_name}.nexthops[{h_index}].dev",
                                   f"interface {hop.dev!r} does not exist in this network namespace"))
    return errors


def _without_missing(state: DesiredState, present: set[str]) -> DesiredState:
    """The state minus interfaces that vanished while no daemon ran, and the chains using them
    (on a leg, or as a next hop device)."""
    gone = {dev for c in state.policy.chains for dev in _nexthop_devices(c) if not _device_exists(dev)}
    gone |= {i.name for i in state.interfaces} - present
    if not gone:
        return state
    chains = [c for c in state.policy.chains
              if all(i in present for _, leg in c.legs() for i in leg.interfaces)
              and not _nexthop_devices(c) & gone]
    log.warning("interfaces vanished: applying the state without them and the chains using them",
                extra={"missing": sorted(gone)})
    policy = state.policy.model_copy(update={"chains": chains})
    return DesiredState(generation=state.generation, policy=policy,
                        interfaces=[i for i in state.interfaces if i.name in present])


def _sync_tunnels(plane: Dataplane, tunnels: tuple[TunnelEntry, ...]) -> None:
    have = {t.vni: t for t in plane.maps.tunnels()}
    want = {t.vni: t for t in tunnels}
    for vni, t in want.items():
        if have.get(vni) != t:
            plane.maps.put_tunnel(t)
    for vni in have.keys() - want.keys():
        plane.maps.delete_tunnel(vni)


def _not_an_xdp_program(path: str) -> str | None:
    """Why `path` cannot be a next_program (None: it can)."""
    try:
        fd = pinned_prog(path)
    except OSError as exc:
        return f"{exc}: pin the XDP program to run behind Tidegate there first (bpftool prog pin ...)"
    try:
        info = prog_info(fd)
    except OSError as exc:
        return f"{path}: {exc} (is it a program, not a map?)"
    finally:
        os.close(fd)
    if info.type != BPF_PROG_TYPE_XDP:
        return f"{path} is a BPF program of type {info.type} ({info.name!r}), not an XDP program"
    return None
