"""Fleet mode's key layout in etcd, the encoding of each value, and the endpoint syntax
(pure: no I/O, no gRPC: the daemon config model uses it).

    <prefix>policies/<name>  a named policy: tidegate.v1.Policy in protobuf wire format, the
                             message ApplyPolicyRequest.policy carries (proto/ is its schema)
    <prefix>nodes/<node>     the name of the policy that node follows (UTF-8 text): one write
                             retargets a node, and pushing a named policy moves every node
                             that follows it
    <prefix>status/<node>    the node's report (JSON, NodeStatus), written by the node itself
                             under a lease it keeps alive: a node that dies vanishes from here

The default prefix is "/tidegate/". A member watches one range, [<prefix>nodes/, the end of
<prefix>policies/): the two families of intent and nothing else, so status writes of other
nodes never wake it. Every node thus sees every named policy's changes; a fleet has a handful
of named policies, so that costs little and one watch keeps one revision to resume from.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from control.policy.models import Policy

DEFAULT_PREFIX = "/tidegate/"
_ENDPOINT = re.compile(r"^(?:(?P<scheme>https?)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[0-9A-Za-z.-]+)"
                       r":(?P<port>\d{1,5})$")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
POLICIES, NODES, STATUS = "policies/", "nodes/", "status/"


def check_name(name: str, what: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r}: use 1 to 128 letters, digits, '_', '.' or '-', starting "
                         "with a letter or digit")
    return name


def parse_endpoint(endpoint: str) -> tuple[str, bool | None]:
    """("host:port", https?) of "host:port", "http://host:port" or "https://host:port"
    (None: no scheme given, the TLS settings decide)."""
    m = _ENDPOINT.fullmatch(endpoint.strip())
    if not m or not 0 < int(m.group("port")) < 65536:
        raise ValueError(f"{endpoint!r} is not an etcd endpoint: write HOST:PORT or http(s)://HOST:PORT")
    scheme = m.group("scheme")
    return f"{m.group('host')}:{m.group('port')}", None if scheme is None else scheme == "https"


def _end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])  # every key family here ends with "/"


@dataclass(frozen=True)
class Layout:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix.endswith("/") or len(self.prefix) < 2:
            raise ValueError(f"key prefix {self.prefix!r}: it must end with '/' (e.g. /tidegate/)")

    def _key(self, family: str, name: str = "") -> bytes:
        return (self.prefix + family + name).encode()

    def policy(self, name: str) -> bytes:
        return self._key(POLICIES, check_name(name, "policy name"))

    def node(self, name: str) -> bytes:
        return self._key(NODES, check_name(name, "node name"))

    def status(self, name: str) -> bytes:
        return self._key(STATUS, check_name(name, "node name"))

    @property
    def policies(self) -> bytes:
        return self._key(POLICIES)

    @property
    def nodes(self) -> bytes:
        return self._key(NODES)

    @property
    def statuses(self) -> bytes:
        return self._key(STATUS)

    def intent_range(self) -> tuple[bytes, bytes]:
        """[nodes/, end of policies/): what a member watches (status/ sorts after it)."""
        return self.nodes, _end(self.policies)

    def parse(self, key: bytes) -> tuple[str, str] | None:
        """(family, name) of one of our keys ("policies/", "web"), None for anything else."""
        text = key.decode(errors="replace")
        if not text.startswith(self.prefix):
            return None
        rest = text[len(self.prefix):]
        for family in (POLICIES, NODES, STATUS):
            if rest.startswith(family) and _NAME.fullmatch(rest[len(family):]):
                return family, rest[len(family):]
        return None


def encode_policy(policy: Policy) -> bytes:
    """A policy key's value: tidegate.v1.Policy, protobuf wire format."""
    from control.rpc import convert

    return bytes(convert.policy_to_proto(policy).SerializeToString())


def decode_policy(value: bytes) -> Policy:
    """The Policy of a policy key's value, validated as ApplyPolicy validates its request:
    google.protobuf.message.DecodeError if it is not the message, InvalidArgument (each field
    and reason, paths under "policy.") if the policy is wrong."""
    from control.rpc import convert
    from control.rpc.api import pb2

    message = pb2.Policy()
    message.ParseFromString(value)
    return convert.validated(convert.policy_from_proto, message, where="policy", encoded=bytes(value))


@dataclass(frozen=True)
class AppliedError:
    """Why the node could not apply a revision: the field paths and reasons, as ApplyPolicy
    would have answered (INVALID_ARGUMENT's `field: reason`), or a single message."""

    policy: str | None
    revision: int
    message: str
    fields: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class NodeStatus:
    """What a node reports under <prefix>status/<node>.

    `policy`/`revision`: the named policy and the mod revision of its key that the data plane
    enforces now (None/0: the empty policy, as for a node no policy is assigned to); `assigned`:
    the policy the node's key names as it last saw it; `generation`: the daemon's policy
    generation; `health`: "ok", or "error" (the last change failed: `error` says which revision
    and why, and the node keeps enforcing `revision`); `time`: when the node wrote this (Unix
    seconds); `last_outage`: [from, to] of the last time the node could not reach etcd (it
    enforced `revision` throughout and caught up after)."""

    node: str
    policy: str | None
    revision: int
    assigned: str | None
    generation: int
    health: str
    time: float
    seen_revision: int = 0  # the etcd revision the node's view is complete up to
    error: AppliedError | None = None
    resyncs: int = 0        # times the node listed everything again (start, compaction)
    reconnects: int = 0
    last_outage: tuple[float, float] | None = None

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, value: bytes) -> NodeStatus:
        data: dict[str, Any] = json.loads(value)
        error = data.pop("error", None)
        if error is not None:
            error = AppliedError(error["policy"], error["revision"], error["message"],
                                 [tuple(f) for f in error.get("fields", [])])  # type: ignore[misc]
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if known.get("last_outage") is not None:
            known["last_outage"] = tuple(known["last_outage"])
        return cls(**known, error=error)
