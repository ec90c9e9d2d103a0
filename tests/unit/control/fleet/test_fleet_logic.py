"""Fleet mode's pure parts: key layout, the watcher's copy, targets, status, config, CLI usage."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from control.cli.main import main as cli_main
from control.daemon_config import DaemonConfig
from control.fleet.etcd import Kv, prefix_end
from control.fleet.keys import AppliedError, Layout, NodeStatus, check_name, encode_policy, parse_endpoint
from control.fleet.member import Refused, Target, target_of, target_policy
from control.fleet.operator import NodeView
from control.fleet.watcher import Mirror
from control.policy.models import Policy
from control.rpc.api import pb2
from testbed.etcd import free_port

LAYOUT = Layout("/t/")


def kv(key: bytes, value: bytes, rev: int) -> Kv:
    return Kv(key, value, rev)


def event(kind: int, key: bytes, value: bytes, rev: int) -> SimpleNamespace:
    record = SimpleNamespace(key=key, value=value, mod_revision=rev, create_revision=rev, version=1, lease=0)
    return SimpleNamespace(type=kind, kv=record)


def test_layout_keys_and_the_watched_range_leaves_status_out() -> None:
    assert LAYOUT.policy("web") == b"/t/policies/web" and LAYOUT.node("n1") == b"/t/nodes/n1"
    start, end = LAYOUT.intent_range()
    for key in (LAYOUT.node("a"), LAYOUT.node("zz"), LAYOUT.policy("a"), LAYOUT.policy("zzz")):
        assert start <= key < end
    assert not start <= LAYOUT.status("n1") < end
    assert LAYOUT.parse(b"/t/status/n1") == ("status/", "n1") and LAYOUT.parse(b"/other/x") is None
    assert prefix_end(b"/t/") == b"/t0" and prefix_end(b"\xff") == b"\0"


@pytest.mark.parametrize("bad", ["", "-x", "a b", "a/b", "x" * 129, "é"])
def test_names_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="letters, digits"):
        check_name(bad, "node")


def test_endpoints() -> None:
    assert parse_endpoint("10.0.0.1:2379") == ("10.0.0.1:2379", None)
    assert parse_endpoint("https://etcd-1.example:2379") == ("etcd-1.example:2379", True)
    assert parse_endpoint("http://[::1]:2379") == ("[::1]:2379", False)
    for bad in ("10.0.0.1", "ftp://h:1", "h:0", "h:70000"):
        with pytest.raises(ValueError, match="not an etcd endpoint"):
            parse_endpoint(bad)


def test_mirror_list_sweeps_and_a_transaction_moves_every_key() -> None:
    m = Mirror()
    m.reset([kv(b"a", b"1", 2), kv(b"b", b"1", 3)], 3)
    assert m.reset([kv(b"a", b"1", 2)], 9) == [b"b"] and set(m.kvs) == {b"a"}  # b deleted while away
    changed = m.apply([event(0, b"x", b"1", 10), event(0, b"y", b"1", 10), event(1, b"a", b"", 10)])
    assert changed and set(m.kvs) == {b"x", b"y"} and m.revision == 10


def _view(*kvs: Kv) -> dict[bytes, Kv]:
    return {k.key: k for k in kvs}


def test_targets() -> None:
    policy = kv(LAYOUT.policy("web"), encode_policy(Policy()), 5)
    assert target_of(_view(policy), LAYOUT, "n1", 7) == Target(None, None, 7)  # no assignment
    assigned = kv(LAYOUT.node("n1"), b"web", 6)
    assert target_of(_view(policy, assigned), LAYOUT, "n1", 7) == Target("web", policy, 7)
    dangling = kv(LAYOUT.node("n1"), b"gone", 6)
    assert target_of(_view(policy, dangling), LAYOUT, "n1", 7) == Target("gone", None, 7)


def test_target_policies_and_refusals() -> None:
    assert target_policy(Target(None, None, 1)) == Policy()  # unassigned: the empty policy
    with pytest.raises(Refused, match="does not exist") as missing:
        target_policy(Target("gone", None, 1))
    assert not missing.value.retry
    with pytest.raises(Refused, match="protobuf") as garbage:
        target_policy(Target("web", kv(b"k", b"\xff\xff\xff", 4), 4))
    assert garbage.value.error.revision == 4
    bad = pb2.Policy(acl=[pb2.AclRule(id=1, action=pb2.ACTION_DENY, match=pb2.Match(
        protocol=pb2.PROTOCOL_UDP, dport=pb2.PortRange(low=9, high=1)))])
    with pytest.raises(Refused) as invalid:
        target_policy(Target("web", kv(b"k", bad.SerializeToString(), 4), 4))
    assert [f for f, _ in invalid.value.error.fields] == ["policy.acl[0].match.dport"]
    assert not invalid.value.retry  # wrong everywhere: it waits for the next push


def _status(**kw: object) -> NodeStatus:
    base = {"node": "n1", "policy": "web", "revision": 5, "assigned": "web", "generation": 2, "health": "ok",
            "time": 1.0}
    return NodeStatus(**{**base, **kw})  # type: ignore[arg-type]


def test_status_round_trip_and_convergence() -> None:
    s = _status(error=AppliedError("web", 6, "policy.acl[0]: bad", [("policy.acl[0]", "bad")]),
                last_outage=(1.0, 2.0))
    assert NodeStatus.decode(s.encode()) == s
    assert NodeView("n1", "web", 5, _status()).converged
    assert not NodeView("n1", "web", 6, _status()).converged          # a newer revision is out
    assert not NodeView("n1", "web", 5, _status(health="error")).converged
    assert not NodeView("n1", "web", 5, None).converged               # no status: down or cut off
    assert NodeView("n1", None, 0, _status(policy=None, revision=0, assigned=None)).converged
    assert "revision 6" in (NodeView("n1", "web", 6, s).problem or "")


@pytest.mark.parametrize("fleet, message", [
    ({"endpoints": []}, "at least 1"),
    ({"endpoints": ["http://a:1", "https://b:1"]}, "mixes http"),
    ({"endpoints": ["http://a:1"], "tls": {}}, "https"),
    ({"endpoints": ["a:1"], "user": "u"}, "password_file"),
    ({"endpoints": ["a:1"], "node": "bad name"}, "pattern"),
    ({"endpoints": ["a:1"], "prefix": "no-slash"}, "pattern"),
    ({"endpoints": ["a:1"], "status_ttl": 1}, "greater than or equal to 2"),
])
def test_fleet_config_refused(fleet: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DaemonConfig.model_validate({"fleet": {"node": "n1", **fleet}})


def test_fleet_config_tls_needs_cert_and_key_together(tmp_path: Path) -> None:
    from testbed.pki import CertificateAuthority

    ca = CertificateAuthority()
    cert, key = ca.issue("n1", client=True).write(tmp_path, "n1")
    with pytest.raises(ValueError, match="go together"):
        DaemonConfig.model_validate({"fleet": {"endpoints": ["a:1"], "tls": {"cert": str(cert)}}})
    ok = DaemonConfig.model_validate({"fleet": {"endpoints": ["a:1"], "node": "n1", "tls": {
        "ca": str(ca.write(tmp_path, "ca")), "cert": str(cert), "key": str(key)}}})
    assert ok.fleet is not None and "nodes/n1" in ok.fleet.describe()


def test_cli_validates_the_file_before_reaching_etcd(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDEGATE_ETCD_ENDPOINTS", raising=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("acl: [{id: 1, action: deny, match: {protocol: udp, dport: 9-1}}]\n")
    nowhere = f"127.0.0.1:{free_port()}"
    assert cli_main(["fleet", "push", "-f", str(bad), "--policy", "web", "--endpoints", nowhere]) == 2
    assert "acl[0].match.dport" in capsys.readouterr().err
    assert cli_main(["fleet", "status", "--endpoints", nowhere, "--timeout", "2"]) == 3
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert cli_main(["fleet", "status"]) == 2  # no endpoints anywhere
    assert cli_main(["fleet", "assign", "bad name", "--policy", "web", "--endpoints", nowhere]) == 2
