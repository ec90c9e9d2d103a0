"""`tidegate` against a real daemon: `tidegate serve --netns` in a fresh namespace, driven as a user would.

The daemon is the one harness's (the `daemon_on_veth` fixture: testbed.daemon.DaemonProcess, a
subprocess that setns()es itself into the namespace, with its own socket, state directory and pin
root). A veth pair joins it to a peer namespace, whose UDP packets give the counters something to
count. Everything is removed whatever happens: daemon stopped, namespaces, pin root, state
directory, socket.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from control.policy.models import Policy
from control.rpc.api import pb2, pb2_grpc
from testbed.daemon import REPO_ROOT, DaemonProcess
from testbed.netns import Link, Namespace, linked_namespaces, veth_pair
from testbed.topology import find_pin_dir

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

IFNAME, PEER_IFNAME = "tgc0", "tgc1"  # names inside our own namespaces: no clash with the host
ADDR, PEER_ADDR = "10.77.0.1", "10.77.0.2"
CLI_TIMEOUT = 120.0
UDP_PORT = 9  # discard: nobody listens, the packets only need to reach XDP


@dataclass
class Daemon:
    """The harness's daemon and its link, with the checks of a user at the command line."""

    process: DaemonProcess
    link: Link

    @property
    def ns(self) -> Namespace:
        return self.link.ns

    @property
    def peer(self) -> Namespace:
        return self.link.peer

    @property
    def sock(self) -> Path:
        return self.process.socket

    @property
    def pin_root(self) -> Path:
        return self.process.pin_root

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.process.cli(*args, stdin=stdin)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        done = self.cli(*args, stdin=stdin)
        assert done.returncode == 0, f"tidegate {' '.join(args)}: exit {done.returncode}: {done.stderr}"
        return done.stdout

    def json(self, *args: str, stdin: str | None = None) -> dict:  # type: ignore[type-arg]
        return json.loads(self.ok("-j", *args, stdin=stdin))  # type: ignore[no-any-return]

    def refused(self, code: int, *args: str, stdin: str | None = None) -> str:
        done = self.cli(*args, stdin=stdin)
        assert done.returncode == code, f"tidegate {' '.join(args)}: exit {done.returncode}, not {code}: " \
                                        f"{done.stdout}{done.stderr}"
        assert done.stdout == ""
        return done.stderr

    def write(self, name: str, text: str) -> str:
        path = self.process.workdir / name
        path.write_text(text)
        return str(path)

    def stop(self) -> int | None:
        """SIGTERM (SIGKILL if it hangs); state dir, socket path and pin root stay to be looked at."""
        return self.process.stop(keep=True)


def _link() -> AbstractContextManager[Link]:
    return linked_namespaces("tgcli", IFNAME, PEER_IFNAME, ADDR, PEER_ADDR)


@pytest.fixture(scope="module")
def daemon(daemon_on_veth) -> Iterator[Daemon]:  # noqa: ANN001
    with _link() as link, daemon_on_veth(link.ns, IFNAME, mode="auto") as process:
        yield Daemon(process, link)


@pytest.fixture
def d(daemon: Daemon) -> Daemon:
    """The module's daemon with an empty policy (interfaces stay attached)."""
    daemon.ok("policy", "apply", "-f", "-", stdin="{}")
    return daemon


def _send_udp(peer: Namespace, count: int) -> None:
    with peer.enter():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        for _ in range(count):
            s.sendto(b"tidegate", (ADDR, UDP_PORT))


def _xdp_attached(ns: Namespace) -> bool:
    return "prog/xdp" in ns.run(["ip", "-d", "link", "show", "dev", IFNAME]).stdout


# --- tests ---------------------------------------------------------------------------------------

def test_status(d: Daemon) -> None:
    status = d.json("status")
    assert status["health"] == "SERVING"
    [iface] = status["interfaces"]
    assert iface["name"] == IFNAME and iface["requested_mode"] == "auto" and iface["attached"]
    assert iface["active_mode"] in ("native", "generic")
    text = d.ok("status")
    assert "SERVING" in text and f"generation: {status['generation']}" in text and IFNAME in text
    assert _xdp_attached(d.ns)


def test_attach_refusals(d: Daemon) -> None:
    assert d.refused(1, "attach", IFNAME, "--mode", "generic").startswith(
        "tidegate: ALREADY_EXISTS: interface tgc0 is attached")
    err = d.refused(1, "attach", "nope0")
    assert err.startswith("tidegate: NOT_FOUND: interface.name: ") and "nope0" in err
    assert d.refused(1, "detach", "nope0").startswith("tidegate: NOT_FOUND: interface nope0 is not attached")
    assert [i["name"] for i in d.json("status")["interfaces"]] == [IFNAME]


def test_status_tells_a_vanished_interface(d: Daemon) -> None:
    veth_pair(d.ns, "tgv0", d.ns, "tgv1")
    d.ok("attach", "tgv0", "--mode", "generic")
    try:
        assert {i["name"]: i["attached"] for i in d.json("status")["interfaces"]} == {IFNAME: True,
                                                                                     "tgv0": True}
        d.ns.run(["ip", "link", "del", "tgv0"])  # takes tgv1 with it
        vanished = d.json("status")["interfaces"][1]
        assert vanished.pop("kernel_memory_bytes") > 0  # the daemon still holds its maps
        assert vanished == {"name": "tgv0", "requested_mode": "generic", "active_mode": None,
                            "attached": False}
    finally:
        d.ok("detach", "tgv0")  # a vanished interface left attached makes every later change fail
    assert [i["name"] for i in d.json("status")["interfaces"]] == [IFNAME]


def test_acl_add_list_del(d: Daemon) -> None:
    d.ok("acl", "add", "--id", "10", "--action", "deny", "--src", "10.0.0.0/8", "--protocol", "tcp",
         "--dport", "22")
    d.ok("acl", "add", "--id", "11", "--priority", "5", "--action", "allow", "--protocol", "udp",
         "--dport", "53-54", "--log", "--description", "dns")
    d.ok("acl", "add", "--id", "14", "--action", "allow", "--protocol", "icmp", "--icmp-type", "8",
         "--icmp-code", "0")
    d.ok("acl", "add", "--id", "15", "--action", "deny", "--protocol", "tcp", "--syn")
    listed = d.json("acl", "list")
    assert [(r["id"], r["priority"], r["action"]) for r in listed["acl"]] == [(10, 1000, "deny"),
                                                                              (11, 5, "allow"),
                                                                              (14, 1000, "allow"),
                                                                              (15, 1000, "deny")]
    assert listed["acl"][1]["match"] == {"src": None, "dst": None, "protocol": "udp",
                                         "dport": {"low": 53, "high": 54}, "sport": None,
                                         "icmp_type": None, "icmp_code": None, "syn": False}
    assert (listed["acl"][2]["match"]["icmp_type"], listed["acl"][2]["match"]["icmp_code"]) == (8, 0)
    assert listed["acl"][3]["match"]["syn"] is True
    assert listed["acl"][1]["log"] and listed["acl"][1]["description"] == "dns"
    table = d.ok("acl", "list").splitlines()
    assert table[0].split()[:3] == ["ID", "PRIO", "ACTION"] and "10.0.0.0/8" in table[1]
    assert "type 8 code 0" in table[3] and table[4].split()[8] == "syn"

    # refusals: exit 1, the status code and the field; the daemon keeps serving, rules intact
    err = d.refused(1, "acl", "add", "--id", "12", "--action", "allow", "--protocol", "tcp",
                    "--dport", "70000")
    assert err.startswith("tidegate: INVALID_ARGUMENT: rule.match.dport.low: ")
    err = d.refused(1, "acl", "add", "--id", "12", "--action", "allow", "--icmp-type", "8")
    assert err.startswith("tidegate: INVALID_ARGUMENT: rule.match.icmp_type: icmp_type 8 needs protocol icmp")
    err = d.refused(1, "acl", "add", "--id", "12", "--action", "deny", "--protocol", "udp", "--syn")
    assert err.startswith("tidegate: INVALID_ARGUMENT: rule.match.syn: syn needs protocol tcp")
    err = d.refused(1, "acl", "add", "--id", "10", "--action", "allow")
    assert err.startswith("tidegate: ALREADY_EXISTS: ACL rule 10 already exists")
    err = d.refused(1, "acl", "add", "--id", "0", "--action", "allow")
    assert err.startswith("tidegate: INVALID_ARGUMENT: rule.id: ")
    assert d.refused(1, "acl", "del", "999").startswith("tidegate: NOT_FOUND: ACL rule 999 does not exist")
    err = d.refused(2, "acl", "add", "--id", "13", "--action", "allow", "--dport", "http")
    assert err.startswith("usage:")
    again = d.json("acl", "list")
    assert again == listed

    d.ok("acl", "del", "11")
    d.ok("acl", "del", "14")
    d.ok("acl", "del", "15")
    assert [r["id"] for r in d.json("acl", "list")["acl"]] == [10]
    generation = d.json("status")["generation"]
    d.ok("acl", "del", "10")
    assert d.json("acl", "list") == {"generation": generation + 1, "acl": []}


POLICY = """\
settings: {default_action: allow, unknown_vni_action: drop}
acl:
  - {id: 1, action: deny, match: {src: 192.0.2.0/24}}
  - {id: 2, priority: 10, action: allow, match: {protocol: udp, dport: 53}, description: dns}
tunnels:
  - {vni: 100}
  - {vni: 200, geneve: false}
"""


def test_policy_apply_dry_run_then_real(d: Daemon) -> None:
    path = d.write("policy.yaml", POLICY)
    before = d.json("status")["generation"]
    dry = d.json("policy", "apply", "-f", path, "--dry-run")
    assert dry["dry_run"] and dry["generation"] == before
    assert dry["diff"]["acl"]["added"] == [1, 2] and dry["diff"]["tunnels"]["added"] == [100, 200]
    assert dry["diff"]["settings_changed"]
    assert d.json("status")["generation"] == before and d.json("acl", "list")["acl"] == []
    assert "would change" in d.ok("policy", "apply", "-f", path, "--dry-run")

    applied = d.json("policy", "apply", "-f", path, "--expected-generation", str(before))
    assert applied["generation"] == before + 1 and not applied["dry_run"]
    want = Policy.model_validate(yaml.safe_load(POLICY))
    shown_json = d.json("policy", "show")
    assert shown_json.pop("generation") == before + 1 and Policy.model_validate(shown_json) == want
    shown = d.ok("policy", "show")
    assert shown.startswith(f"# generation: {before + 1}\n")
    assert Policy.model_validate(yaml.safe_load(shown)) == want

    err = d.refused(1, "policy", "apply", "-f", path, "--expected-generation", str(before))
    assert err.startswith(f"tidegate: ABORTED: policy is at generation {before + 1}, not {before}")
    again = d.json("policy", "apply", "-f", "-", stdin=json.dumps(d.json("policy", "show")))
    assert again["diff"]["acl"] == {"added": [], "removed": [], "changed": []}
    assert again["unchanged"] and again["generation"] == before + 1  # the same policy: a no-op


def test_policy_file_errors_send_nothing(d: Daemon) -> None:
    before = d.json("status")["generation"]
    bad = d.write("bad.yaml", "acl:\n  - {id: 1, action: deny, match: {protocol: tcp, dport: 90-80}}\n")
    err = d.refused(2, "policy", "apply", "-f", bad)
    assert err == f"tidegate: {bad}: acl[0].match.dport: low 90 is above high 80\n"
    broken = d.write("broken.yaml", "acl: [\n")
    assert d.refused(2, "policy", "apply", "-f", broken).startswith(f"tidegate: {broken}: line 2")
    assert d.json("status")["generation"] == before


def test_tunnels(d: Daemon) -> None:
    d.ok("tunnel", "add", "100")
    d.ok("tunnel", "add", "200", "--no-geneve")
    assert d.json("tunnel", "list")["tunnels"] == [{"vni": 100, "vxlan": True, "geneve": True},
                                                   {"vni": 200, "vxlan": True, "geneve": False}]
    assert d.refused(1, "tunnel", "add", "100").startswith("tidegate: ALREADY_EXISTS: tunnel VNI 100")
    err = d.refused(1, "tunnel", "add", "300", "--no-vxlan", "--no-geneve")
    assert err.startswith("tidegate: INVALID_ARGUMENT: tunnel: tunnel 300: enable vxlan, geneve or both")
    assert d.refused(1, "tunnel", "add", "16777216").startswith("tidegate: INVALID_ARGUMENT: tunnel.vni: ")
    d.ok("tunnel", "del", "200")
    assert d.refused(1, "tunnel", "del", "200").startswith("tidegate: NOT_FOUND: tunnel VNI 200")
    assert [t["vni"] for t in d.json("tunnel", "list")["tunnels"]] == [100]
    assert d.ok("tunnel", "list").split() == ["VNI", "VXLAN", "GENEVE", "100", "yes", "yes"]


CHAIN = f"""\
name: web
forward:
  interfaces: [{IFNAME}]
  match: {{protocol: tcp, dport: 80}}
  mark: 0x20
  table: 1500
  nexthops: [{{via: {PEER_ADDR}}}]
"""


def test_chains(d: Daemon) -> None:
    path = d.write("chain.yaml", CHAIN)
    d.ok("chain", "add", "-f", path)
    [chain] = d.json("chain", "list")["chains"]
    assert (chain["name"], chain["forward"]["mark"], chain["forward"]["table"]) == ("web", 0x20, 1500)
    assert chain["forward"]["nexthops"] == [{"via": PEER_ADDR, "dev": None}]
    assert "0x20" in d.ok("chain", "list")
    rules = d.ns.run(["ip", "rule", "show"]).stdout
    assert "fwmark 0x20 lookup 1500" in rules
    assert f"via {PEER_ADDR}" in d.ns.run(["ip", "route", "show", "table", "1500"]).stdout

    assert d.refused(1, "chain", "add", "-f", path).startswith("tidegate: ALREADY_EXISTS: chain web")
    err = d.refused(1, "detach", IFNAME)
    assert err.startswith(f"tidegate: FAILED_PRECONDITION: interface {IFNAME} is used by chains web")
    other = d.write("other.yaml", CHAIN.replace("name: web", "name: db").replace(IFNAME, PEER_IFNAME)
                    .replace("0x20", "0x21").replace("1500", "1501"))
    err = d.refused(1, "chain", "add", "-f", other)
    assert err.startswith("tidegate: INVALID_ARGUMENT: ") and "not attached" in err and PEER_IFNAME in err
    zero = d.write("zero.yaml", CHAIN.replace("0x20", "0"))
    err = d.refused(2, "chain", "add", "-f", zero)  # a local file: refused here, naming file and field
    assert err.startswith(f"tidegate: {zero}: forward.mark: Input should be greater than or equal to 1")

    d.ok("chain", "del", "web")
    assert d.json("chain", "list")["chains"] == []
    assert "lookup 1500" not in d.ns.run(["ip", "rule", "show"]).stdout
    assert d.refused(1, "chain", "del", "web").startswith("tidegate: NOT_FOUND: chain web")


def test_daemon_refuses_mark_zero_naming_the_field(d: Daemon) -> None:
    """What the CLI catches locally, the daemon refuses too (for clients that skip the CLI)."""
    d.ok("acl", "add", "--id", "1", "--action", "allow")
    chain = pb2.ServiceChain(name="web", forward=pb2.Leg(interfaces=[IFNAME], mark=0, table=1500,
                                                         nexthops=[pb2.NextHop(via=PEER_ADDR)]))
    with grpc.insecure_channel(f"unix:{d.sock}") as channel:
        with pytest.raises(grpc.RpcError) as caught:
            stub = pb2_grpc.PolicyServiceStub(channel)
            stub.AddChain(pb2.AddChainRequest(chain=chain), timeout=CLI_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("chain.forward.mark: Input should be greater than or equal to 1")
    assert [r["id"] for r in d.json("acl", "list")["acl"]] == [1]  # still serving, rule intact


def test_stats_count_denied_packets(d: Daemon) -> None:
    d.ok("acl", "add", "--id", "42", "--action", "deny", "--protocol", "udp", "--dport", str(UDP_PORT))
    before = d.json("stats")
    _send_udp(d.peer, 5)
    after = d.json("stats", "--interface", IFNAME)
    assert set(after) == {"generation", "reasons", "acl_rules", "tunnels", "chain_legs", "events",
                          "interfaces", "policy_events"}
    assert after["acl_rules"]["42"]["packets"] >= 5
    denied = after["reasons"]["DROP_DENIED"]["packets"] - before["reasons"]["DROP_DENIED"]["packets"]
    assert denied >= 5
    assert after["interfaces"][IFNAME]["packets"] - before["interfaces"][IFNAME]["packets"] >= 5
    text = d.ok("stats")
    assert "DROP_DENIED" in text and "RULE" in text
    err = d.refused(1, "stats", "--interface", "nope0")
    assert err.startswith("tidegate: NOT_FOUND: interfaces not attached: nope0")


def test_usage_and_unreachable_exit_codes(d: Daemon) -> None:
    assert d.refused(2, "acl", "add", "--id", "1").startswith("usage:")
    done = subprocess.run([sys.executable, "-m", "control.cli", "-s", str(d.process.workdir / "none.sock"),
                           "status"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert done.returncode == 3 and "tidegate serve" in done.stderr and "none.sock" in done.stderr


def test_stop_detaches_and_removes_the_socket(daemon_on_veth) -> None:  # noqa: ANN001
    """SIGTERM with detach_on_exit: exit 0, programs and pins gone, and the CLI then says exit 3."""
    with _link() as link, daemon_on_veth(link.ns) as process:
        d = Daemon(process, link)
        d.ok("attach", IFNAME, "--mode", "generic")
        d.ok("acl", "add", "--id", "1", "--action", "deny", "--protocol", "udp", "--dport", "9")
        pin_dir = find_pin_dir(d.pin_root, IFNAME)
        assert _xdp_attached(d.ns) and pin_dir is not None and pin_dir.exists()
        assert d.stop() == 0, process.log_tail()
        assert not d.sock.exists()
        assert not _xdp_attached(d.ns)
        assert d.ns.run(["tc", "filter", "show", "dev", IFNAME, "ingress"]).stdout.strip() == ""
        assert not pin_dir.exists() and find_pin_dir(d.pin_root, IFNAME) is None
        err = d.refused(3, "status")
        assert err.startswith(f"tidegate: UNAVAILABLE: no daemon socket at {d.sock}")
        assert "tidegate serve" in err


def test_attach_refuses_an_interface_another_xdp_program_holds(d: Daemon) -> None:
    """docs/dataplane.md, "Other XDP programs": named (id, name, tag), left in place, unless
    --replace; then the interface is Tidegate's."""
    from dataplane.kernel.attach import attach_xdp, xdp_programs
    from testbed.bench.programs import Noop

    other, name = Noop(), "tgc8"
    veth_pair(d.ns, name, d.ns, "tgc9")
    try:
        with d.ns.enter():
            attach_xdp(name, other.fn, "native")
            [held] = xdp_programs(name)
        err = d.refused(1, "attach", name)
        assert err.startswith("tidegate: FAILED_PRECONDITION: interface.name: ") and f"id {held.id}" in err
        assert "'tg_bench_noop'" in err and held.tag.hex() in err
        with d.ns.enter():
            assert [p.id for p in xdp_programs(name)] == [held.id]
        d.ok("attach", name, "--replace")
        with d.ns.enter():
            assert [p.name for p in xdp_programs(name)] == ["tg_xdp_ingress"]
        d.ok("detach", name)
    finally:
        other.close()
        d.ns.run(["ip", "link", "del", name], check=False)
