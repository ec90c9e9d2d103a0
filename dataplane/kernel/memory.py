"""Kernel memory of BPF maps, as the kernel itself counts it.

    fd_memlock(fd)               # bytes the kernel charges to one map (or program) fd
    map_memory(program)          # {map name: bytes} of every map of a loaded data plane
    map_fdinfo(pid)              # {fd: fdinfo fields} of the BPF maps another process holds

The figure is the `memlock:` line of /proc/self/fdinfo/<fd>, which the kernel computes for each
map from its type (map->ops->map_mem_usage since Linux 6.4; before that from the definition
alone): the map's struct, its entries (key and value rounded up to 8 bytes, per-CPU values
once per *possible* CPU), the hash buckets and per-CPU free lists, and for maps created with
BPF_F_NO_PREALLOC (the classifier's bucket hashes with `preallocate_buckets: false`) only the
entries present now.
docs/operations.md states the formula per map type; this module only reads the kernel's answer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

FDINFO = Path("/proc/self/fdinfo")


def fd_memlock(fd: int) -> int:
    """The `memlock:` of one BPF object fd of this process; 0 if the kernel reports none."""
    for line in (FDINFO / str(fd)).read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "memlock":
            return int(value.strip())
    return 0


def map_memory(program: Any) -> dict[str, int]:
    """{map name: bytes} of a dataplane.kernel.program.Program's maps, in declaration order."""
    from dataplane.kernel.program import map_names

    return {name: fd_memlock(program.table(name).map_fd) for name in map_names()}


def map_fdinfo(pid: int) -> dict[int, dict[str, str]]:
    """{fd: {field: value}} of the fdinfo of every BPF map process `pid` holds (map_id, memlock,
    ...); fds closed while reading are left out."""
    out: dict[int, dict[str, str]] = {}
    base = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(base):
        try:
            with open(f"{base}/{fd}") as f:
                info = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in f) if _}
        except OSError:
            continue
        if "map_id" in info:
            out[int(fd)] = info
    return out
