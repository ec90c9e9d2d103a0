"""A restarted daemon takes over the programs and maps a previous one pinned, without compiling.

BCC compiles the data plane from C on every load, seconds of clang. When the pinned programs are
exactly what this process would build, there is nothing to compile: a load records, beside the
pins (in the interface's run directory), a digest of what it compiled (the program text, the
compiler flags, the kernel release and BCC's version), the tags of the programs it loaded and
BCC's own description of every map (type, key and value layouts as its JSON). A later load
with the same digest, whose pinned programs carry the recorded tags (the kernel's hash of the
instructions), opens the pins instead: map fds from bpf_obj_get, their ctypes types from the
recorded JSON (BCC's decoder), the programs from their pins. Anything else (no record, another
source or flags, a tag that differs, a pin missing, another BCC) compiles as before, so this is
only ever a shortcut to the same result.

The tables are BCC's own classes (bcc.table), made without the compiled module BCC normally
asks for their type and size: those come from the record. That leans on BCC 0.26's internals
(Debian's python3-bpfcc); `BCC_VERSIONS` names the ones this was written against, and any other
compiles.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RECORD = "build.json"
BCC_VERSIONS = ("0.26.0",)
PROG_INFO_SIZE = 256  # bytes handed to BPF_OBJ_GET_INFO_BY_FD: more than struct bpf_prog_info
TAG_OFFSET, TAG_SIZE = 8, 8  # struct bpf_prog_info: __u32 type, id; __u8 tag[8]
_MAP_TYPES = {1: "HashTable", 2: "Array", 3: "ProgArray", 5: "PerCpuHash", 6: "PerCpuArray", 9: "LruHash",
              11: "LpmTrie", 27: "RingBuf"}


def _bcc() -> Any:
    import bcc

    return bcc


def bcc_version() -> str:
    return str(getattr(_bcc(), "__version__", "?"))


def digest(text: str, cflags: list[str]) -> str:
    """What a compile depends on besides the pinned maps themselves."""
    h = hashlib.sha256()
    for part in (text, "\0".join(cflags), platform.release(), bcc_version()):
        h.update(part.encode())
        h.update(b"\x00\x01")
    return h.hexdigest()


def _libbpf() -> ctypes.CDLL:
    from dataplane.kernel.libbpf import libbpf

    lib = libbpf()
    lib.bpf_obj_get.restype, lib.bpf_obj_get.argtypes = ctypes.c_int, [ctypes.c_char_p]
    fn = lib.bpf_obj_get_info_by_fd
    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
    return lib


def prog_tag(fd: int) -> str:
    """The kernel's tag of a loaded program (a hash of its instructions), hex."""
    info = ctypes.create_string_buffer(PROG_INFO_SIZE)
    size = ctypes.c_uint32(PROG_INFO_SIZE)
    if _libbpf().bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)) != 0:
        raise OSError(ctypes.get_errno(), f"BPF_OBJ_GET_INFO_BY_FD of fd {fd}")
    return info.raw[TAG_OFFSET:TAG_OFFSET + TAG_SIZE].hex()


def obj_get(path: Path) -> int:
    fd = int(_libbpf().bpf_obj_get(str(path).encode()))
    if fd < 0:
        raise OSError(-fd, f"bpf_obj_get {path}")
    return fd


# --- the record, written after a compile ---------------------------------------------------------

def record(run_dir: Path, build: str, bpf: Any, progs: dict[str, int], names: tuple[str, ...]) -> None:
    """Writes what a later load needs to adopt this compile's pins (atomically; best effort);
    `progs`: function name -> fd of every program of the load (entries and tail-called stages)."""
    bcc = _bcc()
    lib = bcc.libbcc.lib
    tables = {}
    for name in names:
        raw = name.encode()
        map_id = lib.bpf_table_id(bpf.module, raw)
        tables[name] = {"type": int(lib.bpf_table_type_id(bpf.module, map_id)),
                        "flags": int(lib.bpf_table_flags_id(bpf.module, map_id)),
                        "max_entries": int(lib.bpf_table_max_entries_id(bpf.module, map_id)),
                        "key": lib.bpf_table_key_desc(bpf.module, raw).decode(),
                        "leaf": lib.bpf_table_leaf_desc(bpf.module, raw).decode()}
    data = {"build": build, "bcc": bcc_version(), "tags": {func: prog_tag(fd) for func, fd in progs.items()},
            "tables": tables}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{RECORD}.", dir=run_dir)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, run_dir / RECORD)
    except OSError as exc:  # without a record the next load compiles: slower, never wrong
        log.warning("build record not written", extra={"dir": str(run_dir), "error": str(exc)})


def forget(run_dir: Path) -> None:
    (run_dir / RECORD).unlink(missing_ok=True)


# --- adopting without compiling ------------------------------------------------------------------

@dataclass
class WarmBPF:
    """What a Program needs of a bcc.BPF, for pins opened without compiling: its tables (by
    name, bytes) and its ring buffer poller (BCC's own methods, on this object's manager)."""

    tables: dict[bytes, Any] = field(default_factory=dict)
    fds: list[int] = field(default_factory=list)
    module: None = None
    _ringbuf_manager: Any = None

    def __getitem__(self, name: bytes) -> Any:
        return self.tables[name]

    def get_table(self, name: bytes) -> Any:
        return self.tables[name]

    def table_fd(self, name: str) -> int:
        return int(self.tables[name.encode()].map_fd)

    def _open_ring_buffer(self, map_fd: int, fn: Any, ctx: Any = None) -> None:
        _bcc().BPF._open_ring_buffer(self, map_fd, fn, ctx)

    def ring_buffer_poll(self, timeout: int = -1) -> None:
        _bcc().BPF.ring_buffer_poll(self, timeout)

    def cleanup(self) -> None:
        if self._ringbuf_manager:
            _bcc().libbcc.lib.bpf_free_ringbuf(self._ringbuf_manager)
            self._ringbuf_manager = None
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def _table(bpf: WarmBPF, name: str, fd: int, spec: dict[str, Any]) -> Any:
    """A bcc.table object for an opened map, as BCC's constructors would make it."""
    bcc = _bcc()
    cls = getattr(bcc.table, _MAP_TYPES[spec["type"]])
    t = cls.__new__(cls)
    key = bcc.BPF._decode_table_type(json.loads(spec["key"]))
    leaf = bcc.BPF._decode_table_type(json.loads(spec["leaf"]))
    t.bpf, t.map_id, t.map_fd, t.Key, t.Leaf = bpf, -1, fd, key, leaf
    t.ttype, t.flags, t.max_entries = spec["type"], spec["flags"], spec["max_entries"]
    t._cbs, t._name = {}, name.encode()
    if cls.__name__.startswith("PerCpu"):  # as PerCpuArray/PerCpuHash.__init__
        t.reducer, t.sLeaf = None, leaf
        t.total_cpu = len(bcc.utils.get_possible_cpus())
        t.alignment = ctypes.sizeof(leaf) % 8
        if t.alignment:
            raise TypeError(f"{name}: per-CPU values must be 8-byte aligned")
        t.Leaf = leaf * t.total_cpu
    if cls.__name__ == "RingBuf":
        t._ringbuf, t._event_class = None, None
    return t


def _stage_fd(bpf: WarmBPF, array: str, slot: int) -> int:
    """A new fd of the program in `slot` of the pinned program array `array` (user space reads a
    program array's element as the program's id)."""
    lib = _libbpf()
    key, prog_id = ctypes.c_uint32(slot), ctypes.c_uint32(0)
    if lib.bpf_map_lookup_elem(bpf.table_fd(array), ctypes.byref(key), ctypes.byref(prog_id)) != 0:
        raise OSError(ctypes.get_errno(), f"{array}[{slot}] holds no program")
    fd = int(lib.bpf_prog_get_fd_by_id(prog_id.value))
    if fd < 0:
        raise OSError(-fd, f"program id {prog_id.value} of {array}[{slot}]")
    return fd


def adopt(run_dir: Path, pin_dir: Path, build: str, names: tuple[str, ...], pins: dict[str, str],
          stages: dict[str, tuple[str, int]]) -> tuple[WarmBPF, dict[str, int]] | None:
    """(tables, function name -> program fd) of pins that are this very build: `pins` (function ->
    pin name) and `stages` (function -> the pinned program array and slot it is reached through);
    None (compile) when anything says otherwise."""
    try:
        data = json.loads((run_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if data.get("build") != build or data.get("bcc") not in BCC_VERSIONS or bcc_version() not in BCC_VERSIONS:
        return None
    if set(data.get("tables", {})) != set(names) or set(data.get("tags", {})) != set(pins) | set(stages):
        return None
    bpf = WarmBPF()
    progs: dict[str, int] = {}
    try:
        for func, pin in pins.items():
            progs[func] = obj_get(pin_dir / pin)
            bpf.fds.append(progs[func])
        for name in names:
            spec = data["tables"][name]
            if spec["type"] not in _MAP_TYPES:
                bpf.cleanup()
                return None
            fd = obj_get(pin_dir / name)
            bpf.fds.append(fd)
            bpf.tables[name.encode()] = _table(bpf, name, fd, spec)
        for func, (array, slot) in stages.items():
            progs[func] = _stage_fd(bpf, array, slot)
            bpf.fds.append(progs[func])
        if any(prog_tag(fd) != data["tags"][func] for func, fd in progs.items()):
            bpf.cleanup()
            return None
    except (OSError, KeyError, TypeError, ValueError) as exc:
        log.info("pins not adopted without compiling", extra={"dir": str(pin_dir), "reason": str(exc)})
        bpf.cleanup()
        return None
    return bpf, progs
