"""What a pinned map holds, read straight from the kernel (not through the daemon).

    digest = map_digest(daemon.pin_dir("eth0") / "acl_buckets")   # (entries, sha256 of every key and value)

For checks such as "a refused policy wrote nothing": the daemon's own view (GetStats, metrics)
comes from what it compiled, so only the kernel's maps can show that nothing reached them.
Per-CPU maps (counters) are not for this: their values move with traffic.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from pathlib import Path

from dataplane.kernel.bpf_info import map_info
from dataplane.kernel.libbpf import errno_of, libbpf

_VOID_P = ctypes.c_void_p


def _lib() -> ctypes.CDLL:
    lib = libbpf()
    lib.bpf_map_get_next_key.restype = ctypes.c_int
    lib.bpf_map_get_next_key.argtypes = [ctypes.c_int, _VOID_P, _VOID_P]
    lib.bpf_map_lookup_elem.restype = ctypes.c_int
    lib.bpf_map_lookup_elem.argtypes = [ctypes.c_int, _VOID_P, _VOID_P]
    return lib


def map_digest(path: Path) -> tuple[int, str]:
    """(entries, sha256 over every key and value in iteration order) of the map pinned at `path`."""
    lib = _lib()
    fd = lib.bpf_obj_get(str(path).encode())
    if fd < 0:
        err = errno_of(fd)
        raise OSError(err, f"{path}: {os.strerror(err)}")
    try:
        info = map_info(fd)
        key = ctypes.create_string_buffer(info.key_size)
        nxt = ctypes.create_string_buffer(info.key_size)
        value = ctypes.create_string_buffer(info.value_size)
        digest, entries, prev = hashlib.sha256(), 0, None
        while lib.bpf_map_get_next_key(fd, prev, nxt) == 0:
            ctypes.memmove(key, nxt, info.key_size)
            prev = key
            if lib.bpf_map_lookup_elem(fd, key, value) != 0:
                continue  # deleted between the two calls
            digest.update(key.raw)
            digest.update(value.raw)
            entries += 1
        return entries, digest.hexdigest()
    finally:
        os.close(fd)


def policy_maps_digest(pin_dir: Path, prefix: str = "acl_") -> dict[str, tuple[int, str]]:
    """map_digest of every map pinned in `pin_dir` whose name starts with `prefix`, except the
    per-CPU counters (`*_stats`): the ACL's tries, rule slots and whatever lookup aids exist."""
    return {p.name: map_digest(p) for p in sorted(pin_dir.iterdir())
            if p.name.startswith(prefix) and not p.name.endswith("_stats")}


def pinned_memlock(path: Path) -> int:
    """The kernel's memory figure (fdinfo `memlock:`) of the map pinned at `path`, read through a
    descriptor of this process (not the daemon's)."""
    fd = _lib().bpf_obj_get(str(path).encode())
    if fd < 0:
        err = errno_of(fd)
        raise OSError(err, f"{path}: {os.strerror(err)}")
    try:
        for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
            if line.startswith("memlock:"):
                return int(line.split(":", 1)[1])
        raise OSError(f"{path}: the kernel reports no memlock for it")
    finally:
        os.close(fd)
