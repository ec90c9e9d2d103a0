"""`tidegate import` judged by the kernel: two identical beds, the original netfilter policy in one,
Tidegate's imported policy plus the netfilter rules it keeps in the other.

Each bed is three namespaces:

    sender S (s0) ---veth--- (t0) target T (t1) ---veth--- (r0) receiver R
    10.0.0.2/24, fd00::2/64  10.0.0.1/24, 10.0.1.1/32       10.9.0.2/30, 10.200.7.7/32
                             fd00::1/64, fd00::2:1/128      (T routes 10.200.0.0/16 and
                                                             fd00:200::/64 to R)

In the first ("orig") the rules are loaded with the real tool (iptables-nft-restore,
iptables-legacy-restore or nft -f) and saved with the real tool; the saved output goes through
`tidegate import --apply` (the CLI, talking to a real daemon attached to the second bed's t0,
its facts read in that namespace) and the rules it keeps are loaded into the second ("tg") with
the same tool. `run_case` then sends the same probes (testbed.probes) through both; a test may
also open real sessions between S, T and R in both (tests/integration/testbed/test_migrate_sessions.py).
S sends probes from any address with AF_PACKET, and has addresses of its own for sessions; so
has R (IPv4), behind T when T forwards.
"""

from __future__ import annotations

import json
import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from control.cli.migration import read_ruleset
from control.rpc.api import pb2
from testbed.daemon import RPC_TIMEOUT, DaemonProcess
from testbed.netns import Namespace, add_address, add_neighbour, add_route, link_mac, sysctl, veth_pair
from testbed.probes import Pools, Probe, boundary_probes, random_probes, send_and_observe

LOCAL4, LOCAL4B, LOCAL6, LOCAL6B = "10.0.0.1", "10.0.1.1", "fd00::1", "fd00::2:1"
GATEWAY4, GATEWAY6 = "10.0.0.2", "fd00::2"          # "S", for the target's own traffic
NEXT4, NEXT6 = "10.9.0.2", "fd09::2"                # "R", the next hop of the routed prefixes
INSIDE4 = "10.200.7.7"                              # R's address in the routed prefix
POOLS = Pools(src={4: ["198.18.4.20", "198.18.200.1", "192.0.2.77", "192.0.2.200", "203.0.113.70"],
                   6: ["2001:db8:1:4::20", "2001:db8:1::77", "2001:db8:2::1", "2001:db8:9::1"]},
              dst={4: [LOCAL4, LOCAL4B, "10.200.5.9", "10.200.1.1", "10.0.0.255"],
                   6: [LOCAL6, LOCAL6B, "fd00:200::9", "fd00:200::5:7", "fd00:200::1:1"]})
RANDOM_PROBES = 300


class NativeXdpRefused(RuntimeError):
    """This kernel does not attach XDP to a veth in native mode: no bed."""


@dataclass
class Side:
    s: Namespace
    t: Namespace
    r: Namespace
    t_mac: str = ""
    s_mac: str = ""


@dataclass
class Bed:
    orig: Side
    tg: Side
    daemon: DaemonProcess
    workdir: Path
    runs: list[int] = field(default_factory=lambda: [0])


def _side(stack: list[Namespace]) -> Side:
    s, t, r = (Namespace(prefix=p).create() for p in ("tgims", "tgimt", "tgimr"))
    stack += [s, t, r]
    veth_pair(s, "s0", t, "t0")
    veth_pair(t, "t1", r, "r0")
    sysctl(r, "net/ipv6/conf/r0/disable_ipv6", 1)
    for key in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter",
                "net/ipv4/conf/t0/rp_filter", "net.ipv4.conf.all.accept_redirects",
                "net.ipv6.conf.all.accept_redirects", "net.ipv6.conf.all.accept_ra",
                "net/ipv6/conf/t0/accept_ra"):
        sysctl(t, key, 0)
    for cidr in (f"{LOCAL4}/24", f"{LOCAL4B}/32", f"{LOCAL6}/64", f"{LOCAL6B}/128"):
        add_address(t, "t0", cidr)
    add_address(t, "t1", "10.9.0.1/30")
    add_address(t, "t1", "fd09::1/64")
    add_address(s, "s0", f"{GATEWAY4}/24")
    add_address(s, "s0", f"{GATEWAY6}/64")
    add_address(r, "r0", f"{NEXT4}/30")
    add_address(r, "r0", f"{INSIDE4}/32")
    r_mac, s_mac, t_mac = link_mac(r, "r0"), link_mac(s, "s0"), link_mac(t, "t0")
    add_neighbour(r, "r0", "10.9.0.1", link_mac(t, "t1"))
    add_route(r, "default", via="10.9.0.1", dev="r0")
    add_route(s, "10.200.0.0/16", via=LOCAL4, dev="s0")
    add_neighbour(t, "t1", NEXT4, r_mac)
    add_neighbour(t, "t1", NEXT6, r_mac)
    add_neighbour(t, "t0", GATEWAY4, s_mac)
    add_neighbour(t, "t0", GATEWAY6, s_mac)
    add_neighbour(s, "s0", LOCAL4, t_mac)  # no neighbour discovery through the rules under test
    add_neighbour(s, "s0", LOCAL6, t_mac)
    add_route(t, "10.200.0.0/16", via=NEXT4, dev="t1")
    add_route(t, "fd00:200::/64", via=NEXT6, dev="t1")
    add_route(t, "default", via=GATEWAY4, dev="t0")
    add_route(t, "default", via=GATEWAY6, dev="t0")
    return Side(s, t, r, t_mac, s_mac)


@contextmanager
def build(workdir: Path) -> Iterator[Bed]:
    """Both beds and a daemon attached to the second's t0 (no tunnels: no tunnel ports either);
    everything removed on the way out. NativeXdpRefused when the kernel refuses the attach."""
    made: list[Namespace] = []
    try:
        orig, tg = _side(made), _side(made)
        with DaemonProcess(tg.t, detach_on_exit=True) as daemon:
            try:
                daemon.interfaces.AttachInterface(pb2.AttachInterfaceRequest(
                    interface=pb2.Interface(name="t0", mode=pb2.XDP_MODE_NATIVE)), timeout=RPC_TIMEOUT)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    raise NativeXdpRefused(str(exc.details())) from None
                raise
            (workdir / "settings.yaml").write_text("settings: {decap: false}\n")
            got = daemon.cli("policy", "apply", "-f", str(workdir / "settings.yaml"))
            assert got.returncode == 0, got.stderr
            yield Bed(orig, tg, daemon, workdir)
    finally:
        for ns in reversed(made):
            ns.delete()


# --- netfilter in a namespace ------------------------------------------------------------------------

RESTORE = {("nft", 4): "iptables-nft-restore", ("nft", 6): "ip6tables-nft-restore",
           ("legacy", 4): "iptables-legacy-restore", ("legacy", 6): "ip6tables-legacy-restore"}
SAVE = {("nft", 4): "iptables-nft-save", ("nft", 6): "ip6tables-nft-save",
        ("legacy", 4): "iptables-legacy-save", ("legacy", 6): "ip6tables-legacy-save"}
EMPTY = {"filter": ("INPUT", "FORWARD", "OUTPUT"),
         "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
         "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
         "raw": ("PREROUTING", "OUTPUT")}


def run(ns: Namespace, cmd: list[str], text: str | None = None) -> str:
    done = ns.run(cmd, check=False, input=text)
    assert done.returncode == 0, f"{' '.join(cmd)} in {ns.name}: {done.stderr}\n{(text or '')[:3000]}"
    return done.stdout


def reset(side: Side) -> None:
    """No rules in either backend, no sets, no connections: as a fresh namespace."""
    t = side.t
    run(t, ["nft", "flush", "ruleset"])
    for family in (4, 6):
        saved = run(t, [SAVE[("legacy", family)]])
        tables = [line[1:] for line in saved.splitlines() if line.startswith("*")]
        if tables:
            body = "".join(f"*{tb}\n" + "".join(f":{c} ACCEPT [0:0]\n" for c in EMPTY.get(tb, ()))
                           + "COMMIT\n" for tb in tables)
            run(t, [RESTORE[("legacy", family)]], body)
    run(t, ["ipset", "destroy"])
    from pyroute2 import Conntrack

    with t.enter():
        ct = Conntrack()
    try:
        ct.flush()
    finally:
        ct.close()


def forwarding(side: Side, on: bool) -> None:
    sysctl(side.t, "net.ipv4.ip_forward", int(on))
    sysctl(side.t, "net.ipv6.conf.all.forwarding", int(on))


@dataclass
class Case:
    name: str
    backend: str  # "nft" (iptables-nft), "legacy" (iptables-legacy), "native" (nft -f)
    v4: str = ""
    v6: str = ""
    nft: str = ""
    ipset: str = ""
    forwarding: bool = False
    live: bool = False  # `import --live` in the original's namespace instead of saved files
    # flows the target opens itself: (family, src, sport, dst, dport)
    own_traffic: list[tuple[int, str, int, str, int]] = field(default_factory=list)
    extra: list[Probe] = field(default_factory=list)


def load(side: Side, case: Case, texts: dict[str, str]) -> None:
    if texts.get("ipset"):
        run(side.t, ["ipset", "restore"], texts["ipset"])
    if case.backend == "native":
        if texts.get("nft", "").lstrip().startswith("{"):
            run(side.t, ["nft", "-j", "-f", "-"], texts["nft"])
        else:
            run(side.t, ["nft", "-f", "-"], texts["nft"])
        return
    for family, key in ((4, "v4"), (6, "v6")):
        if texts.get(key):
            run(side.t, [RESTORE[(case.backend, family)]], texts[key])


def save(side: Side, case: Case) -> dict[str, str]:
    out = {}
    if case.ipset:
        out["ipset"] = run(side.t, ["ipset", "save"])
    if case.backend == "native":
        out["nft"] = run(side.t, ["nft", "-j", "list", "ruleset"])
    else:
        for family, key in ((4, "v4"), (6, "v6")):
            if getattr(case, key):
                out[key] = run(side.t, [SAVE[(case.backend, family)]])
    return out


def own_traffic(side: Side, case: Case) -> None:
    """The target opens a few flows itself (replies to them are among the probes)."""
    for family, src, sport, dst, dport in case.own_traffic:
        with side.t.enter():
            sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
        with sock:
            sock.bind((src, sport))
            sock.sendto(b"hello", (dst, dport))


# --- the comparison ------------------------------------------------------------------------------------

@dataclass
class Outcome:
    report: dict[str, object]
    probes: list[Probe]
    orig: list[str]
    tg: list[str]
    stats: dict[str, object]

    @property
    def differences(self) -> list[str]:
        return [f"{p}: original {a}, imported {b}" for p, a, b in zip(self.probes, self.orig, self.tg,
                                                                        strict=True) if a != b]

    def count(self, status: str) -> int:
        return int(self.report["counts"][status])  # type: ignore[index]


def imported(bed: Bed, case: Case) -> tuple[dict[str, object], dict[str, str]]:
    """Both beds reset, the rules loaded into the original, imported into Tidegate and the kept
    ones loaded into the second bed: (the import's JSON answer, what the original saved)."""
    for side in (bed.orig, bed.tg):
        reset(side)
        forwarding(side, case.forwarding)
    texts = {"v4": case.v4, "v6": case.v6, "nft": case.nft, "ipset": case.ipset}
    load(bed.orig, case, texts)
    saved = save(bed.orig, case)
    where = bed.workdir / case.name
    where.mkdir(parents=True, exist_ok=True)
    args = ["import", "--interface", "t0", "--apply", "--kept-dir", str(where / "kept")]
    if case.live:
        args += ["--live", "--netns", bed.orig.t.name]  # its facts are the other bed's too
    else:
        args += ["--netns", bed.tg.t.name]
        flags = (("v4", "--iptables"), ("v6", "--ip6tables"), ("nft", "--nft"), ("ipset", "--ipset"))
        for key, flag in flags:
            if key in saved:
                (where / key).write_text(saved[key])
                args += [flag, str(where / key)]
    got = bed.daemon.cli(*args, as_json=True)
    assert got.returncode == 0, got.stderr
    result = json.loads(got.stdout)
    assert result["dry_run"]["dry_run"] and not result["applied"]["dry_run"]
    assert result["applied"]["generation"] >= result["dry_run"]["generation"]  # same policy: no change
    kept_dir = where / "kept"
    suffix = "-legacy" if case.live and case.backend == "legacy" else ""
    kept = {"v4": _read(kept_dir / f"kept{suffix}.v4"), "v6": _read(kept_dir / f"kept{suffix}.v6"),
            "nft": _read(kept_dir / "kept.json"), "ipset": saved.get("ipset", "")}
    load(bed.tg, case, kept)
    return result, saved


def run_case(bed: Bed, case: Case, seed: int = 1) -> Outcome:
    result, saved = imported(bed, case)
    names = {"v4": "iptables", "v6": "ip6tables", "nft": "nft", "ipset": "ipset"}
    ruleset = read_ruleset({names[k]: text for k, text in saved.items()})
    rng = random.Random(seed)
    probes = boundary_probes(ruleset, POOLS, rng) + random_probes(POOLS, rng, RANDOM_PROBES) + case.extra
    seen = {}
    for name, side in (("orig", bed.orig), ("tg", bed.tg)):
        own_traffic(side, case)
        bed.runs[0] += 1
        seen[name] = send_and_observe(side.s, "s0", side.s_mac, side.t_mac, side.t, side.r, "r0", probes,
                                      bed.runs[0])
    stats = json.loads(bed.daemon.cli("stats", as_json=True).stdout)
    return Outcome(result["report"], probes, seen["orig"], seen["tg"], stats)  # type: ignore[arg-type]


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def check(outcome: Outcome, min_moved: int = 0) -> None:
    assert not outcome.differences, "\n".join(outcome.differences[:40])
    fates = set(outcome.orig)
    assert {"none"} < fates | {"none"} and "none" in fates, f"the probes do not tell anything apart: {fates}"
    moved = outcome.count("moved") + outcome.count("mirrored")
    assert moved >= min_moved, json.dumps(outcome.report["counts"])
