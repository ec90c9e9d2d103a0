"""A real daemon as clients nobody here wrote see it: gRPC reflection v1 and v1alpha, the rich
error model (google.rpc.BadRequest in the status details) decoded as a Python client decodes
it, an ApplyPolicy of the policy in force that changes nothing, CLI listings fed back to
`tidegate policy apply`, `promtool check metrics` on the live endpoint, per-rule series only
for the rules marked `metrics: true`, and the kernel memory of an interface against the kernel's
own figures read through the pins. The Node.js client is tests/integration/control/test_node_client.py.

The daemon manages one end of a veth pair; the other end sits in a peer namespace whose UDP
datagrams the rules count. The metrics endpoint listens inside the daemon's namespace.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import descriptor_pb2
from google.rpc import code_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from control.policy.models import Policy
from control.rpc.api import pb2
from control.rpc.status_details import field_violations
from dataplane.kernel.build_settings import Capacities
from dataplane.kernel.owner import OWNER
from testbed.daemon import DaemonProcess
from testbed.kernel_maps import pinned_memlock
from testbed.netns import Link, linked_namespaces

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

IFNAME, PEER_IFNAME = "tge0", "tge1"
ADDR, PEER_ADDR = "10.67.0.1", "10.67.0.2"
METRICS = "127.0.0.1:9151"  # inside the daemon's own namespace
MARKED, UNMARKED = 7, 8     # rule ids: with and without `metrics: true`
PORT_MARKED, PORT_UNMARKED = 9, 19
WAIT = 10.0
RPC_TIMEOUT = 60.0

POLICY = f"""\
acl:
  - {{id: {MARKED}, action: deny, metrics: true, match: {{protocol: udp, dport: {PORT_MARKED}}}}}
  - {{id: {UNMARKED}, action: deny, match: {{protocol: udp, dport: {PORT_UNMARKED}}}}}
  - {{id: 20, priority: 5, action: allow, log: true, description: dns, match: {{protocol: udp, dport: 53}}}}
tunnels:
  - {{vni: 100}}
  - {{vni: 200, geneve: false}}
chains:
  - name: web
    forward:
      interfaces: [{IFNAME}]
      match: {{protocol: tcp, dport: 80}}
      mark: 0x20
      table: 1520
      nexthops: [{{via: {PEER_ADDR}}}]
"""


@pytest.fixture(scope="module")
def link() -> Iterator[Link]:
    with linked_namespaces("tgeco", IFNAME, PEER_IFNAME, ADDR, PEER_ADDR) as made:
        yield made


@pytest.fixture(scope="module")
def daemon(link: Link, daemon_on_veth: Any) -> Iterator[DaemonProcess]:
    with daemon_on_veth(link.ns, IFNAME, metrics_listen=METRICS) as d:
        d.peer = link.peer  # type: ignore[attr-defined]
        yield d


@pytest.fixture
def d(daemon: DaemonProcess, tmp_path: Path) -> DaemonProcess:
    """The module's daemon holding POLICY (and its file in d.policy_file)."""
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    done = daemon.cli("policy", "apply", "-f", str(path))
    assert done.returncode == 0, done.stderr
    daemon.policy_file = path  # type: ignore[attr-defined]
    return daemon


def cli_json(d: DaemonProcess, *args: str) -> Any:
    done = d.cli(*args, as_json=True)
    assert done.returncode == 0, f"tidegate {' '.join(args)}: {done.stderr}"
    return json.loads(done.stdout)


def send_udp(d: DaemonProcess, port: int, count: int) -> None:
    with d.peer.enter():  # type: ignore[attr-defined]
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        for _ in range(count):
            s.sendto(b"tidegate", (ADDR, port))


def possible_cpus() -> int:
    """CPUs the kernel sizes per-CPU maps for: /sys/devices/system/cpu/possible ("0-3,8-11")."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    return sum(int(b) - int(a) + 1 if b else 1
               for a, _, b in (part.partition("-") for part in text.split(",")))


def scrape_text(d: DaemonProcess) -> str:
    with d.ns.enter():  # the listener is in the daemon's namespace
        with urllib.request.urlopen(f"http://{METRICS}/metrics", timeout=WAIT) as answer:
            assert answer.status == 200
            return str(answer.read().decode())


# --- reflection ----------------------------------------------------------------------------------

def _reflect(channel: grpc.Channel, version: str, request: Any) -> Any:
    """One ServerReflectionInfo exchange on grpc.reflection.`version` (the two versions are the
    same messages in two packages: the wire format is one)."""
    call = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                 request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    (answer,) = list(call(iter([request]), timeout=RPC_TIMEOUT))
    return answer


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_and_describes_every_service(daemon: DaemonProcess, version: str) -> None:
    listed = _reflect(daemon.channel, version, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    assert names >= {"tidegate.v1.PolicyService", "tidegate.v1.InterfaceService", "tidegate.v1.StatsService",
                     "tidegate.v1.EventService", "tidegate.v1.TraceService", "grpc.health.v1.Health",
                     "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
    for symbol, wanted in (("tidegate.v1.PolicyService", "ApplyPolicy"),
                           ("grpc.reflection.v1.ServerReflection", "ServerReflectionInfo")):
        answer = _reflect(daemon.channel, version,
                          reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
        files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                 for raw in answer.file_descriptor_response.file_descriptor_proto]
        package, _, service = symbol.rpartition(".")
        [found] = [s for f in files if f.package == package for s in f.service if s.name == service]
        assert wanted in [m.name for m in found.method]


def test_the_stub_of_the_official_v1alpha_package_still_works(daemon: DaemonProcess) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(daemon.channel)
    answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    assert "tidegate.v1.PolicyService" in {s.name for a in answers for s in a.list_services_response.service}


# --- INVALID_ARGUMENT with a BadRequest -------------------------------------------------------------

def _refused(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=RPC_TIMEOUT)
    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    return err


def test_invalid_argument_carries_field_violations(d: DaemonProcess) -> None:
    before = d.policy.GetPolicy(pb2.GetPolicyRequest(), timeout=RPC_TIMEOUT).generation
    bad = pb2.Policy(acl=[
        pb2.AclRule(id=1, action=pb2.ACTION_DENY, match=pb2.Match(protocol=pb2.PROTOCOL_UDP,
                                                                  dport=pb2.PortRange(low=90, high=80))),
        pb2.AclRule(id=2, action=pb2.ACTION_DENY, match=pb2.Match(src="10.0.0.1/8"))])
    err = _refused(d.policy.ApplyPolicy, pb2.ApplyPolicyRequest(policy=bad))
    # the message is the text it always was; the details say the same, field by field
    assert err.details() == ("policy.acl[0].match.dport: low 90 is above high 80; "
                             "policy.acl[1].match.src: 10.0.0.1/8 has host bits set: write 10.0.0.0/8")
    status = rpc_status.from_call(err)  # what a Python client does (grpcio-status)
    assert status is not None and status.code == code_pb2.INVALID_ARGUMENT and status.message == err.details()
    assert field_violations(err) == [
        ("policy.acl[0].match.dport", "low 90 is above high 80"),
        ("policy.acl[1].match.src", "10.0.0.1/8 has host bits set: write 10.0.0.0/8")]
    assert d.policy.GetPolicy(pb2.GetPolicyRequest(), timeout=RPC_TIMEOUT).generation == before

    err = _refused(d.policy.AddAclRule, pb2.AddAclRuleRequest(rule=pb2.AclRule(id=3)))
    assert field_violations(err) == [("rule.action", "Field required")]


def test_refusals_before_the_servicer_carry_them_too(d: DaemonProcess) -> None:
    err = _refused(d.policy.DeleteAclRule, pb2.DeleteAclRuleRequest(id=0))  # the request guard's
    assert [f for f, _ in field_violations(err)] == ["id"] and err.details().startswith("id: ")
    garbage = d.channel.unary_unary("/tidegate.v1.PolicyService/ApplyPolicy")  # bytes in, bytes out
    err = _refused(garbage, b"\xff\xff\xff\xff")
    [(field, reason)] = field_violations(err)
    assert field == "request" and "not a valid ApplyPolicyRequest" in reason


def test_thousands_of_violations_stay_within_the_trailer_budget(d: DaemonProcess) -> None:
    bad = pb2.Policy(acl=[pb2.AclRule(id=i, action=pb2.ACTION_DENY,
                                      match=pb2.Match(src=f"10.0.{i % 256}.1/8")) for i in range(1, 3001)])
    err = _refused(d.policy.ApplyPolicy, pb2.ApplyPolicyRequest(policy=bad))  # not RESOURCE_EXHAUSTED
    found = field_violations(err)
    assert 1 <= len(found) < 3000
    assert found[0] == ("policy.acl[0].match.src", "10.0.1.1/8 has host bits set: write 10.0.0.0/8")


# --- an ApplyPolicy of the policy in force ----------------------------------------------------------

def test_an_identical_apply_keeps_the_generation_and_says_so(d: DaemonProcess) -> None:
    current = d.policy.GetPolicy(pb2.GetPolicyRequest(), timeout=RPC_TIMEOUT)
    generation = current.generation
    again = d.policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=current.policy), timeout=RPC_TIMEOUT)
    assert again.unchanged and again.generation == generation
    assert not (list(again.diff.acl.added) or list(again.diff.acl.changed) or again.diff.settings_changed)
    # another writer's expected_generation stays valid
    kept = d.policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=current.policy, expected_generation=generation),
                                timeout=RPC_TIMEOUT)
    assert kept.unchanged and kept.generation == generation
    dry = d.policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=current.policy, dry_run=True),
                               timeout=RPC_TIMEOUT)
    assert dry.unchanged and dry.generation == generation
    text = d.cli("policy", "apply", "-f", str(d.policy_file))  # type: ignore[attr-defined]
    assert text.returncode == 0 and "nothing applied" in text.stdout, text.stdout + text.stderr
    assert d.policy.GetPolicy(pb2.GetPolicyRequest(), timeout=RPC_TIMEOUT).generation == generation

    changed = pb2.Policy()
    changed.CopyFrom(current.policy)
    changed.acl[0].description = "changed"
    moved = d.policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=changed), timeout=RPC_TIMEOUT)
    assert not moved.unchanged and moved.generation == generation + 1
    assert list(moved.diff.acl.changed) == [current.policy.acl[0].id]


# --- CLI listings are policy files ---------------------------------------------------------------

def test_listings_are_policy_sections_that_apply_takes_back(d: DaemonProcess, tmp_path: Path) -> None:
    want = Policy.model_validate(yaml.safe_load(POLICY))
    listings = {name: cli_json(d, name, "list") for name in ("acl", "tunnel", "chain")}
    assert {name: set(v) for name, v in listings.items()} == {
        "acl": {"generation", "acl"}, "tunnel": {"generation", "tunnels"}, "chain": {"generation", "chains"}}
    shown = cli_json(d, "policy", "show")
    assert set(shown) == {"generation", "settings", "acl", "tunnels", "chains"}

    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    assert d.cli("policy", "apply", "-f", str(empty)).returncode == 0
    acl = tmp_path / "acl.json"
    acl.write_text(json.dumps(listings["acl"]))  # `tidegate -j acl list > acl.json`
    applied = d.cli("policy", "apply", "-f", str(acl), as_json=True)
    assert applied.returncode == 0, applied.stderr
    now = cli_json(d, "policy", "show")
    assert Policy.model_validate({"acl": now["acl"]}).acl == want.acl and now["tunnels"] == []

    merged = tmp_path / "all.json"  # the listings merged (`jq -s add`) are the whole policy again
    merged.write_text(json.dumps({k: v for part in listings.values() for k, v in part.items()}))
    assert d.cli("policy", "apply", "-f", str(merged)).returncode == 0
    back = cli_json(d, "policy", "show")
    generation = back.pop("generation")
    assert Policy.model_validate(back) == want

    whole = tmp_path / "shown.json"
    whole.write_text(json.dumps(cli_json(d, "policy", "show")))  # `tidegate -j policy show > shown.json`
    again = d.cli("policy", "apply", "-f", str(whole), as_json=True)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["unchanged"] and json.loads(again.stdout)["generation"] == generation


# --- metrics -------------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is missing: install Debian's prometheus package (scripts/setup.sh)")
def test_promtool_accepts_the_live_metrics(d: DaemonProcess) -> None:
    send_udp(d, PORT_MARKED, 3)
    text = scrape_text(d)
    assert "tidegate_acl_rule_packets_total" in text  # the scrape holds the per-rule families
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "" and done.stderr.strip() == "", \
        f"promtool check metrics: exit {done.returncode}\n{done.stdout}{done.stderr}"


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_per_rule_series_only_for_marked_rules_and_nothing_twice(d: DaemonProcess) -> None:
    send_udp(d, PORT_MARKED, 4)
    send_udp(d, PORT_UNMARKED, 4)
    deadline = time.monotonic() + WAIT
    while True:
        samples = _samples(scrape_text(d))
        rule_series = {(n, dict(lb)["rule_id"]) for n, lb in samples if n.startswith("tidegate_acl_rule_")}
        marked = samples.get(("tidegate_acl_rule_packets_total",
                              frozenset({"interface": IFNAME, "rule_id": str(MARKED)}.items())), 0)
        if marked >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert marked >= 4
    assert rule_series == {("tidegate_acl_rule_packets_total", str(MARKED)),
                           ("tidegate_acl_rule_bytes_total", str(MARKED))}
    stats = d.stats.GetStats(pb2.GetStatsRequest(), timeout=RPC_TIMEOUT)  # GetStats has every rule
    assert {c.rule_id for c in stats.acl_rules} >= {MARKED, UNMARKED}
    events = {dict(lb)["event"] for n, lb in samples if n == "tidegate_dataplane_events_total"}
    assert events and not {e for e in events if e.startswith("POLICY_")}
    assert not [n for n, _ in samples if n.startswith(("tidegate_interface_packets", "tidegate_up"))]


# --- kernel memory ---------------------------------------------------------------------------------

def test_kernel_memory_is_the_kernels_figure_for_the_pinned_maps(d: DaemonProcess) -> None:
    [status] = cli_json(d, "status")["interfaces"]
    pin_dir = d.pin_dir(IFNAME)
    assert pin_dir is not None
    pins = sorted(pin_dir.iterdir())
    maps = {p.name: pinned_memlock(p) for p in pins if not p.name.startswith("prog_") and p.name != OWNER}
    assert status["kernel_memory_bytes"] == sum(maps.values())
    samples = _samples(scrape_text(d))
    per_map = {dict(lb)["map"]: v for (n, lb), v in samples.items() if n == "tidegate_kernel_memory_bytes"}
    assert per_map == maps
    # the formulas of docs/operations.md for the biggest maps (the daemon runs with the default
    # capacities): the preallocated bucket hashes (keys of 16 and 40 bytes) and a per-CPU array
    # of 16-byte counters
    cpus, caps = possible_cpus(), Capacities()
    hashes = (("acl_buckets4", caps.acl_buckets4, 16), ("acl_buckets", caps.acl_buckets, 40))
    for name, entries, key in hashes:
        heads = 1 << (entries - 1).bit_length()
        overhead = maps[name] - (heads * 16 + (entries + cpus) * (48 + key + 72))
        assert 0 <= overhead < 4096, (name, maps[name])
    overhead = maps["acl_rule_stats"] - caps.acl_rules * (16 * cpus + 8)
    assert 0 <= overhead < 4096, maps["acl_rule_stats"]
    assert "KERNEL MEMORY" in d.cli("status").stdout
