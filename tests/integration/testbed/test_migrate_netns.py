"""`tidegate import` judged by the kernel: the original netfilter policy against Tidegate's
imported policy plus the netfilter rules it keeps, probe by probe.

Two identical beds, each three namespaces:

    sender S (s0) ---veth--- (t0) target T (t1) ---veth--- (r0) receiver R
                             10.0.0.1/24, 10.0.1.1/32       routes 10.200.0.0/16 and
                             fd00::1/64, fd00::2:1/128      fd00:200::/64 to R

In the first ("orig") the rules are loaded with the real tool (iptables-nft-restore,
iptables-legacy-restore or nft -f) and saved with the real tool; the saved output goes through
`tidegate import --apply` (the CLI, talking to a real daemon attached to the second bed's t0,
its facts read in that namespace) and the rules it keeps are loaded into the second ("tg") with
the same tool. Then the same probes (every rule's boundaries, random ones; TCP, UDP, SCTP,
ICMP, GRE; IPv4 and IPv6) cross both, and each must end the same way: delivered to T,
forwarded to R, or neither.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from control.cli.migration import read_ruleset
from control.rpc.api import pb2
from testbed import netfilter_gen
from testbed.daemon import RPC_TIMEOUT, DaemonProcess
from testbed.netns import Namespace, add_address, add_neighbour, add_route, link_mac, sysctl, veth_pair
from testbed.probes import Pools, Probe, boundary_probes, random_probes, send_and_observe

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(900)]

LOCAL4, LOCAL4B, LOCAL6, LOCAL6B = "10.0.0.1", "10.0.1.1", "fd00::1", "fd00::2:1"
GATEWAY4, GATEWAY6 = "10.0.0.2", "fd00::2"          # "S", for the target's own traffic
NEXT4, NEXT6 = "10.9.0.2", "fd09::2"                # "R", the next hop of the routed prefixes
POOLS = Pools(src={4: ["198.18.4.20", "198.18.200.1", "192.0.2.77", "192.0.2.200", "203.0.113.70"],
                   6: ["2001:db8:1:4::20", "2001:db8:1::77", "2001:db8:2::1", "2001:db8:9::1"]},
              dst={4: [LOCAL4, LOCAL4B, "10.200.5.9", "10.200.1.1", "10.0.0.255"],
                   6: [LOCAL6, LOCAL6B, "fd00:200::9", "fd00:200::5:7", "fd00:200::1:1"]})
RANDOM_PROBES = 300


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
    r_mac, s_mac = link_mac(r, "r0"), link_mac(s, "s0")
    add_neighbour(t, "t1", NEXT4, r_mac)
    add_neighbour(t, "t1", NEXT6, r_mac)
    add_neighbour(t, "t0", GATEWAY4, s_mac)
    add_neighbour(t, "t0", GATEWAY6, s_mac)
    add_route(t, "10.200.0.0/16", via=NEXT4, dev="t1")
    add_route(t, "fd00:200::/64", via=NEXT6, dev="t1")
    add_route(t, "default", via=GATEWAY4, dev="t0")
    add_route(t, "default", via=GATEWAY6, dev="t0")
    return Side(s, t, r, link_mac(t, "t0"), s_mac)


@pytest.fixture(scope="module")
def bed(bpf_available: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    made: list[Namespace] = []
    try:
        orig, tg = _side(made), _side(made)
        with DaemonProcess(tg.t, detach_on_exit=True) as daemon:
            try:
                daemon.interfaces.AttachInterface(pb2.AttachInterfaceRequest(
                    interface=pb2.Interface(name="t0", mode=pb2.XDP_MODE_NATIVE)), timeout=RPC_TIMEOUT)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    pytest.skip(f"this kernel refuses native XDP on veth: {exc.details()}")
                raise
            # the operator's settings before the import: no tunnels, so no tunnel ports either
            _apply_settings(daemon, tmp_path_factory.mktemp("settings"))
            yield Bed(orig, tg, daemon, tmp_path_factory.mktemp("migrate"))
    finally:
        for ns in reversed(made):
            ns.delete()


def _apply_settings(daemon: DaemonProcess, where: Path) -> None:
    path = where / "settings.yaml"
    path.write_text("settings: {decap: false}\n")
    got = daemon.cli("policy", "apply", "-f", str(path))
    assert got.returncode == 0, got.stderr


# --- netfilter in a namespace ------------------------------------------------------------------------

RESTORE = {("nft", 4): "iptables-nft-restore", ("nft", 6): "ip6tables-nft-restore",
           ("legacy", 4): "iptables-legacy-restore", ("legacy", 6): "ip6tables-legacy-restore"}
SAVE = {("nft", 4): "iptables-nft-save", ("nft", 6): "ip6tables-nft-save",
        ("legacy", 4): "iptables-legacy-save", ("legacy", 6): "ip6tables-legacy-save"}
EMPTY = {"filter": ("INPUT", "FORWARD", "OUTPUT"),
         "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
         "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
         "raw": ("PREROUTING", "OUTPUT")}


def _run(ns: Namespace, cmd: list[str], text: str | None = None) -> str:
    done = ns.run(cmd, check=False, input=text)
    assert done.returncode == 0, f"{' '.join(cmd)} in {ns.name}: {done.stderr}\n{(text or '')[:3000]}"
    return done.stdout


def _reset(side: Side) -> None:
    """No rules in either backend, no sets, no connections: as a fresh namespace."""
    t = side.t
    _run(t, ["nft", "flush", "ruleset"])
    for family in (4, 6):
        saved = _run(t, [SAVE[("legacy", family)]])
        tables = [line[1:] for line in saved.splitlines() if line.startswith("*")]
        if tables:
            body = "".join(f"*{tb}\n" + "".join(f":{c} ACCEPT [0:0]\n" for c in EMPTY.get(tb, ()))
                           + "COMMIT\n" for tb in tables)
            _run(t, [RESTORE[("legacy", family)]], body)
    _run(t, ["ipset", "destroy"])
    from pyroute2 import Conntrack

    with t.enter():
        ct = Conntrack()
    try:
        ct.flush()
    finally:
        ct.close()


def _forwarding(side: Side, on: bool) -> None:
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


def _load(side: Side, case: Case, texts: dict[str, str]) -> None:
    if texts.get("ipset"):
        _run(side.t, ["ipset", "restore"], texts["ipset"])
    if case.backend == "native":
        if texts.get("nft", "").lstrip().startswith("{"):
            _run(side.t, ["nft", "-j", "-f", "-"], texts["nft"])
        else:
            _run(side.t, ["nft", "-f", "-"], texts["nft"])
        return
    for family, key in ((4, "v4"), (6, "v6")):
        if texts.get(key):
            _run(side.t, [RESTORE[(case.backend, family)]], texts[key])


def _save(side: Side, case: Case) -> dict[str, str]:
    out = {}
    if case.ipset:
        out["ipset"] = _run(side.t, ["ipset", "save"])
    if case.backend == "native":
        out["nft"] = _run(side.t, ["nft", "-j", "list", "ruleset"])
    else:
        for family, key in ((4, "v4"), (6, "v6")):
            if getattr(case, key):
                out[key] = _run(side.t, [SAVE[(case.backend, family)]])
    return out


def _own_traffic(side: Side, case: Case) -> None:
    """The target opens a few flows itself (replies to them are among the probes)."""
    import socket

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


def run_case(bed: Bed, case: Case, seed: int = 1) -> Outcome:
    for side in (bed.orig, bed.tg):
        _reset(side)
        _forwarding(side, case.forwarding)
    texts = {"v4": case.v4, "v6": case.v6, "nft": case.nft, "ipset": case.ipset}
    _load(bed.orig, case, texts)
    saved = _save(bed.orig, case)
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
    _load(bed.tg, case, kept)
    names = {"v4": "iptables", "v6": "ip6tables", "nft": "nft", "ipset": "ipset"}
    ruleset = read_ruleset({names[k]: text for k, text in saved.items()})
    rng = random.Random(seed)
    probes = boundary_probes(ruleset, POOLS, rng) + random_probes(POOLS, rng, RANDOM_PROBES) + case.extra
    seen = {}
    for name, side in (("orig", bed.orig), ("tg", bed.tg)):
        _own_traffic(side, case)
        bed.runs[0] += 1
        seen[name] = send_and_observe(side.s, "s0", side.s_mac, side.t_mac, side.t, side.r, "r0", probes,
                                      bed.runs[0])
    stats = json.loads(bed.daemon.cli("stats", as_json=True).stdout)
    return Outcome(result["report"], probes, seen["orig"], seen["tg"], stats)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _check(outcome: Outcome, min_moved: int = 0) -> None:
    assert not outcome.differences, "\n".join(outcome.differences[:40])
    fates = {v for v in outcome.orig}
    assert {"none"} < fates | {"none"} and "none" in fates, f"the probes do not tell anything apart: {fates}"
    moved = outcome.count("moved") + outcome.count("mirrored")
    assert moved >= min_moved, json.dumps(outcome.report["counts"])


# --- cases ---------------------------------------------------------------------------------------------

HOST4 = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -s 198.18.4.0/24 -j DROP
-A INPUT -s 192.0.2.0/25 -p udp -j DROP
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A INPUT -p tcp -m tcp --dport 80 -j DROP
COMMIT
"""
HOST6 = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -s 2001:db8:1:4::/64 -j DROP
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p ipv6-icmp -j ACCEPT
COMMIT
"""
OWN = [(4, LOCAL4, 5353, "198.19.5.5", 53), (6, LOCAL6, 5353, "2001:db8:2::5", 53)]
REPLIES = [Probe(4, 17, "198.19.5.5", LOCAL4, 53, 5353, why="reply to the target's own flow"),
           Probe(6, 17, "2001:db8:2::5", LOCAL6, 53, 5353, why="reply to the target's own flow"),
           Probe(4, 17, "198.19.5.5", LOCAL4, 53, 5354, why="not a reply")]


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_host_firewall(bed: Bed, backend: str) -> None:
    """Established, loopback, ssh, ping, drop; blocklists in front that can move. The legacy
    variant is read live (`import --live`: both backends, nft, ipsets) from the namespace."""
    case = Case(f"host-{backend}", backend, v4=HOST4, v6=HOST6, own_traffic=OWN, extra=REPLIES,
                live=backend == "legacy")
    outcome = run_case(bed, case)
    _check(outcome, min_moved=3)
    replies = outcome.tg[-3:]
    assert replies == ["local", "local", "none"], replies


ROUTER4 = """*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p icmp -j ACCEPT
-A FORWARD -s 198.18.0.0/16 -d 10.200.5.0/24 -p tcp -m tcp --dport 80 -j ACCEPT
-A FORWARD -s 198.18.0.0/15 -p tcp -m multiport --dports 0:1023 -j DROP
-A FORWARD -d 10.200.0.0/16 -p udp -m udp --dport 53 -j ACCEPT
-A FORWARD -d 10.200.5.9/32 -j DROP
-A FORWARD -i t0 -o t1 -p udp -j ACCEPT
-A FORWARD -m iprange --src-range 192.0.2.0-192.0.2.100 -j DROP
-A FORWARD -p icmp -j ACCEPT
COMMIT
"""
ROUTER6 = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -s 2001:db8:1::/48 -d fd00:200::/64 -p tcp -m tcp --dport 443 -j ACCEPT
-A FORWARD -s 2001:db8:1::/48 -j DROP
-A FORWARD ! -s 2001:db8::/32 -j DROP
-A INPUT -s 2001:db8:2::/48 -p udp -j DROP
COMMIT
"""


def test_router_forward_chain(bed: Bed) -> None:
    """A router: FORWARD rules move behind the guard, INPUT rules only for local destinations."""
    outcome = run_case(bed, Case("router", "nft", v4=ROUTER4, v6=ROUTER6, forwarding=True))
    _check(outcome, min_moved=5)
    assert "forwarded" in outcome.orig


CHAINS4 = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:SCREEN - [0:0]
:SERVICES - [0:0]
:LOGDROP - [0:0]
-A INPUT -p tcp -j SCREEN
-A INPUT -p udp -j SERVICES
-A INPUT -s 192.0.2.0/24 -g LOGDROP
-A INPUT -s 203.0.113.64/26 -j DROP
-A SCREEN -s 198.18.4.0/24 -j RETURN
-A SCREEN -s 198.18.0.0/15 -p tcp -m tcp --dport 0:1023 -j DROP
-A SCREEN -p tcp -m tcp --dport 8000:8080 -j SERVICES
-A SERVICES -d 10.0.1.1/32 -j RETURN
-A SERVICES -p udp -m udp --dport 53 -j ACCEPT
-A SERVICES -j DROP
-A LOGDROP -m length --length 0:60 -j RETURN
-A LOGDROP -j DROP
COMMIT
"""


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_user_chains(bed: Bed, backend: str) -> None:
    """Jumps, RETURNs and a goto: inlined with first-match order kept."""
    outcome = run_case(bed, Case(f"chains-{backend}", backend, v4=CHAINS4))
    _check(outcome, min_moved=3)


NFT = """table inet fw {
  set blocked { type ipv4_addr; flags interval; elements = { 198.18.4.0/24, 192.0.2.77 } }
  chain input {
    type filter hook input priority 0; policy drop;
    ip saddr @blocked drop
    ip6 saddr 2001:db8:1:4::/64 drop
    ct state established,related accept
    tcp dport { 22, 8000-8080 } accept
    udp dport 53 jump dns
    tcp dport vmap { 80 : accept, 81 : drop }
    meta l4proto { icmp, ipv6-icmp } accept
  }
  chain dns {
    ip saddr 192.0.2.0/24 return
    accept
  }
  chain forward { type filter hook forward priority 0; policy accept;
    ip daddr 10.200.5.9 drop
  }
}
"""


def test_nft_ruleset(bed: Bed) -> None:
    outcome = run_case(bed, Case("nft", "native", nft=NFT, own_traffic=OWN, extra=REPLIES))
    _check(outcome, min_moved=2)


IPSET = """create bad hash:net family inet hashsize 1024 maxelem 65536
add bad 198.18.0.0/16
add bad 198.18.4.16/28 nomatch
add bad 192.0.2.77
"""
SETS4 = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m set --match-set bad src -p tcp -j DROP
-A INPUT -m set ! --match-set bad src -p udp -j DROP
COMMIT
"""


def test_ipset(bed: Bed) -> None:
    outcome = run_case(bed, Case("ipset", "nft", v4=SETS4, ipset=IPSET))
    _check(outcome, min_moved=2)


@pytest.mark.parametrize("seed", [11, 12, 13])
@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_random_iptables(bed: Bed, backend: str, seed: int) -> None:
    rng = random.Random(seed)
    v4 = netfilter_gen.Gen(4, rng).ruleset(40)
    v6 = netfilter_gen.Gen(6, rng).ruleset(25)
    outcome = run_case(bed, Case(f"random-{backend}-{seed}", backend, v4=v4, v6=v6, forwarding=seed % 2 == 1),
                       seed)
    _check(outcome)


@pytest.mark.parametrize("seed", [21, 22])
def test_random_nft(bed: Bed, seed: int) -> None:
    rng = random.Random(seed)
    outcome = run_case(bed, Case(f"random-nft-{seed}", "native", nft=netfilter_gen.nft_ruleset(rng, 30),
                                 forwarding=seed % 2 == 0), seed)
    _check(outcome)


def test_probes_can_tell_a_wrong_import(bed: Bed) -> None:
    """The comparison fails when the imported side differs: a deny added behind the import's back."""
    outcome_ok = run_case(bed, Case("control", "nft", v4=ROUTER4, forwarding=True))
    assert not outcome_ok.differences
    wrong = bed.workdir / "wrong.yaml"
    wrong.write_text("settings: {decap: false}\nacl:\n- {id: 1, action: deny, match: {dst: 10.200.5.0/24}}\n")
    assert bed.daemon.cli("policy", "apply", "-f", str(wrong)).returncode == 0
    probes = outcome_ok.probes
    bed.runs[0] += 1
    side = bed.tg
    seen = send_and_observe(side.s, "s0", side.s_mac, side.t_mac, side.t, side.r, "r0", probes, bed.runs[0])
    assert any(a != b for a, b in zip(outcome_ok.orig, seen, strict=True))
