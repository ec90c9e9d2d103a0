"""Where the daemon's time goes: ApplyPolicy and AddAclRule run in process under cProfile.

The daemon answers in gRPC worker threads, which a profiler of its main thread does not see.
So the benchmark builds the daemon's own objects in process (control.daemon does the same:
`Reconciler(settings, NetlinkRouting())`, `Controller(StateStore(dir), reconciler)`), attaches
a veth in a namespace of its own, and runs what the servicer runs for each call (control/rpc/
service.py: convert the request, `controller.change(...)`, the diff for the response) in the
main thread, inside the namespace, once without and once with cProfile. Only gRPC itself is
left out. The profile's self time is summed by where the code lives (pydantic, the rule
compiler, the map writers, ...; a builtin's time goes to its callers), so the categories add up
to the whole.

Python's cyclic garbage collector runs inside whatever function allocates when it triggers, so
a profile cannot attribute it; it is timed on its own instead (gc.callbacks) during the
unprofiled calls, and the profiled call runs with the collector off so the categories show
the work alone.
"""

from __future__ import annotations

import cProfile
import gc
import pstats
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control.apply.controller import Controller
from control.apply.netlink import NetlinkRouting
from control.apply.reconcile import Reconciler
from control.apply.state import StateStore
from control.policy import edits as policy_ops
from control.policy.models import Interface
from control.rpc import convert
from dataplane.kernel.build_settings import Capacities, DataplaneSettings
from testbed.bench import rules
from testbed.netns import Namespace, veth_pair
from testbed.topology import pin_root_owned

# (category, substrings of "file:function" that put a profile entry in it), first match wins
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pydantic (validating and dumping models)", ("pydantic",)),
    ("ACL columns: decoding, checks, edits (control/policy/acl_*, control/rpc/acl_wire)",
     ("control/policy/acl_", "control/rpc/acl_wire", "control/apply/acl_snapshot")),
    ("rule compiler (dataplane/match: columns, tuples, compiler, edits, planner, adapter; "
     "control/apply/acl_compile)",
     ("dataplane/match/columns", "dataplane/match/tuples", "dataplane/match/compiler",
      "dataplane/match/edits", "dataplane/match/planner", "dataplane/match/adapter",
      "control/apply/acl_compile")),
    (
        "map writes (dataplane/match/table, BCC, ctypes, bpf syscalls)",
        (
            "dataplane/match/table",
            "dataplane/kernel/bulk",
            "dataplane/kernel/libbpf",
            "dataplane/kernel/maps",
            "/bcc/",
            "ctypes",
            "_ctypes",
        ),
    ),
    ("ipaddress (parsing and formatting addresses)", ("ipaddress",)),
    ("policy model -> match rules (control/policy/intent, dataplane/acl)",
     ("control/policy/intent", "dataplane/acl")),
    ("state file (JSON, write, fsync)", ("json", "fsync", "control/apply/state", "posix.write", "tempfile")),
    ("protobuf", ("protobuf", "google/")),
    ("control plane (control/*)", ("control/",)),
)
OTHER = "other (logging, netlink, the standard library, ...)"


@dataclass
class Profiled:
    """One call: its wall time without the profiler, and self time by category under it."""

    what: str
    seconds: float
    gc_seconds: float = 0.0  # of `seconds`, in the cyclic garbage collector
    profiled_seconds: float = 0.0
    categories: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def shares(self) -> list[tuple[str, float, float]]:
        """(where, seconds of the unprofiled call, share), largest first: the collector as
        measured, the rest split as the profile (collector off) split it."""
        total = sum(self.categories.values()) or 1.0
        work = self.seconds - self.gc_seconds
        rows = [(k, work * v / total, work * v / total / self.seconds) for k, v in self.categories.items()]
        objects = self.counts.get("objects tracked by the collector", 0)
        full, calls = self.counts.get("full collections", 0), self.counts.get("calls timed", 1)
        label = f"Python's cyclic GC ({full} full collections in {calls} calls, {objects:,} objects tracked)"
        rows.append((label, self.gc_seconds, self.gc_seconds / self.seconds))
        return sorted(rows, key=lambda r: -r[1])


class GcTimer:
    """Time spent in the cyclic garbage collector, and full (generation 2) collections."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.full += info.get("generation") == 2

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


def _category(file: str, func: str) -> str:
    where = f"{file}:{func}"
    for name, needles in CATEGORIES:
        if any(n in where for n in needles):
            return name
    return OTHER


def _profile(fn: Callable[[], Any]) -> tuple[float, dict[str, float]]:
    """Self time by category, with the collector off (see the module's docstring)."""
    prof = cProfile.Profile()
    enabled = gc.isenabled()
    gc.disable()
    started = time.perf_counter()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
        if enabled:
            gc.enable()
    wall = time.perf_counter() - started
    out: dict[str, float] = {}
    stats: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    for (file, _line, func), (_cc, _nc, self_time, _cum, callers) in stats.items():
        name = _category(file, func)
        if file == "~" and name == OTHER and callers:
            # a builtin (len, isinstance, str.join...): its time belongs to whoever called it
            for (cfile, _cline, cfunc), (_ncc, _cnc, caller_tt, _cct) in callers.items():
                cname = _category(cfile, cfunc)
                out[cname] = out.get(cname, 0.0) + caller_tt
            continue
        out[name] = out.get(name, 0.0) + self_time
    return wall, out


def _timed(calls: Sequence[Callable[[], Any]], what: str) -> Profiled:
    """The calls one after another: the median call's time; the collector's share of all calls."""
    seconds = []
    with GcTimer() as collector:
        for fn in calls:
            started = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - started)
    median = sorted(seconds)[len(seconds) // 2]
    p = Profiled(what, median, median * collector.seconds / sum(seconds))
    p.counts["calls timed"] = len(calls)
    p.counts["full collections"] = collector.full
    p.counts["objects tracked by the collector"] = len(gc.get_objects())
    return p


@contextmanager
def daemon_in_process(capacities: dict[str, int], ifname: str, peer: str) -> Iterator[Controller]:
    """The daemon's controller and reconciler, with `ifname` attached natively, in a namespace
    the calling thread stays in until the end."""
    statedir = Path(tempfile.mkdtemp(prefix="tidegate-bench-state-"))
    try:
        with Namespace(prefix="tgbnp") as ns, pin_root_owned() as root:
            veth_pair(ns, ifname, ns, peer)
            with ns.enter():
                settings = DataplaneSettings(capacities=Capacities(**capacities), pin_root=root)
                reconciler = Reconciler(settings, NetlinkRouting())
                controller = Controller(StateStore(statedir), reconciler)
                try:
                    controller.change(lambda s: policy_ops.attach(s, Interface(name=ifname, mode="native")))
                    yield controller
                finally:
                    reconciler.close(detach=True)
    finally:
        shutil.rmtree(statedir, ignore_errors=True)


def _apply_call(controller: Controller, message: Any) -> Callable[[], Any]:
    """What PolicyService.ApplyPolicy does with a request."""

    def call() -> Any:
        policy = convert.policy_from_proto(message)
        before = controller.read()
        controller.change(lambda s: policy_ops.with_policy(s, policy))
        return policy_ops.diff(before.policy, policy)

    return call


def _add_call(controller: Controller, message: Any) -> Callable[[], Any]:
    """What PolicyService.AddAclRule does with a request."""

    def call() -> Any:
        rule = convert.acl_rule_from_proto(message)
        return controller.change(policy_ops.Edit("add_rule", rule))

    return call


def _empty(controller: Controller) -> None:
    controller.change(lambda s: policy_ops.with_policy(s, convert.policy_from_proto(rules.proto_policy([]))))


def profile(
    largest: Sequence[rules.RuleSpec],
    base: Sequence[rules.RuleSpec],
    extra: Sequence[rules.RuleSpec],
    capacities: dict[str, int],
    ifname: str,
    peer: str,
) -> tuple[Profiled, Profiled]:
    """The largest apply onto an empty policy, then single rule additions on top of `base`."""
    with daemon_in_process(capacities, ifname, peer) as controller:
        message = rules.proto_policy(largest)
        applied = _timed([_apply_call(controller, message)], f"ApplyPolicy, {len(largest):,} rules")
        applied.counts["request bytes"] = message.ByteSize()
        _empty(controller)
        applied.profiled_seconds, applied.categories = _profile(_apply_call(controller, message))

        _empty(controller)
        controller.change(
            lambda s: policy_ops.with_policy(s, convert.policy_from_proto(rules.proto_policy(base)))
        )
        first, *rest = [rules.proto_rule(r) for r in extra]
        added = _timed([_add_call(controller, m) for m in rest], f"AddAclRule on top of {len(base):,} rules")
        added.profiled_seconds, added.categories = _profile(_add_call(controller, first))
        return applied, added


def describe(p: Profiled, measured: float) -> str:
    """ "<what> takes X in process (the daemon: Y over gRPC); profile: a 40%, b 25%, ..." in words."""
    parts = ", ".join(f"{name} {share:.0%}" for name, _s, share in p.shares() if share >= 0.02)
    return (
        f"In process, without gRPC, {p.what} takes {_secs(p.seconds)} (the daemon: {_secs(measured)} "
        f"through gRPC). Its cProfile self time by where the code lives: {parts}."
    )


def _secs(x: float) -> str:
    return f"{x:.2f} s" if x >= 1 else f"{1e3 * x:.0f} ms" if x >= 0.01 else f"{1e3 * x:.1f} ms"
