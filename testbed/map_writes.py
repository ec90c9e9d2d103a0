"""Counts the BPF map writes a process makes, by map, from outside it: a tracepoint on the bpf()
syscall (syscalls:sys_enter_bpf) counts every update and delete, element by element for the
batch commands, per (process, map fd); the fds are then named through /proc/PID/fdinfo (map id)
and bpftool (map name).

    with MapWrites() as writes:
        daemon.start()
    print(writes.by_name(daemon.proc.pid))     # {"acl_rules": 0, "config": 1, ...}

Independent of the code it watches: what the kernel was asked to change is counted, whatever
the daemon believes it wrote.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter

from dataplane.kernel.memory import map_fdinfo

BPF_TEXT = r"""
#include <uapi/linux/bpf.h>

struct key_t {
    u32 tgid;
    u32 fd;
};
BPF_HASH(writes, struct key_t, u64, 16384);

/* The head of union bpf_attr for the two shapes read here (include/uapi/linux/bpf.h). */
struct elem_attr { u32 map_fd; };
struct batch_attr { u64 in_batch, out_batch, keys, values; u32 count, map_fd; };

TRACEPOINT_PROBE(syscalls, sys_enter_bpf) {
    int cmd = args->cmd;
    struct key_t key = {.tgid = bpf_get_current_pid_tgid() >> 32};
    u64 n = 1;
    if (cmd == BPF_MAP_UPDATE_ELEM || cmd == BPF_MAP_DELETE_ELEM) {
        struct elem_attr a = {};
        bpf_probe_read_user(&a, sizeof(a), args->uattr);
        key.fd = a.map_fd;
    } else if (cmd == BPF_MAP_UPDATE_BATCH || cmd == BPF_MAP_DELETE_BATCH) {
        struct batch_attr a = {};
        bpf_probe_read_user(&a, sizeof(a), args->uattr);
        key.fd = a.map_fd;
        n = a.count;
    } else {
        return 0;
    }
    writes.increment(key, n);
    return 0;
}
"""


class MapWrites:
    """A context manager: counting runs inside the `with`, the counts stay readable after."""

    def __init__(self) -> None:
        self._bpf = None
        self.counts: Counter[tuple[int, int]] = Counter()  # (tgid, fd) -> elements written

    def __enter__(self) -> MapWrites:
        from bcc import BPF

        self._bpf = BPF(text=BPF_TEXT.encode())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._bpf is not None
        table = self._bpf[b"writes"]
        self.counts = Counter({(int(k.tgid), int(k.fd)): int(v.value) for k, v in table.items()})
        self._bpf.cleanup()
        self._bpf = None

    def by_fd(self, pid: int) -> dict[int, int]:
        return {fd: n for (tgid, fd), n in self.counts.items() if tgid == pid}

    def by_name(self, pid: int) -> dict[str, int]:
        """Elements written per map name by process `pid` (which must still hold the fds);
        maps it holds but did not write are listed with 0."""
        names = map_names(pid)
        out = {name: 0 for name in names.values()}
        for fd, n in self.by_fd(pid).items():
            name = names.get(fd, f"fd {fd}")
            out[name] = out.get(name, 0) + n
        return out


def map_names(pid: int) -> dict[int, str]:
    """fd -> map name of the BPF maps process `pid` holds."""
    ids = {fd: int(info["map_id"]) for fd, info in map_fdinfo(pid).items()}
    shown = json.loads(subprocess.run(["bpftool", "-j", "map", "show"], check=True, capture_output=True,
                                      text=True).stdout)
    name_of = {int(m["id"]): m.get("name", "") for m in shown}
    return {fd: name_of.get(map_id, f"id {map_id}") for fd, map_id in ids.items()}
