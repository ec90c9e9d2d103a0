"""Checks, against the kernel, that the maps a data plane writes are the ones its attached programs use.

Read back from the kernel, never from what this process believes it did:
  - the programs on the interface now: the XDP program (netlink, bpf_xdp_query_id) and the TC
    ingress filter in Tidegate's band (bpf_tc_query);
  - each must be the very program this process loaded for that hook (so it uses the maps this
    process writes: every map of the program, whatever the maps are; no map name is assumed);
  - every map this process has opened (each BCC table it reads or writes) is one its programs
    use (bpf_prog_info.map_ids);
  - no other program on the host uses any of those maps (another daemon that adopted them);
  - every map and program pinned in the interface's directory is the one in use (a restarted
    daemon adopts what is pinned).
Any difference is a Mismatch naming the interface, the hook and the ids, for the caller to report
(the daemon: an error, and health NOT_SERVING), never to repair silently.

A check runs before and after every change, so what it learns that cannot change is kept in a
`Memo` (one per loaded program set) instead of being asked again, each item kept only while
something proves it still holds:
  - the info of a program, and the id of a map, behind an fd this process holds: the fd names
    the same object until it is closed (the memo goes with the program that holds them);
  - the maps another program uses (fixed when it is loaded), by its id, for as long as the id
    is listed among the host's programs: ids are allocated cyclically (2^31 of them), so one
    that stays listed from one check to the next is the same program; a program new since the
    last check is read, whatever its id;
  - the id of the object pinned at a path, while the pin's inode (device, number, change time)
    is the one it was read from: pinning again, or renaming another pin over it, makes a new
    inode;
  - what the pin directory holds, while the kernel reports no change to its entries and no
    mount or unmount in this process's mount namespace (dataplane.kernel.dirwatch: inotify and
    /proc/self/mountinfo), and the path still reaches the same directory.
The attached programs and the host's program ids are read every time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataplane.kernel import attach as attach_mod
from dataplane.kernel import bpf_info
from dataplane.kernel.dirwatch import DirWatch
from dataplane.kernel.owner import OWNER, OWNER_TMP, InterfaceKey
from dataplane.kernel.program import TC_EGRESS_PIN, TC_PIN, XDP_PIN

SHARING_GRACE = 1.0  # seconds a program sharing our maps may take to be freed (see _sharing_problems)
SHARING_POLL = 0.02


class Mismatch(RuntimeError):
    """The kernel runs programs that do not use the maps this process writes."""

    def __init__(self, ifname: str, problems: list[str]) -> None:
        self.ifname = ifname
        self.problems = problems
        super().__init__(f"{ifname}: " + "; ".join(problems))


@dataclass
class Memo:
    """What checks learnt that stays true (module docstring); valid while the fds of the program
    set it was made for stay open."""

    programs: dict[int, bpf_info.ProgInfo] = field(default_factory=dict)  # our program's fd -> info
    maps: dict[int, int] = field(default_factory=dict)  # our map's fd -> id
    others: dict[int, bpf_info.ProgInfo] = field(default_factory=dict)  # the host's other programs, by id
    pins: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # path -> (dev, ino, ctime, id)
    watch: DirWatch | None = None  # on the pin directory
    listing: dict[str, int] | None = None  # what it held (name -> object id) when last read

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        self.listing = None

    def pinned_ids(self, pin_dir: Path) -> Mapping[str, int | OSError]:
        """Every pin of the directory but the owner record's: name -> object id (or why it
        cannot be read), read again only when the directory may have changed."""
        if self.watch is None or self.watch.path != str(pin_dir):
            self.close()
            self.watch = DirWatch(pin_dir)  # armed before the read below: later changes are seen
        elif self.listing is not None and self.watch.unchanged():
            return self.listing
        out: dict[str, int | OSError] = {}
        for name in sorted(os.listdir(pin_dir)):
            if name == OWNER or name.startswith(OWNER_TMP):
                continue
            try:
                out[name] = self.pinned_id(os.path.join(pin_dir, name))
            except OSError as exc:
                out[name] = exc
        readable = all(isinstance(v, int) for v in out.values())
        self.listing = {k: v for k, v in out.items() if isinstance(v, int)} if readable else None
        return out

    def prog_info(self, fd: int) -> bpf_info.ProgInfo:
        info = self.programs.get(fd)
        if info is None:
            info = self.programs[fd] = bpf_info.prog_info(fd)
        return info

    def map_id(self, fd: int) -> int:
        found = self.maps.get(fd)
        if found is None:
            found = self.maps[fd] = bpf_info.map_id(fd)
        return found

    def pinned_id(self, path: str) -> int:
        st = os.stat(path)
        stamp = (st.st_dev, st.st_ino, st.st_ctime_ns)
        known = self.pins.get(path)
        if known is not None and known[:3] == stamp:
            return known[3]
        obj_id = bpf_info.pinned_id(path)
        again = os.stat(path)
        if (again.st_dev, again.st_ino, again.st_ctime_ns) == stamp:  # not replaced while it was read
            self.pins[path] = (*stamp, obj_id)
        return obj_id


def attached_ids(key: InterfaceKey) -> dict[str, int | None]:
    """{"xdp": prog id or None, "tc": ..., "tc_egress": ...} on the interface now (calling
    thread's namespace, which must be the key's)."""
    return {"xdp": bpf_info.xdp_prog_id(key.ifindex),
            "tc": bpf_info.tc_prog_id(key.ifindex, attach_mod.TC_HANDLE, attach_mod.TC_PRIO),
            "tc_egress": bpf_info.tc_prog_id(key.ifindex, attach_mod.TC_HANDLE, attach_mod.TC_PRIO,
                                             bpf_info.BPF_TC_EGRESS)}


def _ids(ids: Iterable[int]) -> str:
    """"5-9,12": ids as ranges (a program's maps are usually created in a row)."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs) or "none"


def _hook_problems(hook: str, attached: int | None, loaded: bpf_info.ProgInfo) -> list[str]:
    if attached is None:
        return [f"no {hook} program is attached (this daemon's is id {loaded.id})"]
    if attached == loaded.id:
        return []
    try:
        info = bpf_info.prog_info_by_id(attached)
        what = f"id {attached}, {info.name!r}, using maps {_ids(info.map_ids)}"
    except OSError:
        what = f"id {attached}"
    return [f"the {hook} program attached is not this daemon's ({what}); this daemon's is id {loaded.id}, "
            f"using maps {_ids(loaded.map_ids)}"]


def _sharing_problems(used: frozenset[int], ours: set[int], memo: Memo) -> list[str]:
    """Programs other than ours that use our maps. A program just replaced on a hook may still be
    on its way out (TC frees the old filter's program after an RCU grace period): each gets
    SHARING_GRACE seconds to go before it counts."""
    deadline = time.monotonic() + SHARING_GRACE
    while True:
        users = bpf_info.users_of(used, ours, memo.others)
        if not users or time.monotonic() >= deadline:
            break
        time.sleep(SHARING_POLL)
    return [f"program id {prog_id} ({info.name!r}) also uses maps {_ids(info.map_ids & used)} of this "
            "daemon (another daemon or tool shares them, or holds them pinned)"
            for prog_id, info in sorted(users.items())]


def _pin_problems(pin_dir: Path, programs: dict[str, int], maps: frozenset[int], memo: Memo) -> list[str]:
    """Every object pinned in the directory must be in use: a program pin the program attached
    there (`programs`: pin name -> id), any other pin one of the maps the programs use."""
    problems = []
    for name, obj_id in memo.pinned_ids(pin_dir).items():
        if isinstance(obj_id, OSError):
            problems.append(f"{pin_dir / name}: cannot read it ({obj_id.strerror})")
            continue
        want = programs.get(name)
        if want is not None and obj_id != want:
            problems.append(f"{pin_dir / name} is program id {obj_id}, the one attached is {want}")
        elif want is None and name not in (XDP_PIN, TC_PIN, TC_EGRESS_PIN) and obj_id not in maps:
            problems.append(f"{pin_dir / name} is map id {obj_id}, which the attached programs do not use "
                            f"(they use {_ids(maps)})")
    return problems


def check(key: InterfaceKey, fns: dict[str, Any], map_fds: dict[str, int], pin_dir: Path | None,
          stages: Iterable[Any] = (), memo: Memo | None = None) -> list[str]:
    """The problems (empty: none) of the data plane of `key`, whose loaded programs are `fns`
    ({"xdp": fn, "tc": fn, "tc_egress": fn}, BCC functions, attached to their hooks) and
    `stages` (reached by tail call, attached nowhere), and whose maps, the ones it writes and
    reads, are `map_fds` (name -> fd). `memo`: what earlier checks of these very fds learnt
    (module docstring); without one, everything is read from the kernel."""
    memo = memo if memo is not None else Memo()
    loaded = {hook: memo.prog_info(fn.fd) for hook, fn in fns.items()}
    tail_called = [memo.prog_info(fn.fd) for fn in stages]
    attached = attached_ids(key)
    problems = [p for hook in fns for p in _hook_problems(hook, attached[hook], loaded[hook])]
    everything = [*loaded.values(), *tail_called]
    used: frozenset[int] = frozenset().union(*(info.map_ids for info in everything))
    problems += _sharing_problems(used, {info.id for info in everything}, memo)
    for name, fd in sorted(map_fds.items()):
        map_id = memo.map_id(fd)
        if map_id not in used:
            problems.append(f"map {name!r} (id {map_id}) is written but no program of this daemon "
                            f"uses it (they use {_ids(used)})")
    if pin_dir is not None:
        pins = {XDP_PIN: attached["xdp"], TC_PIN: attached["tc"], TC_EGRESS_PIN: attached["tc_egress"]}
        problems += _pin_problems(pin_dir, {k: v for k, v in pins.items() if v is not None}, used, memo)
    return problems
