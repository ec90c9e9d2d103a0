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

