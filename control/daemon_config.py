"""The daemon's own configuration file (YAML), validated like policy.

    listen:
      unix: /run/tidegate/tidegate.sock   # default; mode 0600
      tcp: null                           # also listen on TCP, only with TLS:
        # address: "0.0.0.0:50051"
        # tls: {cert: server.pem, key: server.key, client_ca: clients-ca.pem}   # mutual TLS
    netns: null                           # a named network namespace (/run/netns/NAME) to manage
    state_dir: /var/lib/tidegate
    pin_root: /sys/fs/bpf/tidegate
    detach_on_exit: false                 # keep enforcing when the daemon stops (hitless restart)
    capacities: {acl_rules: 262144, ...}  # map sizes (dataplane.kernel.build_settings.Capacities)
    preallocate_buckets: true             # bucket hashes made whole at attach (fixed memory, no
                                          # deferred frees); false: memory as buckets come
    flow_cache_insert_one_in: 8           # an ACL search caches its result for 1 packet in N (the
                                          # flow cache: docs/classifier.md); capacities.acl_flows: 0
                                          # builds without it
    log_level: info
    edit_priority: 1                      # SCHED_FIFO priority of the thread serving a single edit
                                          # (AddAclRule, ...); null: none (control.rpc.edit_priority)
    events:
      export: null                        # {path: /var/log/tidegate/events.jsonl}: policy events as
                                          # JSON lines ("-" = stdout); null = not exported
    metrics:
      listen: null                        # "127.0.0.1:9150": Prometheus /metrics; null = off
      top_rules: 0                        # also per-rule series for the N busiest rules (0: only
                                          # the rules marked `metrics: true`)
    fleet: null                           # a fleet member: the policy comes from etcd (docs/fleet.md)
      # endpoints: ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
      # prefix: /tidegate/                # keys: PREFIXpolicies/NAME, PREFIXnodes/NODE, PREFIXstatus/NODE
      # node: edge-1                      # default: the host name
      # tls: {ca: etcd-ca.pem, cert: node.pem, key: node.key}     # client certificate for etcd
      # user: tidegate                    # etcd authentication (password_file: its password)
      # status_ttl: 10                    # seconds a dead node's status key outlives it
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from control.fleet.keys import DEFAULT_PREFIX, NAME_PATTERN, check_name, parse_endpoint
from control.policy.models import describe_errors
from control.rpc.edit_priority import DEFAULT_PRIORITY
from dataplane.kernel.build_settings import (
    DEFAULT_PIN_ROOT,
    Capacities,
    DataplaneSettings,
    insert_one_in_field,
)

DEFAULT_SOCKET = Path("/run/tidegate/tidegate.sock")
DEFAULT_STATE_DIR = Path("/var/lib/tidegate")


class ConfigError(ValueError):
    pass


_HOST_PORT = r"^\[?[0-9A-Za-z.:-]+\]?:\d{1,5}$"
_TLS_EXAMPLE = "{cert: server.pem, key: server.key, client_ca: clients-ca.pem}"


def _readable(path: Path, what: str) -> Path:
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in head:
        raise ValueError(f"{path}: not a PEM file (no -----BEGIN line): write the {what} in PEM")
    return path


def _usable_pair(cert: Path, key: Path, protocol: int) -> None:
    """The key must be the certificate's: refused at config load, not at the first handshake."""
    try:
        ssl.SSLContext(protocol).load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise ValueError(f"cert {cert} and key {key} do not make a usable pair ({exc.reason or exc}): "
                         "the key must be the certificate's, unencrypted") from None


class Tls(BaseModel):
    """TLS of the TCP listener. With `require_client_cert` (the default) every client must show a
    certificate that `client_ca` signed and that has not expired, or the handshake fails and no
    request runs: anyone holding such a certificate controls the data plane."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cert: Path        # the server's certificate (PEM; its chain may follow it in the file)
    key: Path         # the server certificate's private key (PEM, unencrypted)
    client_ca: Path | None = None  # the CA certificate(s) that sign client certificates (PEM)
    require_client_cert: bool = True

    @field_validator("cert")
    @classmethod
    def _cert_file(cls, value: Path) -> Path:
        return _readable(value, "server certificate")

    @field_validator("key")
    @classmethod
    def _key_file(cls, value: Path) -> Path:
        return _readable(value, "server private key")

    @field_validator("client_ca")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            _readable(value, "client CA certificate")
            try:
                ssl.create_default_context(cafile=str(value))
            except ssl.SSLError as exc:
                raise ValueError(f"{value}: not a CA certificate in PEM: {exc.reason or exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Tls:
        if self.require_client_cert and self.client_ca is None:
            raise ValueError("require_client_cert is true but client_ca is not set: give the CA that "
                             "signs client certificates (mutual TLS), or set require_client_cert: false "
                             "to let any client that reaches the port use the API over TLS")
        _usable_pair(self.cert, self.key, ssl.PROTOCOL_TLS_SERVER)
        return self

    def credentials_files(self) -> tuple[bytes, bytes, bytes | None]:
        """(key, certificate chain, client CA or None), read now (at the daemon's start)."""
        ca = self.client_ca.read_bytes() if self.client_ca is not None else None
        return self.key.read_bytes(), self.cert.read_bytes(), ca


class TcpListen(BaseModel):
    """The TCP listener: served only over TLS. There is no plaintext opt-out: local clients use
    the Unix socket, and a lab can forward that socket over SSH (`ssh -L PORT:SOCKET`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = Field(pattern=_HOST_PORT)  # HOST:PORT, e.g. "0.0.0.0:50051" or "[::]:50051"
    tls: Tls | None = Field(default=None, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _bare_address(cls, value: Any) -> Any:
        return {"address": value} if isinstance(value, str) else value  # `tcp: "HOST:PORT"`

    @field_validator("tls")
    @classmethod
    def _tls_required(cls, value: Tls | None) -> Tls | None:
        if value is None:
            raise ValueError("TCP is served only with TLS: add listen.tcp.tls: " + _TLS_EXAMPLE
                             + " (or use the Unix socket, listen.unix)")
        return value


class Listen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    unix: Path | None = DEFAULT_SOCKET
    tcp: TcpListen | None = None


class EventsExport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # a file to append JSON lines to (its directory is created), or "-" for the daemon's stdout
    path: str = Field(min_length=1)


class Events(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    export: EventsExport | None = None


TOP_RULES_MAX = 1000


class Metrics(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # HOST:PORT of the Prometheus endpoint (no TLS, no auth: keep it on loopback or a management
    # network); null = no endpoint
    listen: str | None = Field(default=None, pattern=_HOST_PORT)
    # Per-rule series (tidegate_acl_rule_*) exist for the rules marked `metrics: true` in the
    # policy, and, with top_rules N > 0, for the N rules of each interface that matched the most
    # packets (a scrape then reads every rule's counters: ~20 us per rule). 0 = marked rules only.
    top_rules: int = Field(default=0, ge=0, le=TOP_RULES_MAX)


def _host_name() -> str:
    import socket

    return socket.gethostname().split(".")[0]


class FleetTls(BaseModel):
    """TLS towards etcd: the CA that signed etcd's certificate, and this node's client
    certificate (etcd started with --client-cert-auth accepts only clients its CA signed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca: Path | None = None    # null: the system's trusted CAs
    cert: Path | None = None  # this node's client certificate (PEM)
    key: Path | None = None   # its private key (PEM, unencrypted)
    server_name: str | None = None  # the name in etcd's certificate, if not the endpoint's host

    @field_validator("ca", "cert", "key")
    @classmethod
    def _pem_file(cls, value: Path | None) -> Path | None:
        return None if value is None else _readable(value, "PEM file")

    @model_validator(mode="after")
    def _pair(self) -> FleetTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: this node's client certificate and its private key")
        if self.cert is not None and self.key is not None:
            _usable_pair(self.cert, self.key, ssl.PROTOCOL_TLS_CLIENT)
        return self

    def files(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(ca, cert, key) contents, read now."""
        return tuple(None if p is None else p.read_bytes() for p in (self.ca, self.cert, self.key))  # type: ignore[return-value]


class Fleet(BaseModel):
    """Fleet mode (docs/fleet.md): the policy is the one etcd assigns to this node; local policy
    changes are refused. Interfaces stay local (attach them with `tidegate attach`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoints: list[str] = Field(min_length=1)  # HOST:PORT, http://HOST:PORT or https://HOST:PORT
    prefix: str = Field(default=DEFAULT_PREFIX, pattern=r"^/?[A-Za-z0-9_./-]*/$", max_length=200)
    node: str = Field(default_factory=_host_name, pattern=NAME_PATTERN)
    tls: FleetTls | None = None
    user: str | None = Field(default=None, min_length=1)
    password_file: Path | None = None  # the etcd user's password (first line)
    status_ttl: int = Field(default=10, ge=2, le=3600)
    timeout: float = Field(default=5.0, gt=0, le=300)  # seconds per etcd request

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        parsed = [parse_endpoint(e) for e in value]
        if len({https for _, https in parsed if https is not None}) > 1:
            raise ValueError("mixes http:// and https:// endpoints: one cluster speaks one of them")
        return value

    @field_validator("node")
    @classmethod
    def _node(cls, value: str) -> str:
        return check_name(value, "node")

    @model_validator(mode="after")
    def _consistent(self) -> Fleet:
        if any(parse_endpoint(e)[1] is False for e in self.endpoints) and self.tls is not None:
            raise ValueError("tls is set but the endpoints say http://: write https:// (or HOST:PORT)")
        if (self.user is None) != (self.password_file is None):
            raise ValueError("user and password_file go together (with client certificates alone, "
                             "etcd takes the user from the certificate's common name: set neither)")
        if self.password_file is not None:
            try:
                self.password_file.read_text()
            except OSError as exc:
                raise ValueError(f"password_file {self.password_file}: {exc.strerror or exc}") from None
        return self

    def password(self) -> str | None:
        if self.password_file is None:
            return None
        lines = self.password_file.read_text().splitlines()
        return lines[0] if lines else ""

    def describe(self) -> str:
        """Where the policy comes from, for messages: etcd's endpoints and this node's key."""
        return f"the fleet (etcd {', '.join(self.endpoints)}, key {self.prefix}nodes/{self.node})"


class DaemonConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: Listen = Listen()
    netns: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    state_dir: Path = DEFAULT_STATE_DIR
    pin_root: Path = DEFAULT_PIN_ROOT
    detach_on_exit: bool = False
    capacities: Capacities = Capacities()
    preallocate_buckets: bool = True
    flow_cache_insert_one_in: int = insert_one_in_field()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    edit_priority: int | None = Field(default=DEFAULT_PRIORITY, ge=1, le=99)
    events: Events = Events()
    metrics: Metrics = Metrics()
    fleet: Fleet | None = None

    @field_validator("events", "metrics", mode="before")
    @classmethod
    def _null_is_default(cls, value: object) -> object:
        return {} if value is None else value  # `metrics: null` reads as "off", like `listen: null`

    def dataplane_settings(self) -> DataplaneSettings:
        return DataplaneSettings(capacities=self.capacities, preallocate_buckets=self.preallocate_buckets,
                                 flow_cache_insert_one_in=self.flow_cache_insert_one_in,
                                 pin_root=self.pin_root, state_dir=self.state_dir)


def load_config(path: Path | None) -> DaemonConfig:
    if path is None:
        return DaemonConfig()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        return DaemonConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + "; ".join(f"{f}: {m}" for f, m in describe_errors(exc))) from exc
