"""Another interface's data plane from a build already compiled: no second BCC compile.

BCC compiles the C text (clang: seconds) and relocates the programs against maps it creates: the
instructions hold those maps' fds. A copy for another interface needs its own maps, and the same
instructions pointing at them. So a copy:
  - creates maps like the build's (type, key and value size, entries, flags; kernel info of the
    build's maps), or opens the ones pinned in the interface's directory (a restart), checking that
    they are made like the build's;
  - loads the build's instructions with every map reference (BPF_LD_IMM64, BPF_PSEUDO_MAP_FD)
    pointed at its own map of the same name: the kernel verifies them (a fraction of a second);
  - or, on a restart, adopts the programs pinned there when they are this build's code (the same
    program tag, which the kernel computes with the map references left out) over the very maps
    pinned beside them: nothing is loaded at all.
Python reaches the maps through BCC table objects made from the build's types and the copy's fds;
each copy has a ring buffer consumer of its own (two interfaces' event readers never share one).
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
from pathlib import Path
from typing import Any

from dataplane.kernel import bpf_info
from dataplane.kernel.libbpf import errno_of, libbpf
from dataplane.kernel.owner import PinError

log = logging.getLogger(__name__)

_INSN = struct.Struct("<BBhi")  # struct bpf_insn: code, dst_reg:4 | src_reg:4, off, imm
BPF_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: two instruction slots
BPF_PSEUDO_MAP_FD = 1  # src_reg of a map reference by fd
_SPEC = ("type", "key_size", "value_size", "max_entries", "map_flags")


class _MapCreateOpts(ctypes.Structure):
    # struct bpf_map_create_opts (libbpf >= 0.7), the fields up to map_ifindex
    _fields_ = [("sz", ctypes.c_size_t), ("btf_fd", ctypes.c_uint32),
                ("btf_key_type_id", ctypes.c_uint32), ("btf_value_type_id", ctypes.c_uint32),
                ("btf_vmlinux_value_type_id", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("map_extra", ctypes.c_uint64),
                ("numa_node", ctypes.c_uint32), ("map_ifindex", ctypes.c_uint32)]


def _bcc() -> Any:
    import bcc  # Debian's python3-bpfcc, imported late as in dataplane.kernel.program

    return bcc


def _bcc_lib() -> Any:
    return _bcc().libbcc.lib


def create_like(info: bpf_info.MapInfo) -> int:
    opts = _MapCreateOpts(sz=ctypes.sizeof(_MapCreateOpts), map_flags=info.map_flags)
    fd = libbpf().bpf_map_create(info.type, info.name, info.key_size, info.value_size, info.max_entries,
                                 ctypes.byref(opts))
    if fd < 0:
        err = errno_of(fd)
        raise OSError(err, f"cannot create map {info.name.decode()}: {os.strerror(err)}")
    return int(fd)


def open_pinned(path: Path) -> int:
    fd = libbpf().bpf_obj_get(str(path).encode())
    if fd < 0:
        err = errno_of(fd)
        raise OSError(err, f"{path}: {os.strerror(err)}")
    return int(fd)


def relocate(insns: bytes, fds: dict[int, int]) -> bytearray:
    """The instructions with each map reference by fd (the build's) replaced by fds[its fd]."""
    out = bytearray(insns)
    slot = 0
    while slot < len(out):
        code, regs, _off, imm = _INSN.unpack_from(out, slot)
        if code == BPF_LD_IMM64:
            if regs >> 4 == BPF_PSEUDO_MAP_FD:
                if imm not in fds:
                    raise RuntimeError(f"instruction {slot // 8} refers to map fd {imm}, no map of the build")
                _INSN.pack_into(out, slot, code, regs, _off, fds[imm])
            elif regs >> 4:
                raise RuntimeError(f"instruction {slot // 8}: map reference kind {regs >> 4} is not "
                                   "supported by copies of a build (only map fds)")
            slot += 8  # the second half of the 16-byte instruction
        slot += 8
    return out


class Copy:
    """Stands where Program.bpf holds a BCC object: `module` (the build's, for table types),
    get_table() over this copy's fds, its own ring buffer consumer, cleanup() of its own fds."""

    def __init__(self, build: Any, fds: dict[str, int]) -> None:
        self.build = build
        self.module = build.module
        self.fds = fds
        self.prog_fds: list[int] = []
        self._ringbuf_manager: Any = None
        self._types: dict[bytes, tuple[Any, Any, int]] = {}

    def get_table(self, name: bytes) -> Any:
        if name not in self._types:
            template = self.build.get_table(name)
            # per-CPU tables widen Leaf to one per CPU and keep the element type as sLeaf
            self._types[name] = (template.Key, getattr(template, "sLeaf", template.Leaf), template.map_id)
        key, leaf, map_id = self._types[name]
        return _bcc().table.Table(self, map_id, self.fds[name.decode()], key, leaf, name)

    def table_fd(self, name: str) -> int:
        return self.fds[name]

    @property
    def Function(self) -> Any:  # noqa: N802 - BCC's ProgArray asks its table's `bpf` for this type
        return _bcc().BPF.Function

    # BCC's RingBuf.open_ring_buffer calls this on the table's `bpf`: the same as BPF's, per copy
    def _open_ring_buffer(self, map_fd: int, fn: Any, ctx: Any = None) -> None:
        lib = _bcc_lib()
        if not self._ringbuf_manager:
            self._ringbuf_manager = lib.bpf_new_ringbuf(map_fd, fn, ctx)
            if not self._ringbuf_manager:
                raise OSError(f"cannot open ring buffer fd {map_fd}")
        elif lib.bpf_add_ringbuf(self._ringbuf_manager, map_fd, fn, ctx) < 0:
            raise OSError(f"cannot open ring buffer fd {map_fd}")

    def ring_buffer_poll(self, timeout: int = -1) -> None:
        if not self._ringbuf_manager:
            raise RuntimeError("no ring buffer is open")
        _bcc_lib().bpf_poll_ringbuf(self._ringbuf_manager, timeout)

    def cleanup(self) -> None:
        if self._ringbuf_manager:
            _bcc_lib().bpf_free_ringbuf(self._ringbuf_manager)
            self._ringbuf_manager = None
        for fd in [*self.prog_fds, *self.fds.values()]:
            os.close(fd)
        self.prog_fds, self.fds = [], {}


def _maps(build: Any, names: tuple[str, ...], pin_dir: Path | None,
          adopt: bool) -> tuple[dict[str, int], dict[int, int]]:
    """The copy's map fds by name, and the build's fd -> the copy's fd."""
    lib = _bcc_lib()
    fds: dict[str, int] = {}
    moved: dict[int, int] = {}
    try:
        for name in names:
            theirs = int(lib.bpf_table_fd(build.module, name.encode()))
            spec = bpf_info.map_info(theirs)
            if adopt:
                assert pin_dir is not None
                fds[name] = open_pinned(pin_dir / name)
                _check_spec(pin_dir / name, bpf_info.map_info(fds[name]), spec)
            else:
                fds[name] = create_like(spec)
            moved[theirs] = fds[name]
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds, moved


def _check_spec(path: Path, pinned: bpf_info.MapInfo, spec: bpf_info.MapInfo) -> None:
    got, want = ([getattr(i, f) for f in _SPEC] for i in (pinned, spec))
    if got != want:
        diff = ", ".join(f"{f} {g} (this build: {w})"
                         for f, g, w in zip(_SPEC, got, want, strict=True) if g != w)
        raise PinError(f"{path}: the pinned map is made otherwise than this build's ({diff}): capacities "
                       "changed since it was pinned, or another version pinned it. Detach once and attach "
                       "again; the daemon then writes its policy afresh")


def _adoptable(path: Path, build_fn: Any, map_ids: set[int]) -> int | None:
    """The fd of the program pinned at `path` when it is the build's code over these maps."""
    if not path.exists():
        return None
    fd = open_pinned(path)
    pinned, ours = bpf_info.prog_info(fd), bpf_info.prog_info(build_fn.fd)
    if pinned.tag == ours.tag and pinned.map_ids <= map_ids:
        return fd
    os.close(fd)
    return None


def load_copy(build: Any, build_fns: dict[str, tuple[Any, int]], names: tuple[str, ...],
              pin_dir: Path | None, adopt: bool, pins: dict[str, str]) -> tuple[Copy, dict[str, Any]]:
    """A copy of `build` (a BCC object whose programs `build_fns` are loaded: func name ->
    (BCC function, program type)); with `adopt`, over the maps pinned in `pin_dir` (and their
    programs, `pins`: func name -> pin name, when they are this build's; a function without a
    pin is always loaded)."""
    fds, moved = _maps(build, names, pin_dir, adopt)
    copy = Copy(build, fds)
    fns: dict[str, Any] = {}  # func -> BCC's BPF.Function (what BCC's attach_xdp takes)
    try:
        ids = {bpf_info.map_id(fd) for fd in fds.values()}
        for func, (build_fn, prog_type) in build_fns.items():
            pinned = adopt and pin_dir is not None and func in pins  # stages are reached by tail call
            fd = _adoptable(pin_dir / pins[func], build_fn, ids) if pinned and pin_dir is not None else None
            if fd is None:
                fd = _load(build, func, prog_type, moved)
            copy.prog_fds.append(fd)
            fns[func] = _bcc().BPF.Function(copy, func.encode(), fd)
    except BaseException:
        copy.cleanup()
        raise
    return copy, fns


def _load(build: Any, func: str, prog_type: int, moved: dict[int, int]) -> int:
    lib = _bcc_lib()
    name = func.encode()
    start, size = lib.bpf_function_start(build.module, name), lib.bpf_function_size(build.module, name)
    insns = relocate(ctypes.string_at(start, size), moved)
    buf = (ctypes.c_ubyte * len(insns)).from_buffer(insns)
    fd = lib.bcc_func_load(build.module, prog_type, name, ctypes.addressof(buf), len(insns),
                           lib.bpf_module_license(build.module), lib.bpf_module_kern_version(build.module),
                           0, None, 0, None, -1)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot load a copy of {func}: {os.strerror(err)}")
    return int(fd)
