"""Measures what issue 5 asks of the ACL: compile and write time, single-rule update latency,
and the per-packet lookup cost as the rule count grows.

    python -m dataplane.perf_check                      # everything (root: loads the data plane)
    python -m dataplane.perf_check --compile-only       # compile times only (no root)
    python -m dataplane.perf_check --sizes 1,1000,100000 --updates 200

Rules are the issue's workload: each has a distinct random /24 source, protocol TCP or UDP and
a single destination port. Lookup cost is the kernel's own ns/packet over BPF_PROG_TEST_RUN
repetitions of a 64-byte UDP frame; "hit" comes from the source of one of the rules, "miss"
from an address no rule covers. Times are wall and CPU seconds: on a shared machine the CPU time
says what the work cost. Run by hand to compare before and after (a test keeps it working).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from dataplane import abi
from dataplane.acl import acl_capacity, acl_rule
from dataplane.kernel.build_settings import Capacities
from dataplane.match.adapter import MatchCapacity, MatchRule, compile_rules, empty, to_columns

UDP = 17
TCP = 6
FRAME_LEN = 64  # without the FCS, as BPF_PROG_TEST_RUN sees it
MISS_SRC = "100.64.0.1"  # the generator never draws from 100/8
TUNNEL_PORTS = {abi.define("TG_VXLAN_PORT_DEFAULT"), abi.define("TG_GENEVE_PORT_DEFAULT")}  # not plain UDP


def workload(count: int, seed: int = 5) -> list[MatchRule]:
    """`count` rules: distinct random unicast /24 sources (none in 0/8, 100/8, 127/8), TCP or UDP,
    one destination port each, priorities in order."""
    rnd = random.Random(seed)
    nets: set[int] = set()
    while len(nets) < count:
        net = rnd.randrange(1 << 24) << 8
        if (net >> 24) in (0, 100, 127) or net >> 28 >= 14:
            continue
        nets.add(net)
    rules = []
    for i, net in enumerate(sorted(nets, key=lambda _: rnd.random())):
        port = rnd.randrange(1, 65536)
        while port in TUNNEL_PORTS:
            port = rnd.randrange(1, 65536)
        rules.append(acl_rule(i + 1, i + 1, rnd.choice(["allow", "deny"]),
                              src=ipaddress.IPv4Network((net, 24)), proto=rnd.choice([TCP, UDP]),
                              dport=(port, port)))
    return rules


def capacity() -> MatchCapacity:
    return acl_capacity(Capacities())


def udp_frame(src: str, dst: str, dport: int) -> bytes:
    from scapy.layers.inet import IP
    from scapy.layers.inet import UDP as ScapyUDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    pkt = Ether(src="02:00:00:00:00:01", dst="02:aa:00:00:00:01") / IP(src=src, dst=dst) / \
        ScapyUDP(sport=40000, dport=dport)
    return bytes(pkt / Raw(b"\0" * (FRAME_LEN - len(pkt))))


class Took(float):
    """Wall seconds, with the process's CPU seconds (user + system) as `cpu`: on a shared
    machine, CPU time says what the work cost when wall time includes waiting for a core."""

    cpu: float

    def __str__(self) -> str:
        return f"{self:6.3f} s (cpu {self.cpu:6.3f})"


def timed(fn: Callable[[], Any]) -> tuple[Took, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    took = Took(time.perf_counter() - wall)
    took.cpu = time.process_time() - cpu
    return took, result


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def check_compile(sizes: Sequence[int]) -> None:
    for n in sizes:
        rules = workload(n)
        seconds, compiled = timed(lambda: compile_rules(rules, empty(), capacity()))  # noqa: B023
        bank = compiled.bank
        print(f"compile {n:>7} rules: {seconds}  ({bank.count if bank else 0} subtables, "
              f"{len(bank.keys) if bank else 0} buckets)")


def _probe(rules: Sequence[MatchRule]) -> MatchRule:
    """A UDP allow rule from the middle (allowed: no policy event is sent for it)."""
    ordered = [*rules[len(rules) // 2:], *rules[: len(rules) // 2]]
    allowed = [r for r in ordered if r.proto == UDP and r.payload[0].name == "ALLOW"]  # type: ignore[index]
    return allowed[0] if allowed else ordered[0]


def lookup_ns(dp: Any, frame: bytes, repeat: int, rounds: int = 5) -> float:
    dp.run_xdp(frame, repeat=min(repeat, 10_000))  # warm up
    return statistics.median(dp.run_xdp(frame, repeat=repeat).duration_ns for _ in range(rounds))


def check_dataplane(dp: Any, sizes: Sequence[int], repeat: int) -> None:
    for n in sizes:
        rules = workload(n)
        dp.acl.replace([])
        compile_s, compiled = timed(lambda: dp.acl.compile(rules))  # noqa: B023
        write_s, _ = timed(lambda: dp.acl.apply(compiled))  # noqa: B023
        probe = _probe(rules)
        hit_src = str(probe.src.network_address + 7)  # type: ignore[union-attr]
        hit = udp_frame(hit_src, "192.0.2.9", probe.dport[0])  # type: ignore[index]
        miss = udp_frame(MISS_SRC, "192.0.2.9", 9)
        buckets = len(dp.acl.current.keys)
        print(f"apply {n:>7} rules: compile {compile_s} + write {write_s} ({buckets} buckets) = "
              f"{compile_s + write_s:6.3f} s (cpu {compile_s.cpu + write_s.cpu:6.3f}); "
              f"lookup hit {lookup_ns(dp, hit, repeat):4.0f} ns, miss {lookup_ns(dp, miss, repeat):4.0f} ns")
        clear_s, _ = timed(lambda: dp.acl.replace([]))
        print(f"clear {n:>7} rules: {clear_s}")


def check_edits(dp: Any, base_count: int, updates: int) -> None:
    """One rule added to `base_count` and removed again, `updates` times, through the table's
    edit calls (what AddAclRule/DeleteAclRule reach once the control path speaks columns)."""
    base = workload(base_count)
    extra = workload(base_count + updates, seed=11)[base_count:]
    dp.acl.replace([])
    dp.acl.replace(base)
    adds: list[Took] = []
    removes: list[Took] = []
    for i, rule in enumerate(extra):
        added = to_columns([acl_rule(10_000_000 + i, rule.priority, "deny", src=rule.src, proto=rule.proto,
                                     dport=rule.dport)])
        seconds, _ = timed(lambda: dp.acl.add(added))  # noqa: B023
        adds.append(seconds)
        seconds, _ = timed(lambda: dp.acl.delete([10_000_000 + i]))  # noqa: B023
        removes.append(seconds)
    for what, values in (("add", adds), ("remove", removes)):
        print(f"edit on {base_count} rules, {what} one rule: p50 {pct(values, 0.5) * 1e3:6.2f} ms, "
              f"p99 {pct(values, 0.99) * 1e3:6.2f} ms, max {max(values) * 1e3:6.2f} ms ({len(values)} runs)")
    dp.acl.replace([])


def check_updates(dp: Any, base_count: int, updates: int) -> None:
    """One rule added to `base_count` and removed again, `updates` times, as whole rule sets
    (the compile finds the difference): with the same rule objects each time, and with every
    rule rebuilt as a new equal object (as the daemon does, which translates its policy model
    anew on every change; the rebuilding is not timed)."""
    base = workload(base_count)
    extra = workload(base_count + updates, seed=11)[base_count:]
    for rebuilt in (False, True):
        dp.acl.replace([])
        dp.acl.replace(base)
        adds: list[Took] = []
        removes: list[Took] = []
        for i, rule in enumerate(extra):
            added = acl_rule(10_000_000 + i, rule.priority, "deny", src=rule.src, proto=rule.proto,
                             dport=rule.dport)
            rules = [*base, added]
            rules = [dataclasses.replace(r) for r in rules] if rebuilt else rules
            seconds, _ = timed(lambda: dp.acl.replace(rules))  # noqa: B023
            adds.append(seconds)
            rules = [dataclasses.replace(r) for r in base] if rebuilt else base
            seconds, _ = timed(lambda: dp.acl.replace(rules))  # noqa: B023
            removes.append(seconds)
        for what, values in (("add", adds), ("remove", removes)):
            cpu = [v.cpu for v in values]
            print(f"update on {base_count} rules{' (rebuilt)' if rebuilt else ''}, {what} one rule: "
                  f"p50 {pct(values, 0.5) * 1e3:6.2f} ms, p99 {pct(values, 0.99) * 1e3:6.2f} ms, "
                  f"max {max(values) * 1e3:6.2f} ms ({len(values)} runs); "
                  f"cpu p50 {pct(cpu, 0.5) * 1e3:6.2f} ms, p99 {pct(cpu, 0.99) * 1e3:6.2f} ms")
    dp.acl.replace([])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=1_000_000, help="BPF_PROG_TEST_RUN repetitions")
    parser.add_argument("--update-base", type=int, default=10_000)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--compile-only", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.compile_only:
        check_compile(sizes)
        return
    from dataplane.kernel.interface import Dataplane
    from dataplane.map_config import RuntimeConfig

    dp = Dataplane.load()
    dp.configure(RuntimeConfig(), if_mac=bytes.fromhex("02aa00000001"))
    try:
        check_dataplane(dp, sizes, args.repeat)
        if args.updates:
            check_edits(dp, args.update_base, args.updates)
            check_updates(dp, args.update_base, args.updates)
    finally:
        dp.close()


if __name__ == "__main__":
    main()
