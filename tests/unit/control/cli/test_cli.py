"""control.cli.main without root: arguments, local files, exit codes, output formats.

The last part runs the CLI against the real gRPC servicers (control.rpc.service) and controller over
a Unix socket, with a fake reconciler in place of the kernel, so every exit code is exercised
without BPF.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from control.apply.controller import Controller
from control.apply.reconcile import MissingInterface, Stats
from control.apply.state import StateStore
from control.cli import args as cli_args
from control.cli import client, main, response_format
from control.policy.models import DesiredState, Policy
from control.rpc.api import pb2
from control.rpc.service import add_services
from dataplane.kernel.maps import Counter


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- arguments ------------------------------------------------------------------------------------

def test_global_options_default_and_may_follow_the_command() -> None:
    parser = main.build_parser()
    args = parser.parse_args(["acl", "list"])
    assert (args.socket, args.json, args.timeout) == (None, False, client.DEFAULT_TIMEOUT)
    args = parser.parse_args(["-s", "/x.sock", "-j", "--timeout", "5", "acl", "list"])
    assert (args.socket, args.json, args.timeout) == ("/x.sock", True, 5.0)
    args = parser.parse_args(["acl", "list", "-j", "-s", "/y.sock"])
    assert (args.socket, args.json, args.timeout) == ("/y.sock", True, client.DEFAULT_TIMEOUT)
    assert parser.parse_args(["-j", "acl", "list"]).json  # not reset by the command's own -j default


def test_acl_add_arguments() -> None:
    args = main.build_parser().parse_args(
        ["acl", "add", "--id", "7", "--priority", "10", "--action", "deny", "--src", "10.0.0.0/8",
         "--dst", "192.0.2.0/24", "--protocol", "tcp", "--dport", "8000-8080", "--log", "--description", "x"])
    assert (args.id, args.priority, args.action, args.protocol) == (7, 10, "deny", "tcp")
    assert args.dport == (8000, 8080) and args.log and args.description == "x"
    assert args.handler is main.cmd_acl_add
    single = main.build_parser().parse_args(["acl", "add", "--id", "1", "--action", "allow", "--dport", "80"])
    assert single.dport == (80, 80) and single.priority is None and single.src is single.sport is None
    gre = main.build_parser().parse_args(["acl", "add", "--id", "1", "--action", "deny", "--protocol", "47"])
    assert gre.protocol == 47
    dns = main.build_parser().parse_args(["acl", "add", "--id", "1", "--action", "deny", "--protocol", "UDP",
                                         "--sport", "53"])
    assert (dns.protocol, dns.sport) == ("udp", (53, 53))
    ping = main.build_parser().parse_args(["acl", "add", "--id", "1", "--action", "allow", "--protocol",
                                          "icmp", "--icmp-type", "8", "--icmp-code", "0"])
    assert (ping.icmp_type, ping.icmp_code, ping.syn) == (8, 0, False)
    new = main.build_parser().parse_args(["acl", "add", "--id", "1", "--action", "deny", "--protocol", "tcp",
                                         "--syn"])
    assert new.syn and new.icmp_type is None


@pytest.mark.parametrize("argv", [
    [],
    ["acl"],
    ["frobnicate"],
    ["acl", "add", "--id", "1"],                                    # --action is required
    ["acl", "add", "--id", "1", "--action", "drop"],
    ["acl", "add", "--id", "x", "--action", "allow"],
    ["acl", "add", "--id", "4294967296", "--action", "allow"],       # does not fit the proto
    ["acl", "add", "--id", "1", "--action", "allow", "--dport", "http"],
    ["acl", "add", "--id", "1", "--action", "allow", "--protocol", "gre"],
    ["acl", "add", "--id", "1", "--action", "allow", "--protocol", "-1"],
    ["acl", "add", "--id", "1", "--action", "allow", "--protocol", "udp", "--sport", "dns"],
    ["attach", "eth0", "--mode", "turbo"],
    ["policy", "apply"],                                             # -f is required
    ["tunnel", "add", "-1"],
    ["--timeout", "0", "status"],
])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == client.EXIT_USAGE
    assert "usage: tidegate" in err and out == ""


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "exit codes" in out


def test_ports_syntax_only() -> None:
    assert cli_args.ports("80") == (80, 80)
    assert cli_args.ports(" 80 - 90 ") == (80, 90)
    assert cli_args.ports("70000") == (70000, 70000)  # out of range: the daemon says so, naming the field
    with pytest.raises(Exception, match="not a port"):
        cli_args.ports("80-")


def test_stats_interfaces_repeat_and_extend() -> None:
    args = main.build_parser().parse_args(["stats", "--interface", "a", "b", "--interface", "c"])
    assert args.interface == ["a", "b", "c"]
    assert main.build_parser().parse_args(["stats"]).interface is None


def test_resolve_target() -> None:
    assert client.resolve_target("/run/t.sock") == ("unix:/run/t.sock", Path("/run/t.sock"))
    assert client.resolve_target("unix:/run/t.sock") == ("unix:/run/t.sock", Path("/run/t.sock"))
    assert client.resolve_target("unix:///run/t.sock") == ("unix:/run/t.sock", Path("/run/t.sock"))
    assert client.resolve_target("127.0.0.1:50051") == ("127.0.0.1:50051", None)
    assert client.resolve_target("[::1]:50051") == ("[::1]:50051", None)
    target, path = client.resolve_target("rel.sock")
    assert path is not None and path.is_absolute() and target == f"unix:{path}"


# --- exit 3: no daemon ------------------------------------------------------------------------

def test_missing_socket_exits_3_naming_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sock = tmp_path / "none.sock"
    code, out, err = run(capsys, "-s", str(sock), "acl", "list")
    assert code == client.EXIT_UNREACHABLE and out == ""
    assert err.startswith("tidegate: UNAVAILABLE: ") and str(sock) in err and "tidegate serve" in err


def test_socket_from_environment(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(client.SOCKET_ENV, str(tmp_path / "env.sock"))
    code, _, err = run(capsys, "status")
    assert code == client.EXIT_UNREACHABLE and "env.sock" in err
    code, _, err = run(capsys, "-s", str(tmp_path / "flag.sock"), "status")
    assert code == client.EXIT_UNREACHABLE and "flag.sock" in err  # -s wins over the environment


def test_nobody_listening_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    directory = tempfile.mkdtemp(prefix="tgcli")  # short: a Unix socket path has 107 bytes at most
    path = Path(directory) / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stale.bind(str(path))  # a socket file nobody accepts on, as a crashed daemon leaves it
        code, _, err = run(capsys, "-s", str(path), "--timeout", "10", "tunnel", "list")
    finally:
        stale.close()
        shutil.rmtree(directory)
    assert code == client.EXIT_UNREACHABLE
    assert err.startswith("tidegate: UNAVAILABLE: cannot reach the daemon at ") and str(path) in err


def test_socket_without_permission_exits_3(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may use any socket")
    path = tmp_path / "root-only.sock"
    path.touch(mode=0o000)
    code, _, err = run(capsys, "-s", str(path), "status")
    assert code == client.EXIT_UNREACHABLE and "no permission" in err and str(path) in err


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "control.cli", "-s", str(tmp_path / "x.sock"), "acl", "list"]
    done = subprocess.run(argv, cwd=Path(__file__).resolve().parents[4], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == client.EXIT_UNREACHABLE and "x.sock" in done.stderr


# --- exit 2: local files, checked before anything is sent ------------------------------------------

def test_invalid_field_names_file_and_field(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "acl:\n  - id: 1\n    action: allow\n"
                                     "    match: {protocol: tcp, dport: 90-80}\n  - {id: 2, action: maybe}\n")
    code, out, err = run(capsys, "-s", str(tmp_path / "none.sock"), "policy", "apply", "-f", path)
    assert code == client.EXIT_USAGE and out == ""  # exit 2, not 3: the socket was never looked at
    lines = err.splitlines()
    assert lines[0] == f"tidegate: {path}: acl[0].match.dport: low 90 is above high 80"
    assert lines[1].startswith(f"tidegate: {path}: acl[1].action: ")


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("bad.yaml", "acl: [\n", "line 2, column 1: not valid YAML"),
    ("bad.json", '{"acl": [}', "line 1, column 10: not valid JSON"),
    ("list.yaml", "- 1\n", "expected a mapping"),
    ("empty.yaml", "# nothing\n", "empty document"),
    ("extra.yaml", "acls: []\n", "acls: Extra inputs are not permitted"),
    ("dup.json", '{"acl": [{"id": 1, "action": "allow"}, {"id": 1, "action": "deny"}]}',
     "acl: id 1 is used by both acl[0] and acl[1]"),
    ("ports.yaml", "acl: [{id: 1, action: allow, match: {protocol: udp, dport: 70000}}]\n",
     "acl[0].match.dport.low: Input should be less than or equal to 65535"),
])
def test_policy_file_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                            name: str, text: str, expected: str) -> None:
    path = write(tmp_path, name, text)
    code, _, err = run(capsys, "policy", "apply", "-f", path, "--dry-run")
    assert code == client.EXIT_USAGE
    assert err.startswith(f"tidegate: {path}: ") and expected in err


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "chain", "add", "-f", str(tmp_path / "nope.yaml"))
    assert code == client.EXIT_USAGE and "nope.yaml: cannot read it: No such file or directory" in err


def test_chain_file_errors_name_the_field(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "name: web\nforward: {interfaces: [eth0], mark: 0, table: 1000, "
                                     "nexthops: [{via: 10.0.0.300}]}\n")
    code, _, err = run(capsys, "chain", "add", "-f", path)
    assert code == client.EXIT_USAGE
    assert f"tidegate: {path}: forward.mark: Input should be greater than or equal to 1" in err
    assert f"tidegate: {path}: forward.nexthops[0].via: " in err


def test_stdin_is_read_for_dash(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    text = '{"tunnels": [{"vni": 1, "vxlan": false, "geneve": false}]}'
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    code, _, err = run(capsys, "policy", "apply", "-f", "-")
    assert code == client.EXIT_USAGE
    assert err.startswith("tidegate: <stdin>: tunnels[0]: tunnel 1: enable vxlan, geneve or both")


def test_load_model_accepts_yaml_and_json(tmp_path: Path) -> None:
    y = write(tmp_path, "p.yaml", "acl:\n  - {id: 1, action: deny, match: {protocol: tcp, dport: 80-90}}\n")
    j = write(tmp_path, "p.json", json.dumps({"acl": [{"id": 1, "action": "deny",
                                                       "match": {"protocol": "tcp", "dport": "80-90"}}]}))
    assert main.load_model(y, Policy, "a policy") == main.load_model(j, Policy, "a policy")


def test_serve_config_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = write(tmp_path, "d.yaml", "listen: {unix: /x.sock}\ndetach_on_exit: maybe\n")
    code, _, err = run(capsys, "serve", "-c", cfg)
    assert code == client.EXIT_USAGE and f"{cfg}: detach_on_exit: " in err
    good = write(tmp_path, "g.yaml", f"listen: {{unix: {tmp_path}/d.sock}}\n")
    code, _, err = run(capsys, "serve", "-c", good, "--netns", "tg-no-such-ns")
    assert code == client.EXIT_USAGE and "/run/netns/tg-no-such-ns" in err
    code, _, err = run(capsys, "-s", "/elsewhere.sock", "serve", "-c", good)
    assert code == client.EXIT_USAGE and "listen.unix" in err


def test_message_limit_matches_the_daemon() -> None:
    from control import daemon

    assert client.MAX_MESSAGE_BYTES == daemon.MAX_MESSAGE_BYTES


# --- formatting helpers ---------------------------------------------------------------------------

def test_table_aligns_columns() -> None:
    text = response_format.table(["ID", "NAME", "NOTE"], [(5, "web", None), (1000, "a", "")])
    assert text.splitlines() == ["  ID  NAME  NOTE",
                                 "   5  web   -",
                                 "1000  a     -"]


def _rules() -> pb2.ListAclRulesResponse:
    return pb2.ListAclRulesResponse(generation=3, rules=[
        pb2.AclRule(id=1, action=pb2.ACTION_DENY, match=pb2.Match(src="10.0.0.0/8", protocol=pb2.PROTOCOL_TCP,
                                                                  dport=pb2.PortRange(low=80, high=90))),
        pb2.AclRule(id=20, priority=5, action=pb2.ACTION_ALLOW, log=True, metrics=True, description="dns"),
        pb2.AclRule(id=21, action=pb2.ACTION_DENY, match=pb2.Match(protocol_number=47)),
        pb2.AclRule(id=22, action=pb2.ACTION_ALLOW, match=pb2.Match(protocol=pb2.PROTOCOL_ICMP, icmp_type=8,
                                                                    icmp_code=0)),
        pb2.AclRule(id=23, action=pb2.ACTION_DENY, match=pb2.Match(protocol=pb2.PROTOCOL_TCP, syn=True))])


def test_rules_as_json_and_table() -> None:
    data = response_format.rules_data(_rules())
    assert json.loads(response_format.to_json(data)) == data
    assert set(data) == {"generation", "acl"}  # a policy file's section, and its generation
    assert data["acl"][0]["match"] == {"src": "10.0.0.0/8", "dst": None, "protocol": "tcp",
                                       "dport": {"low": 80, "high": 90}, "sport": None, "icmp_type": None,
                                       "icmp_code": None, "syn": False}
    assert [r["metrics"] for r in data["acl"]] == [False, True, False, False, False]
    listed = Policy.model_validate({k: v for k, v in data.items() if k != "generation"})
    assert [r.id for r in listed.acl] == [1, 20, 21, 22, 23] and listed.acl[1].metrics
    assert listed.acl[3].match.icmp_type == 8 and listed.acl[4].match.syn
    lines = response_format.rules_text(data).splitlines()
    assert lines[0].split() == ["ID", "PRIO", "ACTION", "SRC", "DST", "PROTO", "SPORT", "DPORT", "L4", "LOG",
                                "METRICS", "DESCRIPTION"]
    assert lines[1].split() == ["1", "1000", "deny", "10.0.0.0/8", "any", "tcp", "-", "80-90", "-", "no",
                                "no", "-"]
    assert lines[2].split() == ["20", "5", "allow", "any", "any", "any", "-", "-", "-", "yes", "yes", "dns"]
    assert lines[3].split() == ["21", "1000", "deny", "any", "any", "47", "-", "-", "-", "no", "no", "-"]
    assert lines[4].split() == ["22", "1000", "allow", "any", "any", "icmp", "-", "-", "type", "8", "code",
                                "0", "no", "no", "-"]
    assert lines[5].split() == ["23", "1000", "deny", "any", "any", "tcp", "-", "-", "syn", "no", "no", "-"]
    assert lines[1].index("deny") == lines[2].index("allow")  # aligned


def test_empty_lists_say_so() -> None:
    f = response_format
    assert "no ACL rules" in f.rules_text(f.rules_data(pb2.ListAclRulesResponse(generation=1)))
    assert "no tunnels" in f.tunnels_text(f.tunnels_data(pb2.ListTunnelsResponse()))
    assert "no service chains" in f.chains_text(f.chains_data(pb2.ListChainsResponse()))


def test_stats_json_is_keyed_by_section() -> None:
    c = pb2.Counter(packets=3, bytes=300)
    msg = pb2.GetStatsResponse(
        generation=9, acl_rules=[pb2.AclRuleCounter(rule_id=5, counter=c)],
        tunnels=[pb2.TunnelCounter(vni=100, counter=c)],
        chain_legs=[pb2.ChainLegCounter(chain="web", leg="forward", counter=c)],
        reasons=[pb2.ReasonCounter(reason=pb2.REASON_DROP_DENIED, counter=c)],
        events=[pb2.EventCounter(event=pb2.EVENT_CLASSIFIED, counter=c)],
        interfaces=[pb2.InterfaceCounter(name="eth0", counter=c)],
        policy_events=pb2.PolicyEventDelivery(sent=7, rate_limited=2, read=6, watch_dropped=1, watchers=1))
    data = json.loads(response_format.to_json(response_format.stats_data(msg)))
    counted = {"packets": 3, "bytes": 300}
    assert data == {"generation": 9, "reasons": {"DROP_DENIED": counted}, "acl_rules": {"5": counted},
                    "tunnels": {"100": counted}, "chain_legs": {"web": {"forward": counted}},
                    "events": {"CLASSIFIED": counted}, "interfaces": {"eth0": counted},
                    "policy_events": {"sent": 7, "rate_limited": 2, "ringbuf_full": 0, "read": 6,
                                      "watch_dropped": 1, "export_dropped": 0, "watchers": 1}}
    text = response_format.stats_text(data)
    assert "DROP_DENIED" in text and "web    forward" in text
    assert "POLICY EVENTS" in text and "rate_limited" in text


def test_apply_text_lists_the_diff() -> None:
    msg = pb2.ApplyPolicyResponse(generation=4, diff=pb2.PolicyDiff(
        acl=pb2.IdDiff(added=[9, 10], changed=[3]), chains=pb2.NameDiff(removed=["web"])))
    data = response_format.apply_data(msg, dry_run=True)
    assert data["diff"]["acl"] == {"added": [9, 10], "removed": [], "changed": [3]}
    lines = response_format.apply_text(data, "p.yaml").splitlines()
    assert lines[0] == "dry run of p.yaml: would change (generation stays 4)"
    assert lines[2].split() == ["acl", "9,10", "-", "3"]
    assert lines[4].split() == ["chains", "-", "web", "-"]


def test_apply_text_says_an_identical_policy_changed_nothing() -> None:
    msg = pb2.ApplyPolicyResponse(generation=4, diff=pb2.PolicyDiff(), unchanged=True)
    data = response_format.apply_data(msg, dry_run=False)
    assert data["unchanged"] and data["generation"] == 4
    head = response_format.apply_text(data, "p.yaml").splitlines()[0]
    assert head == "p.yaml is the policy in force: nothing applied (generation stays 4)"
    dry = response_format.apply_text(response_format.apply_data(msg, dry_run=True), "p.yaml").splitlines()[0]
    assert dry == "dry run of p.yaml: would change nothing (generation stays 4)"


def test_policy_yaml_reads_back() -> None:
    policy = Policy.model_validate({"acl": [{"id": 1, "action": "deny", "match": {"protocol": "tcp",
                                                                                  "dport": "80-90"}}],
                                    "tunnels": [{"vni": 7, "geneve": False}]})
    text = response_format.policy_yaml(policy, 12)
    assert text.startswith("# generation: 12\n") and "dport: 80-90" in text
    assert Policy.model_validate(yaml.safe_load(text)) == policy
    data = response_format.policy_data(policy, 12)
    assert data.pop("generation") == 12 and Policy.model_validate(data) == policy


# --- against the real servicers, with a fake kernel -----------------------------------------------

KNOWN_INTERFACES = {"eth0", "eth1"}


class FakeReconciler:
    """What control.apply.reconcile.Reconciler offers the controller and the servicers, without BPF."""

    def __init__(self) -> None:
        self.applied = DesiredState()
        self.planes: dict[str, SimpleNamespace] = {}
        self.mismatches: dict[str, str] = {}
        self.delay = 0.0

    def restore(self, state: DesiredState) -> None:
        self.apply(state)

    def verify_kept(self, new: DesiredState) -> None: ...

    def index_ahead(self) -> None: ...

    def preflight(self, new: DesiredState) -> None:
        missing = [(f"interfaces[{i}].name", f"interface {iface.name!r} does not exist")
                   for i, iface in enumerate(new.interfaces) if iface.name not in KNOWN_INTERFACES]
        if missing:
            raise MissingInterface(missing)

    def apply(self, new: DesiredState) -> None:
        self.preflight(new)
        time.sleep(self.delay)
        self.applied = new
        self.planes = {i.name: SimpleNamespace(xdp_mode="generic" if i.mode == "generic" else "native",
                                               map_memory=lambda: {"acl_rules": 1 << 20, "config": 336})
                       for i in new.interfaces}

    def stats(self, names: list[str] | None = None) -> Stats:
        c = Counter(2, 200)
        return Stats(rules={r.id: c for r in self.applied.policy.acl}, reasons={"PASS_ALLOWED": c},
                     interfaces={n: c for n in self.planes if names is None or n in names})


@pytest.fixture
def fake_daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, FakeReconciler]]:
    monkeypatch.setattr("control.rpc.service.in_kernel", lambda name: name in KNOWN_INTERFACES)
    directory = tempfile.mkdtemp(prefix="tgcli")
    sock = f"{directory}/t.sock"
    reconciler = FakeReconciler()
    controller = Controller(StateStore(Path(directory) / "state"), reconciler)  # type: ignore[arg-type]
    controller.start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_services(server, controller)
    checker = health.HealthServicer()
    checker.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    try:
        yield sock, reconciler
    finally:
        server.stop(0).wait()
        shutil.rmtree(directory, ignore_errors=True)


def test_round_trip_against_servicers(capsys: pytest.CaptureFixture[str],
                                      fake_daemon: tuple[str, FakeReconciler], tmp_path: Path) -> None:
    sock, _ = fake_daemon
    assert run(capsys, "-s", sock, "attach", "eth0")[0] == 0
    code, out, _ = run(capsys, "-s", sock, "acl", "add", "--id", "5", "--action", "deny", "--protocol", "tcp",
                       "--dport", "22")
    assert (code, out.strip()) == (0, "added ACL rule 5 (generation 2)")
    code, out, _ = run(capsys, "-s", sock, "-j", "acl", "list")
    assert code == 0 and [r["id"] for r in json.loads(out)["acl"]] == [5]
    code, out, _ = run(capsys, "-s", sock, "-j", "status")
    status = json.loads(out)
    assert status["health"] == "SERVING" and status["generation"] == 2
    assert status["interfaces"] == [{"name": "eth0", "requested_mode": "auto", "active_mode": "native",
                                     "attached": True, "kernel_memory_bytes": (1 << 20) + 336}]
    code, out, _ = run(capsys, "-s", sock, "status")
    assert out.splitlines()[-2].split()[-2:] == ["KERNEL", "MEMORY"] and out.rstrip().endswith("1.0 MiB")
    code, out, _ = run(capsys, "-s", sock, "-j", "stats", "--interface", "eth0")
    assert code == 0 and json.loads(out)["interfaces"] == {"eth0": {"packets": 2, "bytes": 200}}
    code, out, _ = run(capsys, "-s", sock, "policy", "show")
    shown = write(tmp_path, "shown.yaml", out)
    code, out, _ = run(capsys, "-s", sock, "-j", "policy", "apply", "-f", shown, "--dry-run")
    assert code == 0 and json.loads(out)["diff"]["acl"] == {"added": [], "removed": [], "changed": []}


@pytest.mark.parametrize(("argv", "expected"), [
    (["acl", "add", "--id", "6", "--action", "allow", "--protocol", "udp", "--dport", "70000"],
     "tidegate: INVALID_ARGUMENT: rule.match.dport.low: "),
    (["acl", "add", "--id", "6", "--action", "allow", "--dport", "80"],
     "tidegate: INVALID_ARGUMENT: rule.match.dport: dport 80 needs protocol tcp, udp or sctp"),
    (["acl", "add", "--id", "6", "--action", "allow", "--protocol", "47", "--sport", "1-2"],
     "tidegate: INVALID_ARGUMENT: rule.match.sport: sport 1-2 needs protocol tcp, udp or sctp (protocol 47"),
    (["acl", "add", "--id", "6", "--action", "allow", "--protocol", "256"],
     "tidegate: INVALID_ARGUMENT: rule.match.protocol_number: 256 is not an IP protocol"),
    (["acl", "add", "--id", "6", "--action", "allow", "--src", "10.0.0.1/8"],
     "tidegate: INVALID_ARGUMENT: rule.match.src: 10.0.0.1/8 has host bits set: write 10.0.0.0/8"),
    (["tunnel", "add", "16777216"], "tidegate: INVALID_ARGUMENT: tunnel.vni: "),
    (["attach", "nope0"], "tidegate: NOT_FOUND: interface.name: interface 'nope0' does not exist"),
    (["detach", "eth1"], "tidegate: NOT_FOUND: interface eth1 is not attached"),
    (["acl", "del", "99"], "tidegate: NOT_FOUND: ACL rule 99 does not exist"),
    (["stats", "--interface", "eth9"], "tidegate: NOT_FOUND: interfaces not attached: eth9"),
])
def test_refusals_exit_1_with_the_status_code(capsys: pytest.CaptureFixture[str],
                                              fake_daemon: tuple[str, FakeReconciler],
                                              argv: list[str], expected: str) -> None:
    sock, _ = fake_daemon
    code, out, err = run(capsys, "-s", sock, *argv)
    assert code == client.EXIT_REFUSED and out == ""
    assert err.startswith(expected), err


def test_duplicate_is_already_exists(capsys: pytest.CaptureFixture[str],
                                     fake_daemon: tuple[str, FakeReconciler]) -> None:
    sock, _ = fake_daemon
    assert run(capsys, "-s", sock, "tunnel", "add", "100")[0] == 0
    code, _, err = run(capsys, "-s", sock, "tunnel", "add", "100", "--no-geneve")
    assert code == client.EXIT_REFUSED
    assert err.startswith("tidegate: ALREADY_EXISTS: tunnel VNI 100 already exists")


def test_deadline_exceeded_exits_1(capsys: pytest.CaptureFixture[str],
                                   fake_daemon: tuple[str, FakeReconciler]) -> None:
    sock, reconciler = fake_daemon
    reconciler.delay = 1.0
    code, _, err = run(capsys, "-s", sock, "--timeout", "0.2", "tunnel", "add", "5")
    assert code == client.EXIT_REFUSED
    assert err.startswith("tidegate: DEADLINE_EXCEEDED: ") and "--timeout" in err
    deadline = time.monotonic() + 5
    while not reconciler.applied.policy.tunnels and time.monotonic() < deadline:
        time.sleep(0.05)  # the daemon finishes the change anyway: that is what the message warns of
    assert [t.vni for t in reconciler.applied.policy.tunnels] == [5]
