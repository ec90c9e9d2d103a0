"""What the kernel says about a loaded BPF program: its id, name, tag, how much work the verifier did
on it and how large it came out (bpf_prog_info, through libbpf's bpf_obj_get_info_by_fd).

Debian's bpftool 7.1 does not print `verified_insns`; the kernel has reported it since 5.16. The
verifier refuses a program once it has processed BPF_COMPLEXITY_LIMIT_INSNS instructions on all
its paths together (E2BIG), so `verified_insns` is the headroom a new feature has left.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass

from dataplane.kernel.libbpf import libbpf

BPF_COMPLEXITY_LIMIT_INSNS = 1_000_000  # kernel/bpf/verifier.c
BPF_PROG_TYPE_XDP = 6  # enum bpf_prog_type
BPF_TAG_SIZE = 8
BPF_OBJ_NAME_LEN = 16
# struct bpf_prog_info (include/uapi/linux/bpf.h): the members read here, by offset.
_INFO_SIZE = 232
_TYPE, _ID, _TAG, _JITED_LEN, _XLATED_LEN = 0, 4, 8, 16, 20
_NAME = 64
_VERIFIED_INSNS = 216
_INFO_MIN_LEN = _VERIFIED_INSNS + 4  # kernels before 5.16 return less: no verified_insns


class ProgInfoError(OSError):
    pass


@dataclass(frozen=True)
class ProgInfo:
    id: int
    type: int  # enum bpf_prog_type
    name: str  # the kernel's copy: at most 15 characters of the function's name
    tag: str  # hex of the kernel's hash of the instructions
    verified_insns: int  # instructions the verifier processed over all paths (its budget's unit)
    jited_bytes: int  # machine code size (0 when the JIT is off)
    xlated_bytes: int  # BPF instructions after the verifier's rewrites, 8 bytes each

    @property
    def budget_share(self) -> float:
        return self.verified_insns / BPF_COMPLEXITY_LIMIT_INSNS


def prog_info_by_id(prog_id: int) -> ProgInfo:
    """The info of loaded program `prog_id` (ProgInfoError when it is gone)."""
    fd = libbpf().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        raise ProgInfoError(-fd, f"no BPF program with id {prog_id}: {os.strerror(-fd)}")
    try:
        return prog_info(fd)
    finally:
        os.close(fd)


def pinned_prog(path: str) -> int:
    """A new fd of the program pinned at `path` (bpffs); the caller closes it."""
    fd = libbpf().bpf_obj_get(path.encode())
    if fd < 0:
        raise ProgInfoError(-fd, f"{path}: no pinned BPF object there ({os.strerror(-fd)})")
    return int(fd)


def prog_info(fd: int) -> ProgInfo:
    """The info of the program behind `fd` (needs the kernel to report verified_insns: >= 5.16)."""
    buf = ctypes.create_string_buffer(_INFO_SIZE)
    size = ctypes.c_uint32(_INFO_SIZE)
    rc = libbpf().bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(size))
    if rc != 0:
        err = -rc if rc < 0 else ctypes.get_errno()
        raise ProgInfoError(err, f"bpf_obj_get_info_by_fd({fd}): {os.strerror(err)}")
    if size.value < _INFO_MIN_LEN:
        raise ProgInfoError(0, f"the kernel reports {size.value} bytes of bpf_prog_info: "
                               "no verified_insns before Linux 5.16")
    raw = buf.raw
    (ptype, pid), tag = struct.unpack_from("=II", raw, _TYPE), raw[_TAG:_TAG + BPF_TAG_SIZE]
    jited, xlated = struct.unpack_from("=II", raw, _JITED_LEN)
    name = raw[_NAME:_NAME + BPF_OBJ_NAME_LEN].split(b"\0", 1)[0].decode(errors="replace")
    (verified,) = struct.unpack_from("=I", raw, _VERIFIED_INSNS)
    return ProgInfo(pid, ptype, name, tag.hex(), verified, jited, xlated)
