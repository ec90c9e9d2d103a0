"""Debian's libbpf1 through ctypes: the few calls BCC's Python API lacks.

BCC has no wrapper for BPF_PROG_TEST_RUN (dataplane.kernel.testrun), writes maps one element per
call (dataplane.kernel.bulk batches them) and reads neither object info nor what is attached where
(dataplane.kernel.bpf_info). libbpf >= 1.0 returns -errno and sets errno.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

_LIBBPF_NAMES = ("bpf", "libbpf.so.1")
_U32_P = ctypes.POINTER(ctypes.c_uint32)
_VOID_P = ctypes.c_void_p
_INT = ctypes.c_int

# name -> (restype, argtypes); `opts` pointers are passed as None (all defaults).
_PROTOTYPES: dict[str, tuple[object, list[object]]] = {
    # int bpf_map_update_batch(int fd, const void *keys, const void *values, __u32 *count, opts)
    "bpf_map_update_batch": (_INT, [_INT, _VOID_P, _VOID_P, _U32_P, _VOID_P]),
    # int bpf_map_delete_batch(int fd, const void *keys, __u32 *count, opts)
    "bpf_map_delete_batch": (_INT, [_INT, _VOID_P, _U32_P, _VOID_P]),
    # int bpf_map_update_elem(int fd, const void *key, const void *value, __u64 flags)
    "bpf_map_update_elem": (_INT, [_INT, _VOID_P, _VOID_P, ctypes.c_uint64]),
    # int bpf_map_delete_elem(int fd, const void *key)
    "bpf_map_delete_elem": (_INT, [_INT, _VOID_P]),
    # int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts) (dataplane.kernel.testrun)
    "bpf_prog_test_run_opts": (_INT, [_INT, _VOID_P]),
    # int bpf_obj_get_info_by_fd(int fd, void *info, __u32 *info_len) (dataplane.kernel.bpf_info)
    "bpf_obj_get_info_by_fd": (_INT, [_INT, _VOID_P, _U32_P]),
    # int bpf_prog_get_fd_by_id(__u32 id); int bpf_obj_get(const char *pathname)
    "bpf_prog_get_fd_by_id": (_INT, [ctypes.c_uint32]),
    "bpf_obj_get": (_INT, [ctypes.c_char_p]),
    # int bpf_prog_get_next_id(__u32 start_id, __u32 *next_id)
    "bpf_prog_get_next_id": (_INT, [ctypes.c_uint32, _U32_P]),
    # int bpf_map_create(type, const char *name, key_size, value_size, max_entries, opts) (clone)
    "bpf_map_create": (_INT, [_INT, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32,
                              _VOID_P]),
    # int bpf_obj_pin(int fd, const char *pathname)
    "bpf_obj_pin": (_INT, [_INT, ctypes.c_char_p]),
    # int bpf_xdp_query_id(int ifindex, int flags, __u32 *prog_id)
    "bpf_xdp_query_id": (_INT, [_INT, _INT, _U32_P]),
    # int bpf_tc_query(const struct bpf_tc_hook *hook, struct bpf_tc_opts *opts)
    "bpf_tc_query": (_INT, [_VOID_P, _VOID_P]),
    # int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values,
    #                          __u32 *count, opts)
    "bpf_map_lookup_batch": (_INT, [_INT, _VOID_P, _VOID_P, _VOID_P, _VOID_P, _U32_P, _VOID_P]),
    # int bpf_map_lookup_elem(int fd, const void *key, void *value)
    "bpf_map_lookup_elem": (_INT, [_INT, _VOID_P, _VOID_P]),
    # int bpf_map_get_next_key(int fd, const void *key, void *next_key)
    "bpf_map_get_next_key": (_INT, [_INT, _VOID_P, _VOID_P]),
}


@cache
def libbpf() -> ctypes.CDLL:
    for name in _LIBBPF_NAMES:
        path = ctypes.util.find_library(name) or name
        try:
            lib = ctypes.CDLL(path, use_errno=True)
        except OSError:
            continue
        for fn, (restype, argtypes) in _PROTOTYPES.items():
            getattr(lib, fn).restype = restype
            getattr(lib, fn).argtypes = argtypes
        return lib
    raise RuntimeError("libbpf.so.1 not found: install Debian's libbpf1 (make setup does)")


def errno_of(rc: int) -> int:
    """The errno of a failed call: libbpf returns -errno (and sets errno too)."""
    return -rc if rc < 0 else ctypes.get_errno()


class _ProgInfo(ctypes.Structure):
    # struct bpf_prog_info (UAPI) up to verified_insns (Linux >= 5.16); the kernel fills what it has.
    _fields_ = [
        ("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32), ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16), ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32), ("netns_dev", ctypes.c_uint64), ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32), ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64), ("jited_func_lens", ctypes.c_uint64), ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32), ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32), ("nr_line_info", ctypes.c_uint32), ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64), ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32), ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32), ("prog_tags", ctypes.c_uint64), ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64), ("recursion_misses", ctypes.c_uint64),
        ("verified_insns", ctypes.c_uint32),
        ("attach_btf_obj_id", ctypes.c_uint32), ("attach_btf_id", ctypes.c_uint32), ("pad", ctypes.c_uint32),
    ]


def verified_insns(prog_fd: int) -> int:
    """Instructions the verifier processed to accept the program (bpf_prog_info.verified_insns;
    Debian's bpftool 7.1 does not print it). 0 when the kernel does not report it."""
    info = _ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    rc = libbpf().bpf_obj_get_info_by_fd(prog_fd, ctypes.byref(info), ctypes.byref(size))
    if rc != 0:
        raise OSError(errno_of(rc), f"bpf_obj_get_info_by_fd({prog_fd}) failed")
    return int(info.verified_insns) if size.value > _ProgInfo.verified_insns.offset else 0
