"""What the kernel says about BPF objects: ids, the maps a program uses, what is attached where.

Read through libbpf (dataplane.kernel.libbpf) rather than BCC, which has no call for any of it:

    map_id(fd)              the id of the map behind an fd (a BCC table's map_fd, a pin)
    prog_info(fd)           id, type, name, tag, the ids of the maps the program uses, and how
                            much work the verifier did on it and how large it came out
    prog_info_by_id(id)     the same for a program the caller holds no fd of
    verified_insns(fd)      instructions the verifier processed to accept the program
    pinned_prog(path)       a new fd of the program pinned at path
    pinned_id(path)         the id of whatever object is pinned at path
    prog_ids()              every program loaded on the host
    xdp_prog_id(ifindex)    the XDP program on an interface (None: none)
    tc_prog_id(ifindex, handle, priority[, attach_point])   the TC ingress (or egress) filter's
                            program (None: none)

The interface queries open a netlink socket in the calling thread's network namespace.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from dataplane.kernel.libbpf import errno_of, libbpf

_MAX_MAP_IDS = 64  # more maps than any program of ours uses; the kernel reports the real count
_MapIds = ctypes.c_uint32 * _MAX_MAP_IDS  # made once: a ctypes array type made per call is GC garbage
# The verifier refuses a program once it has processed this many instructions over all its paths
# (kernel/bpf/verifier.c: E2BIG); verified_insns (Linux >= 5.16) is the headroom a feature has left.
BPF_COMPLEXITY_LIMIT_INSNS = 1_000_000
BPF_PROG_TYPE_XDP = 6  # enum bpf_prog_type
BPF_TC_INGRESS = 1  # enum bpf_tc_attach_point
BPF_TC_EGRESS = 2


class MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info (include/uapi/linux/bpf.h); the kernel fills what fits."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * 16)]


class _ProgInfo(ctypes.Structure):
    """struct bpf_prog_info (include/uapi/linux/bpf.h), up to verified_insns (Linux >= 5.16; an
    older kernel fills what it has and reports a shorter length, leaving the rest zero)."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
                ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64),
                ("name", ctypes.c_char * 16), ("ifindex", ctypes.c_uint32),
                ("gpl_compatible", ctypes.c_uint32),
                ("netns_dev", ctypes.c_uint64), ("netns_ino", ctypes.c_uint64),
                ("nr_jited_ksyms", ctypes.c_uint32), ("nr_jited_func_lens", ctypes.c_uint32),
                ("jited_ksyms", ctypes.c_uint64), ("jited_func_lens", ctypes.c_uint64),
                ("btf_id", ctypes.c_uint32), ("func_info_rec_size", ctypes.c_uint32),
                ("func_info", ctypes.c_uint64), ("nr_func_info", ctypes.c_uint32),
                ("nr_line_info", ctypes.c_uint32), ("line_info", ctypes.c_uint64),
                ("jited_line_info", ctypes.c_uint64), ("nr_jited_line_info", ctypes.c_uint32),
                ("line_info_rec_size", ctypes.c_uint32), ("jited_line_info_rec_size", ctypes.c_uint32),
                ("nr_prog_tags", ctypes.c_uint32), ("prog_tags", ctypes.c_uint64),
                ("run_time_ns", ctypes.c_uint64), ("run_cnt", ctypes.c_uint64),
                ("recursion_misses", ctypes.c_uint64), ("verified_insns", ctypes.c_uint32)]


assert _ProgInfo.verified_insns.offset == 216, "struct bpf_prog_info layout"


class _TcHook(ctypes.Structure):
    # struct bpf_tc_hook (libbpf >= 0.4): sz, ifindex, attach_point, parent
    _fields_ = [("sz", ctypes.c_size_t), ("ifindex", ctypes.c_int), ("attach_point", ctypes.c_int),
                ("parent", ctypes.c_uint32)]


class _TcOpts(ctypes.Structure):
    # struct bpf_tc_opts: sz, prog_fd, flags, prog_id, handle, priority
    _fields_ = [("sz", ctypes.c_size_t), ("prog_fd", ctypes.c_int), ("flags", ctypes.c_uint32),
                ("prog_id", ctypes.c_uint32), ("handle", ctypes.c_uint32), ("priority", ctypes.c_uint32)]


@dataclass(frozen=True)
class ProgInfo:
    id: int
    name: str  # the kernel's copy: at most 15 characters of the function's name
    map_ids: frozenset[int]
    tag: bytes = b""  # the kernel's hash of the instructions, map references left out
    type: int = 0  # enum bpf_prog_type
    verified_insns: int = 0  # instructions the verifier processed over all paths (0: kernel < 5.16)
    jited_bytes: int = 0  # machine code size (0 when the JIT is off)
    xlated_bytes: int = 0  # BPF instructions after the verifier's rewrites, 8 bytes each

    @property
    def budget_share(self) -> float:
        return self.verified_insns / BPF_COMPLEXITY_LIMIT_INSNS


def _info(fd: int, info: ctypes.Structure, what: str) -> None:
    size = ctypes.c_uint32(ctypes.sizeof(info))
    rc = libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size))
    if rc < 0:
        err = errno_of(rc)
        raise OSError(err, f"cannot read the info of {what}: {os.strerror(err)}")


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    _info(fd, info, f"map fd {fd}")
    return info


def map_id(fd: int) -> int:
    return int(map_info(fd).id)


def prog_info(fd: int) -> ProgInfo:
    ids = _MapIds()
    info = _ProgInfo(nr_map_ids=_MAX_MAP_IDS, map_ids=ctypes.addressof(ids))
    _info(fd, info, f"program fd {fd}")
    count = min(int(info.nr_map_ids), _MAX_MAP_IDS)
    if info.nr_map_ids > _MAX_MAP_IDS:
        raise OSError(errno.E2BIG, f"program {info.id} uses {info.nr_map_ids} maps, more than "
                                   f"{_MAX_MAP_IDS} this reader expects")
    return ProgInfo(int(info.id), info.name.decode(errors="replace"), frozenset(ids[:count]), bytes(info.tag),
                    int(info.type), int(info.verified_insns), int(info.jited_prog_len),
                    int(info.xlated_prog_len))


def pinned_prog(path: str | Path) -> int:
    """A new fd of the program pinned at `path` (bpffs); the caller closes it."""
    fd = libbpf().bpf_obj_get(str(path).encode())
    if fd < 0:
        err = errno_of(fd)
        raise OSError(err, f"{path}: no pinned BPF object there ({os.strerror(err)})")
    return int(fd)


def verified_insns(fd: int) -> int:
    """Instructions the verifier processed to accept the program (Debian's bpftool 7.1 does not
    print it); 0 where the kernel does not report it."""
    return prog_info(fd).verified_insns


def prog_info_by_id(prog_id: int) -> ProgInfo:
    fd = libbpf().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        err = errno_of(fd)
        raise OSError(err, f"program id {prog_id}: {os.strerror(err)}")
    try:
        return prog_info(fd)
    finally:
        os.close(fd)


def prog_ids() -> list[int]:
    """The ids of every program loaded on the host, in id order."""
    ids: list[int] = []
    next_id = ctypes.c_uint32(0)
    while True:
        rc = libbpf().bpf_prog_get_next_id(ids[-1] if ids else 0, ctypes.byref(next_id))
        if rc < 0:
            err = errno_of(rc)
            if err == errno.ENOENT:  # the last one
                return ids
            raise OSError(err, f"cannot list the host's programs: {os.strerror(err)}")
        ids.append(int(next_id.value))


def users_of(map_ids: frozenset[int], skip: set[int], known: dict[int, ProgInfo] | None = None
             ) -> dict[int, ProgInfo]:
    """The programs (not in `skip`) that use any of the maps `map_ids`: id -> info. A program
    unloaded while this looks is passed over. `known`: infos read by an earlier call, by id,
    used for the programs still listed, and brought up to date (dataplane.kernel.verify says why
    an id listed in both calls is the same program)."""
    users = {}
    listed = prog_ids()
    if known is not None:
        for gone in known.keys() - set(listed):
            del known[gone]
    for prog_id in listed:
        if prog_id in skip:
            continue
        info = known.get(prog_id) if known is not None else None
        if info is None:
            try:
                info = prog_info_by_id(prog_id)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    continue
                raise
            if known is not None:
                known[prog_id] = info
        if info.map_ids & map_ids:
            users[prog_id] = info
    return users


def pinned_id(path: str | Path) -> int:
    """The id of the map or program pinned at `path` (both infos start with type, id)."""
    fd = libbpf().bpf_obj_get(str(path).encode())
    if fd < 0:
        err = errno_of(fd)
        raise OSError(err, f"{path}: {os.strerror(err)}")
    try:
        return map_id(fd)  # struct bpf_map_info and bpf_prog_info both begin with type, id
    finally:
        os.close(fd)


def xdp_prog_id(ifindex: int) -> int | None:
    prog_id = ctypes.c_uint32(0)
    rc = libbpf().bpf_xdp_query_id(ifindex, 0, ctypes.byref(prog_id))
    if rc < 0:
        err = errno_of(rc)
        raise OSError(err, f"ifindex {ifindex}: cannot query its XDP program: {os.strerror(err)}")
    return int(prog_id.value) or None


def tc_prog_id(ifindex: int, handle: int, priority: int, attach_point: int = BPF_TC_INGRESS) -> int | None:
    """The program of the clsact ingress (or egress) filter with this handle and priority
    (protocol all)."""
    hook = _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=ifindex, attach_point=attach_point)
    opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=handle, priority=priority)
    rc = libbpf().bpf_tc_query(ctypes.byref(hook), ctypes.byref(opts))
    if rc < 0:
        err = errno_of(rc)
        if err in (errno.ENOENT, errno.EINVAL):  # no such filter (EINVAL: no clsact qdisc)
            return None
        raise OSError(err, f"ifindex {ifindex}: cannot query its TC filter: {os.strerror(err)}")
    return int(opts.prog_id) or None
