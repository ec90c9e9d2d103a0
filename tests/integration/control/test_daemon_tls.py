"""The daemon's TCP listener against a real daemon: TLS only, and with mutual TLS a client
without a valid certificate (none, self-signed, another CA's, expired) fails the handshake, so
no request of it ever runs.

Certificates are made for the test (testbed.pki): a CA, the daemon's certificate for 127.0.0.1,
a good client certificate, and the bad ones. The daemon listens on 127.0.0.1 inside its
namespace; testbed.forward relays a local port to it byte for byte, so the TLS handshake is
between the client here and the daemon there.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control.rpc.api import pb2, pb2_grpc
from testbed.daemon import REPO_ROOT, DaemonProcess
from testbed.forward import TcpForwarder
from testbed.netns import Namespace
from testbed.pki import CertificateAuthority, Issued, self_signed

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

DAEMON_ADDRESS, DAEMON_PORT = "127.0.0.1", 50051  # inside the daemon's namespace
RPC_TIMEOUT = 10.0
CLI_TIMEOUT = 60.0


@dataclass
class Pki:
    ca: Path                           # the CA that signs the daemon's and the clients' certificates
    server: tuple[Path, Path]
    clients: dict[str, tuple[Path, Path] | None]  # name -> (cert, key); None = no certificate


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other_ca = CertificateAuthority("tidegate test CA"), CertificateAuthority("someone else's CA")
    issued: dict[str, Issued] = {
        "good": ca.issue("operator", client=True),
        "self_signed": self_signed("operator", client=True),
        "other_ca": other_ca.issue("operator", client=True),
        "expired": ca.issue("operator", client=True, valid_days=(-30, -1)),
    }
    clients: dict[str, tuple[Path, Path] | None] = {name: c.write(d, name) for name, c in issued.items()}
    clients["none"] = None
    server = ca.issue("tidegate", ips=[DAEMON_ADDRESS], server=True).write(d, "server")
    return Pki(ca=ca.write(d, "ca"), server=server, clients=clients)


@pytest.fixture(scope="module")
def daemon(bpf_available: None, pki: Pki) -> Iterator[DaemonProcess]:
    tls = {"cert": str(pki.server[0]), "key": str(pki.server[1]), "client_ca": str(pki.ca)}
    with Namespace(prefix="tgtls") as ns, \
            DaemonProcess(ns, listen_tcp={"address": f"{DAEMON_ADDRESS}:{DAEMON_PORT}", "tls": tls}) as d:
        yield d


@pytest.fixture(scope="module")
def port(daemon: DaemonProcess) -> Iterator[int]:
    with TcpForwarder(daemon.ns, DAEMON_ADDRESS, DAEMON_PORT) as fwd:
        yield fwd.port


def _channel(port: int, pki: Pki, client: str, *, trust: bool = True) -> grpc.Channel:
    pair = pki.clients[client]
    cert, key = (pair[0].read_bytes(), pair[1].read_bytes()) if pair else (None, None)
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes() if trust else None,
                                               private_key=key, certificate_chain=cert)
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


def _rule(rule_id: int) -> pb2.AddAclRuleRequest:
    return pb2.AddAclRuleRequest(rule=pb2.AclRule(id=rule_id, action=pb2.ACTION_DENY,
                                                  match=pb2.Match(src="10.66.0.0/16")))


def _policy(port: int, pki: Pki) -> pb2.GetPolicyResponse:
    with _channel(port, pki, "good") as channel:
        return pb2_grpc.PolicyServiceStub(channel).GetPolicy(pb2.GetPolicyRequest(), timeout=RPC_TIMEOUT)


def test_a_client_with_a_good_certificate_is_served(port: int, pki: Pki) -> None:
    with _channel(port, pki, "good") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=RPC_TIMEOUT)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        before = pb2_grpc.PolicyServiceStub(channel).GetPolicy(pb2.GetPolicyRequest(), timeout=RPC_TIMEOUT)
        added = pb2_grpc.PolicyServiceStub(channel).AddAclRule(_rule(1), timeout=RPC_TIMEOUT)
    assert added.generation == before.generation + 1
    assert [r.id for r in _policy(port, pki).policy.acl] == [1]


@pytest.mark.parametrize("client", ["none", "self_signed", "other_ca", "expired"])
def test_a_client_without_a_valid_certificate_gets_nothing(port: int, pki: Pki, client: str) -> None:
    before = _policy(port, pki)
    with _channel(port, pki, client) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb2_grpc.PolicyServiceStub(channel).AddAclRule(_rule(900), timeout=RPC_TIMEOUT)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
        with pytest.raises(grpc.RpcError):  # not even the health check
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)
    assert _policy(port, pki) == before  # the add never ran


def _tls_probe(port: int, pki: Pki, client: str) -> str:
    """A raw TLS handshake, then one read: the negotiated ALPN protocol, or the TLS error."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.set_alpn_protocols(["h2"])
    pair = pki.clients[client]
    if pair is not None:
        context.load_cert_chain(str(pair[0]), str(pair[1]))
    with socket.create_connection(("127.0.0.1", port), timeout=RPC_TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        try:
            # TLS 1.3 verifies the client's certificate after the client finished its part of
            # the handshake: a refusal arrives as an alert on the first read
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            first = tls.recv(9)
        except (ssl.SSLError, ConnectionResetError) as exc:
            return f"refused: {getattr(exc, 'reason', None) or exc}"
        if not first:  # closed (with or without an alert) before a single HTTP/2 byte
            return "refused: closed"
        return f"{tls.selected_alpn_protocol()} {len(first)}"


@pytest.mark.parametrize("client", ["none", "self_signed", "other_ca", "expired"])
def test_the_handshake_itself_fails_without_a_valid_certificate(port: int, pki: Pki, client: str) -> None:
    assert _tls_probe(port, pki, "good") == "h2 9"  # the daemon's HTTP/2 SETTINGS frame header
    result = _tls_probe(port, pki, client)
    assert result.startswith("refused:"), result


def test_a_client_that_does_not_trust_the_daemon_stops_itself(port: int, pki: Pki) -> None:
    before = _policy(port, pki)
    with _channel(port, pki, "good", trust=False) as channel, pytest.raises(grpc.RpcError) as info:
        pb2_grpc.PolicyServiceStub(channel).AddAclRule(_rule(901), timeout=RPC_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _policy(port, pki) == before


def test_plaintext_is_not_served_on_tcp(port: int, pki: Pki) -> None:
    before = _policy(port, pki)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as info:
        pb2_grpc.PolicyServiceStub(channel).AddAclRule(_rule(902), timeout=RPC_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _policy(port, pki) == before


def _cli(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "control.cli", "-s", f"127.0.0.1:{port}", *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False)


def test_the_cli_talks_to_the_tls_daemon(port: int, pki: Pki) -> None:
    cert, key = pki.clients["good"]  # type: ignore[misc]
    tls = ["--ca", str(pki.ca), "--cert", str(cert), "--key", str(key)]
    added = _cli(port, *tls, "acl", "add", "--id", "7", "--action", "deny", "--src", "10.7.0.0/16")
    assert added.returncode == 0, added.stderr
    listed = _cli(port, "-j", "acl", "list", *tls)  # the options may also follow the command
    assert listed.returncode == 0, listed.stderr
    assert '"10.7.0.0/16"' in listed.stdout
    status = _cli(port, *tls, "status")
    assert status.returncode == 0 and "SERVING" in status.stdout, status


@pytest.mark.parametrize("client", ["none", "other_ca", "expired"])
def test_the_cli_without_a_valid_certificate_is_refused(port: int, pki: Pki, client: str) -> None:
    pair = pki.clients[client]
    tls = ["--ca", str(pki.ca)] + (["--cert", str(pair[0]), "--key", str(pair[1])] if pair else [])
    before = _policy(port, pki)
    answer = _cli(port, *tls, "--timeout", "10", "acl", "add", "--id", "8", "--action", "deny")
    assert answer.returncode == 3, answer
    assert "UNAVAILABLE" in answer.stderr and "TLS handshake" in answer.stderr, answer.stderr
    assert _policy(port, pki) == before


def test_server_only_tls_serves_clients_without_a_certificate(bpf_available: None, pki: Pki) -> None:
    """`require_client_cert: false`, written out: encrypted, and open to whoever reaches the port
    (which the daemon logs as a warning)."""
    tls = {"cert": str(pki.server[0]), "key": str(pki.server[1]), "require_client_cert": False}
    with Namespace(prefix="tgtls") as ns, \
            DaemonProcess(ns, listen_tcp={"address": f"{DAEMON_ADDRESS}:{DAEMON_PORT}", "tls": tls}) as d, \
            TcpForwarder(ns, DAEMON_ADDRESS, DAEMON_PORT) as fwd, _channel(fwd.port, pki, "none") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=RPC_TIMEOUT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert "TLS without client certificates" in d.log_tail(200)
