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
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dataplane.kernel import attach as attach_mod
from dataplane.kernel import bpf_info
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


def _sharing_problems(used: frozenset[int], ours: set[int]) -> list[str]:
    """Programs other than ours that use our maps. A program just replaced on a hook may still be
    on its way out (TC frees the old filter's program after an RCU grace period): each gets
    SHARING_GRACE seconds to go before it counts."""
    deadline = time.monotonic() + SHARING_GRACE
    while True:
        users = bpf_info.users_of(used, ours)
        if not users or time.monotonic() >= deadline:
            break
        time.sleep(SHARING_POLL)
    return [f"program id {prog_id} ({info.name!r}) also uses maps {_ids(info.map_ids & used)} of this "
            "daemon (another daemon or tool shares them, or holds them pinned)"
            for prog_id, info in sorted(users.items())]


def _pin_problems(pin_dir: Path, programs: dict[str, int], maps: frozenset[int]) -> list[str]:
    """Every object pinned in the directory must be in use: a program pin the program attached
    there (`programs`: pin name -> id), any other pin one of the maps the programs use."""
    problems = []
    for path in sorted(pin_dir.iterdir()):
        if path.name == OWNER or path.name.startswith(OWNER_TMP):
            continue
        try:
            obj_id = bpf_info.pinned_id(path)
        except OSError as exc:
            problems.append(f"{path}: cannot read it ({exc.strerror})")
            continue
        want = programs.get(path.name)
        if want is not None and obj_id != want:
            problems.append(f"{path} is program id {obj_id}, the one attached is {want}")
        elif want is None and path.name not in (XDP_PIN, TC_PIN, TC_EGRESS_PIN) and obj_id not in maps:
            problems.append(f"{path} is map id {obj_id}, which the attached programs do not use "
                            f"(they use {_ids(maps)})")
    return problems


def check(key: InterfaceKey, fns: dict[str, Any], map_fds: dict[str, int], pin_dir: Path | None,
          stages: Iterable[Any] = ()) -> list[str]:
    """The problems (empty: none) of the data plane of `key`, whose loaded programs are `fns`
    ({"xdp": fn, "tc": fn, "tc_egress": fn}, BCC functions, attached to their hooks) and
    `stages` (reached by tail call, attached nowhere), and whose maps, the ones it writes and
    reads, are `map_fds` (name -> fd)."""
    loaded = {hook: bpf_info.prog_info(fn.fd) for hook, fn in fns.items()}
    tail_called = [bpf_info.prog_info(fn.fd) for fn in stages]
    attached = attached_ids(key)
    problems = [p for hook in fns for p in _hook_problems(hook, attached[hook], loaded[hook])]
    everything = [*loaded.values(), *tail_called]
    used: frozenset[int] = frozenset().union(*(info.map_ids for info in everything))
    problems += _sharing_problems(used, {info.id for info in everything})
    for name, fd in sorted(map_fds.items()):
        map_id = bpf_info.map_id(fd)
        if map_id not in used:
            problems.append(f"map {name!r} (id {map_id}) is written but no program of this daemon "
                            f"uses it (they use {_ids(used)})")
    if pin_dir is not None:
        pins = {XDP_PIN: attached["xdp"], TC_PIN: attached["tc"], TC_EGRESS_PIN: attached["tc_egress"]}
        problems += _pin_problems(pin_dir, {k: v for k, v in pins.items() if v is not None}, used)
    return problems
