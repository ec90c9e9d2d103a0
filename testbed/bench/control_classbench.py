"""ClassBench rule sets through the daemon (part of benchmark 4, testbed.bench.control_plane).

Each ClassBench set found (testbed.classbench.sets: the shipped acl1, fw1 and ipc1 and any
other set put beside them; file order is judging order, actions alternate deny/allow, row 0
deny) at each `classbench_sizes` goes to a fresh daemon attached natively to a
veth: ApplyPolicy with the set as AclRule messages onto an empty policy, timed at the client,
`runs` times; beside it, in fresh namespaces and the same run, `nft -f`, `iptables-restore` and
`iptables-legacy-restore` of the same rules (testbed.bench.column_rules). After the set: the
daemon's VmRSS and VmHWM, and the memory of the BPF maps it holds (the sum of their memlock in
/proc/PID/fdinfo: what the kernel charges for them, preallocated capacity included).

A daemon whose RSS passes RSS_GUARD_MIB, or whose apply outlasts APPLY_GUARD_S, is killed and
the set reported as not applied, with the reason: a classifier whose memory grows with the cross
product of the fields would otherwise take the machine's. A set the daemon refuses
(INVALID_ARGUMENT, e.g. a capacity) is reported with the daemon's message.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import grpc

from control.rpc.api import pb2, pb2_grpc
from dataplane.kernel.memory import map_fdinfo
from testbed import classbench
from testbed.bench import column_rules
from testbed.bench.common import Profile, Section
from testbed.bench.control_rig import CAPACITIES, IFACE, PEER, channel, restore_loaders, rss, timed
from testbed.bench.engines import NFT_TABLE
from testbed.bench.load import PREFIX
from testbed.daemon import DaemonProcess
from testbed.netns import Namespace, veth_pair

log = logging.getLogger(__name__)

RSS_GUARD_MIB = 4096
APPLY_GUARD_S = 300.0
GUARD_POLL_S = 0.1
TIDEGATE = "Tidegate ApplyPolicy (gRPC)"


@dataclass
class SetResult:
    seed: str
    size: int  # the file's nominal size (ClassBench drops duplicates: `rules` is what it holds)
    rules: int
    apply: dict[str, list[float]] = field(default_factory=dict)  # how -> seconds per run
    refused: str | None = None  # why Tidegate did not apply it
    memory: dict[str, float] = field(default_factory=dict)  # VmRSS, VmHWM, maps (MiB)


@dataclass
class Results:
    sets: list[SetResult] = field(default_factory=list)


def map_memory_mib(pid: int) -> float:
    """memlock of the BPF maps the process holds, each map once, in MiB."""
    seen = {int(info["map_id"]): int(info.get("memlock", 0)) for info in map_fdinfo(pid).values()}
    return sum(seen.values()) / (1 << 20)


class Guard:
    """Kills the daemon when its RSS passes the limit or the apply outlasts its time."""

    def __init__(self, d: DaemonProcess) -> None:
        self.d = d
        self.reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="classbench-guard", daemon=True)

    def __enter__(self) -> Guard:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        assert self.d.proc is not None
        pid = self.d.proc.pid
        while not self._stop.wait(GUARD_POLL_S):
            try:
                now = rss(pid)["VmRSS"]
            except (OSError, KeyError):
                return
            took = time.monotonic() - self._started
            if now > RSS_GUARD_MIB or took > APPLY_GUARD_S:
                self.reason = (
                    f"stopped after {took:.0f} s with the daemon at {now:,.0f} MiB RSS (limits: "
                    f"{RSS_GUARD_MIB:,} MiB, {APPLY_GUARD_S:.0f} s)"
                )
                self.d.proc.kill()
                return


def _tidegate(result: SetResult, messages: list[Any], runs: int) -> None:
    with ExitStack() as stack:
        ns = stack.enter_context(Namespace(prefix=f"{PREFIX}cb"))
        veth_pair(ns, IFACE, ns, PEER)
        d = DaemonProcess(ns, capacities=CAPACITIES)
        stack.callback(d.close)
        d.start()
        d.interfaces.AttachInterface(
            pb2.AttachInterfaceRequest(interface=pb2.Interface(name=IFACE, mode=pb2.XDP_MODE_NATIVE)),
            timeout=60,
        )
        ch = channel(d)
        stack.callback(ch.close)
        policy = pb2_grpc.PolicyServiceStub(ch)
        request = pb2.ApplyPolicyRequest(policy=pb2.Policy(acl=messages))
        samples: list[float] = []
        for _ in range(runs):
            policy.ApplyPolicy(pb2.ApplyPolicyRequest(), timeout=APPLY_GUARD_S)
            with Guard(d) as guard:
                try:
                    samples.append(timed(partial(policy.ApplyPolicy, request, timeout=APPLY_GUARD_S)))
                except grpc.RpcError as exc:
                    result.refused = guard.reason or f"{exc.code().name}: {(exc.details() or '')[:300]}"
                    return
        result.apply[TIDEGATE] = samples
        assert d.proc is not None
        result.memory = {**rss(d.proc.pid), "maps": map_memory_mib(d.proc.pid)}


def _baselines(result: SetResult, cols: Any, runs: int) -> None:
    texts = {"nft -f": column_rules.nft_chain(cols, NFT_TABLE)}
    ipt = column_rules.iptables_restore(cols)
    for label, cmd in restore_loaders(ipv6=6 in column_rules.families(cols)):
        text = texts.get(label, ipt)
        samples = []
        for _ in range(runs):
            with Namespace(prefix=f"{PREFIX}cb") as ns:
                samples.append(timed(partial(ns.run, cmd, input=text, timeout=600)))
        result.apply[label] = samples


def run(profile: Profile, section: Section) -> Results:
    out = Results()
    found = [(seed, size) for seed, size in classbench.sets() if size in profile.classbench_sizes]
    if not found:
        section.failures.append(
            f"ClassBench sets: none found in {classbench.DEFAULT_DIR} (set TIDEGATE_CLASSBENCH_DIR)"
        )
        return out
    for seed, size in found:
        cols = classbench.load(seed, size)
        result = SetResult(seed, size, len(cols))
        out.sets.append(result)
        try:
            _tidegate(result, column_rules.messages(cols), profile.control_runs)
        except Exception as exc:  # noqa: BLE001 - one set's failure is reported, the others run
            log.exception("ClassBench %s_%d", seed, size)
            result.refused = result.refused or f"{type(exc).__name__}: {exc}"
        _baselines(result, cols, profile.control_runs)
    return out
