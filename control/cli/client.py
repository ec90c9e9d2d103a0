"""The CLI's connection to the daemon: the target (-s), TLS material, gRPC stubs with deadlines,
and the errors and exit codes a command ends with. Shared by every `tidegate` command."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from control.rpc.api import pb2_grpc

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
SOCKET_ENV = "TIDEGATE_SOCKET"
TLS_ENV = {"ca": "TIDEGATE_CA", "cert": "TIDEGATE_CERT", "key": "TIDEGATE_KEY"}
DEFAULT_TIMEOUT = 120.0
MAX_MESSAGE_BYTES = 256 << 20  # as control.daemon: a 100k-rule policy is tens of MiB of protobuf
_TCP_TARGET = re.compile(r"^\[?[0-9A-Za-z.:-]+\]?:\d{1,5}$")


class CliError(Exception):
    """Ends the command: `lines` go to stderr, each as `tidegate: <line>`, and `code` is the exit."""

    def __init__(self, code: int, *lines: str) -> None:
        super().__init__(lines[0] if lines else "")
        self.code = code
        self.lines = list(lines)


@dataclass
class Out:
    """What a command prints: `data` as JSON with -j, else `text`."""

    data: dict[str, Any]
    text: str


# --- the connection -------------------------------------------------------------------------------

def resolve_target(socket: str) -> tuple[str, Path | None]:
    """(gRPC target, socket path or None for TCP) of a -s value."""
    if socket.startswith("unix:"):
        path = socket.removeprefix("unix:")
        path = "/" + path.lstrip("/") if path.startswith("//") else path  # unix:///abs
    elif "/" not in socket and _TCP_TARGET.fullmatch(socket):
        return socket, None
    else:
        path = socket
    absolute = Path(os.path.abspath(path))
    return f"unix:{absolute}", absolute


_START_HINT = "start the daemon with `tidegate serve` (or point -s / $TIDEGATE_SOCKET at its socket)"
_TLS_HINT = ("is the daemon listening there? If it is, the TLS handshake failed: --ca must be the CA that "
             "signed the daemon's certificate, whose names must include HOST (else --tls-server-name), "
             "and --cert/--key a client certificate that the daemon's client_ca signed, not expired")


@dataclass(frozen=True)
class ClientTls:
    """PEM contents for a TCP connection (None: not given)."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None


def _pem(path: str, option: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(EXIT_USAGE, f"{option} {path}: cannot read it: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise CliError(EXIT_USAGE, f"{option} {path}: not a PEM file (no -----BEGIN line)")
    return data


def client_tls(args: argparse.Namespace, socket: str) -> ClientTls | None:
    """The TLS material of the command line (and $TIDEGATE_CA/_CERT/_KEY) for a TCP target;
    None for a Unix socket, where TLS options are a usage error."""
    given = {"ca": args.ca, "cert": args.cert, "key": args.key}
    if resolve_target(socket)[1] is not None:
        flags = [f"--{k}" for k, v in given.items() if v]
        flags += ["--tls-server-name"] if args.tls_server_name else []
        if flags:
            raise CliError(EXIT_USAGE, f"{', '.join(flags)}: TLS options are for a daemon's TCP listener "
                                       f"(-s HOST:PORT), not the Unix socket {socket}")
        return None
    paths = {k: v or os.environ.get(TLS_ENV[k]) or None for k, v in given.items()}
    if (paths["cert"] is None) != (paths["key"] is None):
        raise CliError(EXIT_USAGE, "--cert and --key go together: this client's certificate and its "
                                   "private key")
    files = {k: None if v is None else _pem(v, f"--{k}") for k, v in paths.items()}
    return ClientTls(ca=files["ca"], cert=files["cert"], key=files["key"], server_name=args.tls_server_name)


class Rpc:
    """Stubs of the daemon's services over one channel; every call has a deadline.

    Nothing touches the socket before the first call, so a command validates its files first.
    A TCP target is always reached over TLS (`tls`: the CA, client certificate and key to use).
    """

    def __init__(self, socket: str, timeout: float, tls: ClientTls | None = None) -> None:
        self.socket = socket
        self.timeout = timeout
        self.target, self.path = resolve_target(socket)
        options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                          ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        if self.path is not None:
            self.channel = grpc.insecure_channel(self.target, options=options)
        else:  # the daemon serves TCP only with TLS
            tls = tls or ClientTls()
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca, private_key=tls.key,
                                                       certificate_chain=tls.cert)
            self.channel = grpc.secure_channel(self.target, credentials, options=options)
        self.interfaces = pb2_grpc.InterfaceServiceStub(self.channel)
        self.policy = pb2_grpc.PolicyServiceStub(self.channel)
        self.stats = pb2_grpc.StatsServiceStub(self.channel)
        self.events = pb2_grpc.EventServiceStub(self.channel)
        self.trace = pb2_grpc.TraceServiceStub(self.channel)

    def _check_socket(self) -> None:
        path = self.path
        if path is None:
            return
        if not path.exists():
            raise CliError(EXIT_UNREACHABLE, f"UNAVAILABLE: no daemon socket at {path}: {_START_HINT}")
        if not os.access(path, os.R_OK | os.W_OK):
            raise CliError(EXIT_UNREACHABLE, f"UNAVAILABLE: no permission to use the daemon socket {path} "
                                             "(mode 0600, owned by the daemon's user): run as that user")

    def call(self, method: Callable[..., Any], request: Any) -> Any:
        self._check_socket()
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self.error(exc) from None

    def stream(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        """A server stream (no deadline unless given); iterate it with `follow`."""
        self._check_socket()
        return method(request, timeout=timeout)

    def error(self, exc: grpc.RpcError) -> CliError:
        code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
        where = self.path or self.target
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = _START_HINT if self.path is not None else _TLS_HINT
            return CliError(EXIT_UNREACHABLE, f"UNAVAILABLE: cannot reach the daemon at {where} "
                                              f"({details}): {hint}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return CliError(EXIT_REFUSED, f"DEADLINE_EXCEEDED: no answer from the daemon at {where} within "
                                          f"{self.timeout:g} s; a change may still be under way: check with "
                                          "`tidegate status`, and raise --timeout for big policies")
        return CliError(EXIT_REFUSED, f"{code.name}: {details}")

    def health(self) -> str:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        self._check_socket()
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
                return "UNKNOWN"
            raise self.error(exc) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))

    def close(self) -> None:
        self.channel.close()
