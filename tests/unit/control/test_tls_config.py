"""The TCP listener's config (TLS or nothing) and the CLI's TLS options, without a daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.cli import client, main
from control.daemon_config import ConfigError, load_config
from testbed.pki import CertificateAuthority


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tls")
    ca = CertificateAuthority()
    cert, key = ca.issue("tidegate", ips=["127.0.0.1"], server=True).write(d, "server")
    _, other_key = ca.issue("other", server=True).write(d, "other")
    garbage = d / "garbage.pem"
    garbage.write_text("not a certificate\n")
    return {"ca": ca.write(d, "ca"), "cert": cert, "key": key, "other_key": other_key, "garbage": garbage,
            "dir": d}


def _load(files: dict[str, Path], text: str) -> object:
    path = files["dir"] / "tidegate.yaml"
    for name, value in files.items():
        text = text.replace("{" + name + "}", str(value))
    path.write_text(text)
    return load_config(path)


def _error(files: dict[str, Path], text: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(files, text)
    return str(info.value).split(": ", 1)[1]


def test_mutual_tls_config_loads(files: dict[str, Path]) -> None:
    config = _load(files, "listen: {tcp: {address: '0.0.0.0:50051', "
                          "tls: {cert: {cert}, key: {key}, client_ca: {ca}}}}\n")
    tcp = config.listen.tcp  # type: ignore[attr-defined]
    assert tcp.address == "0.0.0.0:50051" and tcp.tls.require_client_cert
    key, chain, ca = tcp.tls.credentials_files()
    assert b"PRIVATE KEY" in key and b"CERTIFICATE" in chain and ca == files["ca"].read_bytes()


def test_server_only_tls_must_be_asked_for(files: dict[str, Path]) -> None:
    config = _load(files, "listen: {tcp: {address: '[::]:50051', "
                          "tls: {cert: {cert}, key: {key}, require_client_cert: false}}}\n")
    assert config.listen.tcp.tls.client_ca is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(("text", "field", "says"), [
    ("listen: {tcp: '127.0.0.1:50051'}\n", "listen.tcp.tls", "TCP is served only with TLS"),
    ("listen: {tcp: {address: '127.0.0.1:50051'}}\n", "listen.tcp.tls", "TCP is served only with TLS"),
    ("listen: {tcp: {address: '127.0.0.1:50051', tls: null}}\n", "listen.tcp.tls", "only with TLS"),
    ("listen: {tcp: {address: '127.0.0.1:50051', insecure: true}}\n", "listen.tcp.insecure", "not permitted"),
    ("listen: {tcp: {address: 'localhost', tls: {cert: {cert}, key: {key}, client_ca: {ca}}}}\n",
     "listen.tcp.address", "pattern"),
    ("listen: {tcp: {address: '127.0.0.1:1', tls: {cert: {cert}, key: {key}}}}\n", "listen.tcp.tls",
     "client_ca is not set"),
    ("listen: {tcp: {address: '127.0.0.1:1', tls: {cert: /nonexistent.pem, key: {key}, client_ca: {ca}}}}\n",
     "listen.tcp.tls.cert", "cannot read the server certificate"),
    ("listen: {tcp: {address: '127.0.0.1:1', tls: {cert: {cert}, key: {garbage}, client_ca: {ca}}}}\n",
     "listen.tcp.tls.key", "not a PEM file"),
    ("listen: {tcp: {address: '127.0.0.1:1', tls: {cert: {cert}, key: {key}, client_ca: {key}}}}\n",
     "listen.tcp.tls.client_ca", "not a CA certificate"),
    ("listen: {tcp: {address: '127.0.0.1:1', tls: {cert: {cert}, key: {other_key}, client_ca: {ca}}}}\n",
     "listen.tcp.tls", "do not make a usable pair"),
    ("listen: {tcp: {address: '127.0.0.1:1', tls: {cert: {cert}, key: {key}, client_ca: {ca}, x: 1}}}\n",
     "listen.tcp.tls.x", "not permitted"),
])
def test_a_tcp_listener_without_usable_tls_is_refused_naming_the_field(
        files: dict[str, Path], text: str, field: str, says: str) -> None:
    error = _error(files, text)
    assert any(e.startswith(f"{field}: ") and says in e for e in error.split("; ")), error


def test_the_cli_refuses_tls_options_for_a_unix_socket(capsys: pytest.CaptureFixture[str],
                                                       files: dict[str, Path]) -> None:
    code = main.main(["-s", "/run/nowhere.sock", "--ca", str(files["ca"]), "status"])
    assert code == client.EXIT_USAGE
    assert "--ca: TLS options are for a daemon's TCP listener" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "says"), [
    (["--cert", "{cert}"], "--cert and --key go together"),
    (["--key", "{key}"], "--cert and --key go together"),
    (["--ca", "/nonexistent.pem"], "--ca /nonexistent.pem: cannot read it"),
    (["--ca", "{garbage}"], "not a PEM file"),
])
def test_the_cli_checks_its_tls_files_before_connecting(
        capsys: pytest.CaptureFixture[str], files: dict[str, Path], args: list[str], says: str) -> None:
    args = [a.format(**files) for a in args]
    code = main.main(["-s", "127.0.0.1:1", *args, "status"])
    assert code == client.EXIT_USAGE
    assert says in capsys.readouterr().err


def test_the_cli_takes_tls_files_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str],
                                                      files: dict[str, Path]) -> None:
    monkeypatch.setenv("TIDEGATE_CERT", str(files["cert"]))
    code = main.main(["-s", "127.0.0.1:1", "status"])
    assert code == client.EXIT_USAGE and "--cert and --key go together" in capsys.readouterr().err
    monkeypatch.setenv("TIDEGATE_KEY", str(files["key"]))
    monkeypatch.setenv("TIDEGATE_CA", str(files["ca"]))
    code = main.main(["-s", "127.0.0.1:1", "--timeout", "2", "status"])  # nobody listens on port 1
    assert code == client.EXIT_UNREACHABLE
    assert "TLS handshake" in capsys.readouterr().err
    monkeypatch.setenv("TIDEGATE_SOCKET", "/run/nowhere.sock")  # a Unix socket ignores them
    assert main.main(["status"]) == client.EXIT_UNREACHABLE


def test_serve_refuses_plaintext_tcp_before_starting(capsys: pytest.CaptureFixture[str],
                                                     files: dict[str, Path]) -> None:
    config = files["dir"] / "plaintext.yaml"
    config.write_text("listen: {tcp: '0.0.0.0:50051'}\n")
    assert main.main(["serve", "-c", str(config)]) == client.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"tidegate: {config}: listen.tcp.tls: TCP is served only with TLS" in err, err
