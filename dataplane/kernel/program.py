"""Compiles the data plane once (BCC), loads both entry programs and pins their maps.

One compile per build: the first load with a given set of compile flags compiles (clang, seconds)
and keeps the BCC object as the process's build for those flags; later loads, for other
interfaces, are copies of it (dataplane.kernel.clone: their own maps, the build's instructions,
a fraction of a second). The build lives while a load that uses it does: the first load's maps
stay in the kernel until the last copy closes, even if its interface was detached.

The maps are pinned in the interface's own directory, <pin_root>/netns-<inode>/if<ifindex>-<ifname>/,
which records its owner (dataplane.kernel.owner). A later load for the same interface of the same
namespace finds them and compiles against the pinned maps instead of creating new ones (BCC's
BPF_TABLE_PINNED only opens existing pins), so a restarted daemon inherits exactly the policy the
kernel is enforcing; pins of another interface or namespace are refused, never adopted.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataplane import abi
from dataplane.kernel import clone, owner, warm
from dataplane.kernel.build_settings import DataplaneSettings
from dataplane.kernel.features import build_cflags
from dataplane.kernel.owner import InterfaceKey, PinError
from dataplane.kernel.source import INCLUDE_DIR, program_text

log = logging.getLogger(__name__)

XDP_FUNC = "tg_xdp_ingress"
TC_FUNC = "tg_tc_ingress"
XDP_PIN = "prog_xdp_ingress"
TC_PIN = "prog_tc_ingress"
TC_EGRESS_FUNC = "tg_tc_egress"
TC_EGRESS_PIN = "prog_tc_egress"
STAGES_MAP = "xdp_stages"
# enum tg_stage -> the XDP program the ingress entry tail-calls for it.
XDP_STAGES = {"TG_STAGE_JUDGE": "tg_xdp_judge", "TG_STAGE_REJECT": "tg_xdp_reject"}
# TG_MAP("type", key, leaf, name, ...) and TG_RINGBUF(record, name, pages): the name.
_MAP_DECL = re.compile(r'^TG_(?:MAP\("[^"]+",\s*[^,]+,\s*[^,]+|RINGBUF\([^,]+),\s*(\w+),', re.M)

RingSink = Callable[[int, int], None]  # (address of one record, its size)


__all__ = ["PinError", "Program", "compile_program", "map_names", "unpin"]


@functools.cache
def map_names() -> tuple[str, ...]:
    """Every map of the data plane, in declaration order (read from maps.h, their one home, once:
    the programs of this process are built from the same file)."""
    return tuple(_MAP_DECL.findall((INCLUDE_DIR / "maps.h").read_text()))


def _bcc() -> Any:
    import bcc  # Debian's python3-bpfcc: imported late so pure modules work without it

    return bcc


def _pin(fd: int, path: Path) -> None:
    rc = _bcc().libbcc.lib.bpf_obj_pin(fd, str(path).encode())
    if rc != 0:
        err = ctypes.get_errno()
        raise PinError(f"cannot pin fd {fd} at {path}: rc={rc} errno={err}")


def pinned_maps_state(pin_dir: Path, key: InterfaceKey) -> str:
    """"none" or "all"; a half-written pin directory is refused (PinError), not adopted."""
    present = [name for name in map_names() if (pin_dir / name).exists()]
    if not present:
        return "none"
    if len(present) == len(map_names()):
        return "all"
    missing = [n for n in map_names() if n not in present]
    raise PinError(f"{pin_dir} holds only some of the data plane's maps (missing: {', '.join(missing)}): "
                   "it was written by a version of Tidegate with other maps, or half-written. Detach "
                   f"once (`tidegate detach {key.ifname}`, or remove {pin_dir}) and attach again; the "
                   "daemon then writes its policy afresh")


@dataclass
class Program:
    bpf: Any
    xdp_fn: Any
    tc_fn: Any
    pin_dir: Path | None
    adopted: bool  # maps came from existing pins
    stages: dict[str, Any] = field(default_factory=dict)  # tail-called XDP programs, by function name
    tc_egress_fn: Any = None  # records flows for allow_established
    _rings: dict[str, Any] = field(default_factory=dict, repr=False)  # name -> opened RingBuf
    _sinks: dict[str, RingSink] = field(default_factory=dict, repr=False)
    opened: set[str] = field(default_factory=set, repr=False)  # every table handed out: the maps used
    _tables: dict[str, Any] = field(default_factory=dict, repr=False)  # name -> the table handed out
    build_flags: tuple[str, ...] | None = None  # the shared build this load uses (released on close)
    compiled: bool = True  # False: pinned programs of this very build, taken without compiling

    def table(self, name: str) -> Any:
        self.opened.add(name)
        table = self._tables.get(name)
        if table is None:  # kept: BCC's get_table decodes the ctypes types anew (~ms) each call
            table = self._tables[name] = self.bpf.get_table(name.encode())
        return table

    def map_fd(self, name: str) -> int:
        """The fd of map `name`, the one the programs were loaded with (no table object made)."""
        if isinstance(self.bpf, clone.Copy | warm.WarmBPF):
            return self.bpf.table_fd(name)
        fd = int(_bcc().libbcc.lib.bpf_table_fd(self.bpf.module, name.encode()))
        if fd < 0:
            raise KeyError(f"the data plane has no map {name!r}")
        return fd

    def functions(self) -> list[Any]:
        """Every program of this load: the entries, then the stages they tail-call."""
        return [self.xdp_fn, self.tc_fn, self.tc_egress_fn, *self.stages.values()]

    def open_ring_buffer(self, name: str, sink: RingSink) -> None:
        """Sends the records of ring buffer `name` to `sink` from now on (replacing any earlier sink).

        Each ring is opened once per load: two libbpf consumers of one ring would share its
        consumer position and take records from each other. Records arrive during poll_rings().
        """
        if name not in self._rings:
            ring = self.table(name)
            ring.open_ring_buffer(lambda _ctx, data, size: self._sinks[name](data, size))
            self._rings[name] = ring  # holds BCC's ctypes callback: it must outlive the polling
        self._sinks[name] = sink

    def ring_sink(self, name: str) -> RingSink | None:
        return self._sinks.get(name)

    def poll_rings(self, timeout_ms: int) -> None:
        """Waits up to timeout_ms (-1: forever) for records, then hands every available one to
        its ring's sink."""
        self.bpf.ring_buffer_poll(timeout_ms)

    def pin_programs(self) -> None:
        if self.pin_dir is None:
            return
        for fn, name in ((self.xdp_fn, XDP_PIN), (self.tc_fn, TC_PIN), (self.tc_egress_fn, TC_EGRESS_PIN)):
            path = self.pin_dir / name
            path.unlink(missing_ok=True)  # replaced by this load's program
            _pin(fn.fd, path)

    def close(self) -> None:
        if self.build_flags is None:
            self.bpf.cleanup()
        else:
            _release(self.build_flags, self.bpf)


def program_cflags(settings: DataplaneSettings) -> list[str]:
    """The compiler flags of a data-plane build: capacities and bucket allocation from the
    settings, feature switches from what this kernel allows."""
    return ["-Wno-unused-function", *settings.cflags(), *build_cflags()]


@dataclass
class _Build:
    bpf: Any  # the BCC object of the first load with these flags
    fns: dict[str, tuple[Any, int]]  # entry function -> (its BCC function, program type)
    users: int = 1


_BUILDS: dict[tuple[str, ...], _Build] = {}
_BUILDS_LOCK = threading.Lock()  # also serialises compiles


def _release(flags: tuple[str, ...], bpf: Any) -> None:
    with _BUILDS_LOCK:
        build = _BUILDS[flags]
        if isinstance(bpf, clone.Copy):
            bpf.cleanup()
        build.users -= 1
        if build.users == 0:
            del _BUILDS[flags]
            build.bpf.cleanup()


def compile_program(settings: DataplaneSettings, key: InterfaceKey | None = None) -> Program:
    """Loads the data plane (compiling it only when no load of this process has these flags);
    with a key, pins (or adopts pinned) maps for that interface."""
    pin_dir = _claim(settings, key) if key is not None else None
    adopted = pin_dir is not None and key is not None and pinned_maps_state(pin_dir, key) == "all"
    flags = tuple(program_cflags(settings))
    built = warm.digest(program_text(), list(flags))  # what a compile with these flags is
    with _BUILDS_LOCK:
        build = _BUILDS.get(flags)
        if build is None and adopted and key is not None and pin_dir is not None:
            found = warm.adopt(settings.run_dir(key), pin_dir, built, map_names(), _PROGRAM_PINS,
                               _stage_slots())
            if found is not None:  # the pinned programs are this very build: nothing to compile
                return _warm_program(found, pin_dir, key)
        if build is None:
            prog = _compile(list(flags), pin_dir if adopted else None)
            xdp = _bcc().BPF.XDP
            _BUILDS[flags] = _Build(prog.bpf, {XDP_FUNC: (prog.xdp_fn, xdp),
                                               TC_FUNC: (prog.tc_fn, _bcc().BPF.SCHED_CLS),
                                               TC_EGRESS_FUNC: (prog.tc_egress_fn, _bcc().BPF.SCHED_CLS),
                                               **{func: (fn, xdp) for func, fn in prog.stages.items()}})
        else:
            build.users += 1
    if build is not None:
        try:
            copy, fns = clone.load_copy(build.bpf, build.fns, map_names(), pin_dir, adopted, _PROGRAM_PINS)
        except BaseException:
            _release(flags, None)
            raise
        prog = Program(copy, fns[XDP_FUNC], fns[TC_FUNC], pin_dir, adopted,
                       {func: fns[func] for func in XDP_STAGES.values()}, fns[TC_EGRESS_FUNC])
        fill_stages(prog)
    prog.pin_dir, prog.adopted, prog.build_flags = pin_dir, adopted, flags
    if pin_dir is not None and not adopted:
        for name in map_names():
            _pin(prog.map_fd(name), pin_dir / name)
    if key is not None:
        with _BUILDS_LOCK:
            built_bpf = _BUILDS[flags].bpf
        warm.record(settings.run_dir(key), built, built_bpf, _program_fds(prog), map_names())
    log.info("data plane loaded", extra={"ifname": key.ifname if key else None, "pin_dir": str(pin_dir),
                                         "adopted": adopted, "compiled": build is None})
    return prog


# The programs a load pins (attached to their hooks) and the stages (reached by tail call through
# the pinned xdp_stages array), by the function each is: what a restart adopts without compiling.
_PROGRAM_PINS = {XDP_FUNC: XDP_PIN, TC_FUNC: TC_PIN, TC_EGRESS_FUNC: TC_EGRESS_PIN}


def _stage_slots() -> dict[str, tuple[str, int]]:
    """Stage function -> (program array, its slot)."""
    slots = abi.enums()["tg_stage"]
    return {func: (STAGES_MAP, int(slots[enum_name])) for enum_name, func in XDP_STAGES.items()}


def _program_fds(prog: Program) -> dict[str, int]:
    return {XDP_FUNC: prog.xdp_fn.fd, TC_FUNC: prog.tc_fn.fd, TC_EGRESS_FUNC: prog.tc_egress_fn.fd,
            **{func: fn.fd for func, fn in prog.stages.items()}}


def _warm_program(found: tuple[warm.WarmBPF, dict[str, int]], pin_dir: Path, key: InterfaceKey) -> Program:
    bcc = _bcc()
    bpf, fds = found
    fns = {func: bcc.BPF.Function(bpf, func.encode(), fd) for func, fd in fds.items()}
    log.info("data plane loaded", extra={"ifname": key.ifname, "pin_dir": str(pin_dir), "adopted": True,
                                         "compiled": False})
    return Program(bpf, fns[XDP_FUNC], fns[TC_FUNC], pin_dir, True,
                   {func: fns[func] for func in XDP_STAGES.values()}, fns[TC_EGRESS_FUNC], compiled=False)


def _compile(cflags: list[str], pin_dir: Path | None) -> Program:
    """BCC's compile and load, over the maps pinned in `pin_dir` when given."""
    bcc = _bcc()
    if pin_dir is not None:
        cflags.append(f'-DTG_PIN_DIR="{pin_dir}"')
    bpf = bcc.BPF(text=program_text().encode(), cflags=cflags)
    try:
        xdp_fn, tc_fn, tc_egress_fn, stages = load_functions(bpf)
        prog = Program(bpf, xdp_fn, tc_fn, pin_dir, pin_dir is not None, stages, tc_egress_fn)
        fill_stages(prog)
    except BaseException:
        bpf.cleanup()
        raise
    return prog


def load_functions(bpf: Any) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Loads the entries and the stages (tail-call targets) of a compiled module."""
    bcc = _bcc()
    xdp_fn = bpf.load_func(XDP_FUNC.encode(), bcc.BPF.XDP)
    tc_fn = bpf.load_func(TC_FUNC.encode(), bcc.BPF.SCHED_CLS)
    tc_egress_fn = bpf.load_func(TC_EGRESS_FUNC.encode(), bcc.BPF.SCHED_CLS)
    stages = {func: bpf.load_func(func.encode(), bcc.BPF.XDP) for func in XDP_STAGES.values()}
    return xdp_fn, tc_fn, tc_egress_fn, stages


def fill_stages(prog: Program) -> None:
    """Each stage into its slot of the load's xdp_stages program array (replacing what an
    earlier load of adopted maps put there)."""
    slots = prog.table(STAGES_MAP)
    for enum_name, func in XDP_STAGES.items():
        slots[ctypes.c_int(abi.enums()["tg_stage"][enum_name])] = ctypes.c_int(prog.stages[func].fd)


def _claim(settings: DataplaneSettings, key: InterfaceKey) -> Path:
    legacy = settings.pin_root / key.ifname  # before pins were keyed by namespace and ifindex
    if legacy.is_dir() and any((legacy / name).exists() for name in map_names()):
        log.warning("pins of an earlier Tidegate, keyed by the interface name only, are not adopted: "
                    "whose they are is unknown (any namespace's interface of that name). The data plane "
                    "starts afresh; remove them once nothing uses them",
                    extra={"legacy_pin_dir": str(legacy), "ifname": key.ifname})
    return owner.claim(settings.pin_root, key, settings.state_dir)


def unpin(settings: DataplaneSettings, key: InterfaceKey) -> None:
    """Removes the interface's pins (only when their owner record names it); the kernel frees the
    maps once nothing else holds them."""
    pin_dir = settings.pin_dir(key)
    if pin_dir.is_dir() and owner.releasable(pin_dir, key):
        shutil.rmtree(pin_dir)
    owner.remove_empty_parents(pin_dir, settings.pin_root)
