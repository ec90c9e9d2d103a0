"""What the running kernel lets the data plane use, found out by loading probes rather than assumed.

Each probe loads a few raw instructions through libbpf (no compile) once per process. The result
becomes a feature switch of the build (`build_cflags`), the one place such `-D`s are made.
"""

from __future__ import annotations

import ctypes
import os
import struct
from functools import cache

from dataplane.kernel.libbpf import libbpf

BPF_PROG_TYPE_XDP = 6
_FN_XDP_ADJUST_META = 54  # enum bpf_func_id
_XDP_PASS = 2


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


_MOV64_IMM, _CALL, _EXIT = 0xB7, 0x85, 0x95


@cache
def xdp_meta_supported() -> bool:
    """Whether XDP programs may call bpf_xdp_adjust_meta (some kernels and sandboxes refuse the
    helper at load time: then XDP cannot hand its mark to TC, and TC classifies by itself)."""
    insns = b"".join((
        _insn(_MOV64_IMM, dst=2, imm=-4),  # r1 = ctx already; r2 = -4 bytes of metadata
        _insn(_CALL, imm=_FN_XDP_ADJUST_META),
        _insn(_MOV64_IMM, dst=0, imm=_XDP_PASS),
        _insn(_EXIT),
    ))
    lib = libbpf()
    fn = lib.bpf_prog_load
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                   ctypes.c_void_p]
    fd = fn(BPF_PROG_TYPE_XDP, b"tg_probe_meta", b"GPL", insns, len(insns) // 8, None)
    if fd < 0:
        return False
    os.close(fd)
    return True


def build_cflags() -> list[str]:
    """The feature switches of a data-plane build on this kernel (xdp/xdp_ingress.c reads them)."""
    return [] if xdp_meta_supported() else ["-DTG_NO_XDP_META"]
