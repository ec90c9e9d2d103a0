"""The daemon's own configuration file (YAML), validated like policy.

    listen:
      unix: /run/tidegate/tidegate.sock   # default; mode 0600
      tcp: null                           # "127.0.0.1:50051" to also listen on TCP
    netns: null                           # a named network namespace (/run/netns/NAME) to manage
    state_dir: /var/lib/tidegate
    pin_root: /sys/fs/bpf/tidegate
    detach_on_exit: false                 # keep enforcing when the daemon stops (hitless restart)
    capacities: {acl_rules: 262144, ...}  # map sizes (dataplane.settings.Capacities)
    log_level: info
    events:
      export: null                        # {path: /var/log/tidegate/events.jsonl}: policy events as
                                          # JSON lines ("-" = stdout); null = not exported
    metrics:
      listen: null                        # "127.0.0.1:9150": Prometheus /metrics; null = off
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from control.models import describe_errors
from dataplane.settings import DEFAULT_PIN_ROOT, Capacities, DataplaneSettings

DEFAULT_SOCKET = Path("/run/tidegate/tidegate.sock")
DEFAULT_STATE_DIR = Path("/var/lib/tidegate")


class ConfigError(ValueError):
    pass


class Listen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    unix: Path | None = DEFAULT_SOCKET
    tcp: str | None = Field(default=None, pattern=r"^\[?[0-9A-Za-z.:-]+\]?:\d{1,5}$")


_HOST_PORT = r"^\[?[0-9A-Za-z.:-]+\]?:\d{1,5}$"


class EventsExport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # a file to append JSON lines to (its directory is created), or "-" for the daemon's stdout
    path: str = Field(min_length=1)


class Events(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    export: EventsExport | None = None


class Metrics(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # HOST:PORT of the Prometheus endpoint (no TLS, no auth: keep it on loopback or a management
    # network); null = no endpoint
    listen: str | None = Field(default=None, pattern=_HOST_PORT)


class DaemonConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: Listen = Listen()
    netns: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    state_dir: Path = DEFAULT_STATE_DIR
    pin_root: Path = DEFAULT_PIN_ROOT
    detach_on_exit: bool = False
    capacities: Capacities = Capacities()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    events: Events = Events()
    metrics: Metrics = Metrics()

    @field_validator("events", "metrics", mode="before")
    @classmethod
    def _null_is_default(cls, value: object) -> object:
        return {} if value is None else value  # `metrics: null` reads as "off", like `listen: null`

    def dataplane_settings(self) -> DataplaneSettings:
        return DataplaneSettings(capacities=self.capacities, pin_root=self.pin_root)


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
