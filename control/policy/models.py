"""Policy as operators write it: the single source of truth for its shape and its rules.

Everything the daemon accepts (YAML policy files, gRPC requests after control.rpc.convert) becomes
these frozen models first. A model that exists is valid on its own and against its siblings
(unique ids, marks, tables, referenced interfaces); what still can fail later is only what
depends on the machine (an interface that vanished, a map capacity), and that is checked
before anything is written.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from functools import lru_cache
from operator import attrgetter
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyAddress,
    IPvAnyNetwork,
    PlainSerializer,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from dataplane import abi, protocols

U32_MAX = (1 << 32) - 1
PORT_MAX = 65535
IFNAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,14}$"  # IFNAMSIZ - 1 characters, no '/' or spaces
NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,31}$"
# Routing tables and ip-rule priorities Tidegate owns: it creates and deletes only inside these.
TABLE_MIN, TABLE_MAX = 1000, 1999
RULE_PRIORITY_MIN, RULE_PRIORITY_MAX = 10000, 10999
_PORTED_NAMES = [name for name in protocols.NUMBERS if name in protocols.PORTED]
_ID = attrgetter("id")


SHOWN_MAX = 40  # characters of a refused value quoted back in a message


def shown(value: str) -> str:
    """A refused value as an error message quotes it: repr() (control characters escaped), cut
    to SHOWN_MAX characters (a message travels in a gRPC trailer of at most 8 KiB)."""
    if len(value) <= SHOWN_MAX:
        return repr(value)
    return f"{value[:SHOWN_MAX]!r}... ({len(value)} characters)"


def _no_zone(value: object) -> object:
    """ipaddress accepts a zone ("fe80::1%eth0", any text after the %), which means nothing in a
    policy and would carry arbitrary text into the state."""
    if isinstance(value, str) and "%" in value:
        raise ValueError(f"{shown(value)}: addresses here take no zone (%...): write it without "
                         "(a link-local next hop names its interface in dev)")
    return value


def _prefix(value: object) -> object:
    """Says what is wrong with a prefix string; pydantic alone says only "not a valid network"."""
    if isinstance(value, str):
        _no_zone(value)
        try:
            ipaddress.ip_network(value)
        except ValueError:
            try:
                network = ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{shown(value)} is not an IPv4 or IPv6 prefix "
                                 "(write e.g. 10.0.0.0/8 or 2001:db8::/32)") from None
            raise ValueError(f"{value} has host bits set: write {network}") from None
    return value


@lru_cache(maxsize=1 << 16)
def _ipv4_prefix(text: str) -> ipaddress.IPv4Network | None:
    """A canonical IPv4 prefix ("10.0.0.0/8": a strict dotted quad, a decimal length, no host
    bits) parsed in C (inet_pton) and built from integers, several times quicker than
    ipaddress's parser; None for anything else, which goes the general way. Rules often share
    prefixes, so parses are cached (and the rules share the objects: they are immutable)."""
    addr, slash, plen = text.partition("/")
    decimal = plen.isascii() and plen.isdigit() and len(plen) <= 2 and (plen == "0" or plen[0] != "0")
    if not (slash and decimal):
        return None
    try:
        packed = socket.inet_pton(socket.AF_INET, addr)
    except (OSError, ValueError):  # ValueError: a NUL in the text
        return None
    length, value = int(plen), int.from_bytes(packed, "big")
    if length > 32 or value & ((1 << (32 - length)) - 1):
        return None  # the general way says what is wrong
    return _ipv4_network(value, length)


def _ipv4_network_init(value: int, length: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network((value, length))


def _ipv4_network_set(value: int, length: int) -> ipaddress.IPv4Network:
    """What IPv4Network.__init__ leaves for a valid (address, length), without its checks (half
    the cost of validating a rule): used only if it makes the very same object (checked below).
    /31 and /32 get more (their own `hosts`): those go through __init__."""
    if length >= 31:
        return _ipv4_network_init(value, length)
    network = object.__new__(ipaddress.IPv4Network)
    network.network_address = ipaddress.IPv4Address(value)
    network.netmask, network._prefixlen = ipaddress.IPv4Network._make_netmask(length)  # type: ignore[attr-defined]
    return network


def _same(a: ipaddress.IPv4Network, b: ipaddress.IPv4Network) -> bool:
    return type(a) is type(b) and vars(a) == vars(b) and str(a) == str(b) and hash(a) == hash(b)


_CHECKED = ((0x0A000000, 8), (0, 0), (0xC0000200, 30))  # /31, /32 are built by __init__ anyway
_ipv4_network = (_ipv4_network_set if all(_same(_ipv4_network_set(v, n), _ipv4_network_init(v, n))
                                          for v, n in _CHECKED) else _ipv4_network_init)


def _quick_prefix(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    """The common case (_ipv4_prefix) validated once; the rest by _prefix and IPvAnyNetwork."""
    if isinstance(value, str):
        network = _ipv4_prefix(value)
        if network is not None:
            return network
    return handler(value)


def _network_text(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """str(network), without ipaddress's formatting of IPv4 in Python (a state is dumped whole)."""
    if network.version == 4:
        return f"{socket.inet_ntoa(int(network.network_address).to_bytes(4, 'big'))}/{network.prefixlen}"
    return str(network)


# pydantic's "any" types give one clear message instead of one per family.
Network = Annotated[IPvAnyNetwork, BeforeValidator(_prefix), WrapValidator(_quick_prefix),
                    PlainSerializer(_network_text, return_type=str, when_used="json")]
Address = Annotated[IPvAnyAddress, BeforeValidator(_no_zone)]
IfName = Annotated[str, Field(pattern=IFNAME_RE)]


def describe_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """(field path, reason) per error, e.g. ("acl[0].match.dport", "..."), for API answers."""
    out = []
    for err in exc.errors():
        path = ""
        for part in err["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif not str(part).startswith("function-"):
                path += f".{part}" if path else str(part)
        msg = err["msg"].removeprefix("Value error, ")
        out.append((path or "(policy)", msg))
    return out


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _port_range(value: object) -> object:
    """"443", 443, "1000-2000" or {"low": .., "high": ..} -> {"low", "high"}."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {"low": value, "high": value}
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", value)
        if not m:
            raise ValueError(f"{value!r} is not a port or a low-high range")
        low = int(m.group(1))
        return {"low": low, "high": int(m.group(2)) if m.group(2) else low}
    return value


class PortRange(Model):
    low: int = Field(ge=0, le=PORT_MAX)
    high: int = Field(ge=0, le=PORT_MAX)

    @model_validator(mode="after")
    def _ordered(self) -> PortRange:
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        return self

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


Ports = Annotated[PortRange, BeforeValidator(_port_range)]


class Match(Model):
    """What a rule or a chain selects. Omitted fields match anything."""

    src: Network | None = None
    dst: Network | None = None
    protocol: protocols.ProtocolName | None = None
    dport: Ports | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Match:
        if self.dport is not None and self.protocol not in protocols.PORTED:
            raise ValueError(f"dport needs protocol {', '.join(_PORTED_NAMES[:-1])} or {_PORTED_NAMES[-1]} "
                             f"(got {self.protocol})")
        if self.src is not None and self.dst is not None and self.src.version != self.dst.version:
            raise ValueError(f"src {self.src} and dst {self.dst} are of different IP families: "
                             "such a rule can never match")
        return self

    @property
    def protocol_number(self) -> int | None:
        return None if self.protocol is None else protocols.NUMBERS[self.protocol]


class AclRule(Model):
    """First match by (priority, id) wins; `log` reports allowed matches as events too;
    `metrics` exports the rule's counters as Prometheus series (off: chosen, not one per rule)."""

    id: int = Field(ge=1, le=U32_MAX)
    priority: int = Field(default=1000, ge=0, le=U32_MAX)
    action: Literal["allow", "deny", "reject"]  # reject: dropped and answered (docs/dataplane.md, "Reject")
    match: Match = Match()
    log: bool = False
    description: str = Field(default="", max_length=256)
    metrics: bool = False


class Tunnel(Model):
    """A VNI terminated here, and with which encapsulations."""

    vni: int = Field(ge=0, le=abi.VNI_MAX)
    vxlan: bool = True
    geneve: bool = True

    @model_validator(mode="after")
    def _some_encap(self) -> Tunnel:
        if not (self.vxlan or self.geneve):
            raise ValueError(f"tunnel {self.vni}: enable vxlan, geneve or both")
        return self


class NextHop(Model):
    via: Address | None = None
    dev: IfName | None = None

    @model_validator(mode="after")
    def _somewhere(self) -> NextHop:
        if self.via is None and self.dev is None:
            raise ValueError("a next hop needs via, dev or both")
        return self


class Leg(Model):
    """One direction of a chain: traffic entering on `interfaces` that matches gets `mark`,
    and `ip rule fwmark mark lookup table` routes it by `nexthops`."""

    interfaces: list[IfName] = Field(min_length=1)
    match: Match = Match()
    mark: int = Field(ge=1, le=U32_MAX)
    table: int = Field(ge=TABLE_MIN, le=TABLE_MAX)
    nexthops: list[NextHop] = Field(min_length=1, max_length=16)


class ServiceChain(Model):
    """Steers matching traffic to a service; `return_path` sends what the service hands back
    on to the upstream instead of into the service again."""

    name: str = Field(pattern=NAME_RE)
    priority: int = Field(default=1000, ge=0, le=U32_MAX)
    forward: Leg
    return_path: Leg | None = None

    def legs(self) -> list[tuple[str, Leg]]:
        out = [("forward", self.forward)]
        if self.return_path is not None:
            out.append(("return_path", self.return_path))
        return out


CT_TIMEOUT_MAX = 30 * 24 * 3600  # a month, in seconds


class EstablishedTimeouts(Model):
    """How long a flow recorded for allow_established may stay idle (no packet either way), in
    seconds, before its replies are judged by the ACL again."""

    tcp: int = Field(default=3600, ge=1, le=CT_TIMEOUT_MAX)
    tcp_closing: int = Field(default=10, ge=1, le=CT_TIMEOUT_MAX)  # once a FIN or RST went either way
    udp: int = Field(default=30, ge=1, le=CT_TIMEOUT_MAX)
    icmp: int = Field(default=30, ge=1, le=CT_TIMEOUT_MAX)  # echo requests and their replies


class Settings(Model):
    vxlan_port: int = Field(default=4789, ge=1, le=PORT_MAX)
    geneve_port: int = Field(default=6081, ge=1, le=PORT_MAX)
    decap: bool = True
    unknown_vni_action: Literal["pass", "drop"] = "pass"
    default_action: Literal["allow", "deny"] = "allow"
    rewrite_inner_dmac: bool = True
    # UDP to vxlan_port/geneve_port that is no tunnel packet (docs/dataplane.md, "Tunnel ports"):
    # judged as plain UDP by default, dropped when strict.
    strict_tunnel_ports: bool = False
    # Replies to flows that left through an attached interface pass before the ACL, like
    # iptables' `-m conntrack --ctstate ESTABLISHED -j ACCEPT` (docs/dataplane.md, "Established").
    allow_established: bool = False
    established_timeouts: EstablishedTimeouts = EstablishedTimeouts()

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        if self.vxlan_port == self.geneve_port:
            raise ValueError(f"vxlan_port and geneve_port are both {self.vxlan_port}")
        return self


class Policy(Model):
    settings: Settings = Settings()
    acl: list[AclRule] = Field(default_factory=list)
    tunnels: list[Tunnel] = Field(default_factory=list)
    chains: list[ServiceChain] = Field(default_factory=list)

    @field_validator("acl")
    @classmethod
    def _unique_rule_ids(cls, rules: list[AclRule]) -> list[AclRule]:
        _unique("acl", list(map(_ID, rules)), "id")
        return rules

    @field_validator("tunnels")
    @classmethod
    def _unique_vnis(cls, tunnels: list[Tunnel]) -> list[Tunnel]:
        _unique("tunnels", [t.vni for t in tunnels], "vni")
        return tunnels

    @field_validator("chains")
    @classmethod
    def _unique_chains(cls, chains: list[ServiceChain]) -> list[ServiceChain]:
        _unique("chains", [c.name for c in chains], "name")
        legs = [(f"{c.name}.{n}", leg) for c in chains for n, leg in c.legs()]
        _unique("chains", [leg.mark for _, leg in legs], "mark", [n for n, _ in legs])
        _unique("chains", [leg.table for _, leg in legs], "table", [n for n, _ in legs])
        return chains

    def interfaces(self) -> set[str]:
        """Interfaces the chains name (they must be attached)."""
        return {i for c in self.chains for _, leg in c.legs() for i in leg.interfaces}


def _unique(where: str, values: list, what: str, owners: list[str] | None = None) -> None:  # type: ignore[type-arg]
    if len(set(values)) == len(values):
        return
    seen: dict[object, int] = {}
    for index, value in enumerate(values):
        if value in seen:
            first = owners[seen[value]] if owners else f"{where}[{seen[value]}]"
            here = owners[index] if owners else f"{where}[{index}]"
            raise ValueError(f"{what} {value} is used by both {first} and {here}")
        seen[value] = index


# An absolute path (PATH_MAX); the kernel says whether a program is pinned there.
BPFFS_PATH_RE = r"^/[^\x00]{0,4094}$"


class Interface(Model):
    name: IfName
    mode: Literal["native", "generic", "auto"] = "auto"
    # Take the interface even from an XDP program Tidegate did not load (else that is refused,
    # naming the program: docs/dataplane.md, "Other XDP programs").
    replace: bool = False
    # An XDP program pinned in bpffs that gets every packet Tidegate passes, by tail call.
    next_program: str | None = Field(default=None, pattern=BPFFS_PATH_RE)


class DesiredState(Model):
    """Everything the daemon is asked to make true; persisted whole, applied whole."""

    generation: int = Field(default=0, ge=0)
    interfaces: list[Interface] = Field(default_factory=list)
    policy: Policy = Policy()

    @model_validator(mode="after")
    def _references(self) -> DesiredState:
        names = [i.name for i in self.interfaces]
        _unique("interfaces", names, "interface")
        missing = sorted(self.policy.interfaces() - set(names))
        if missing:
            raise ValueError(f"chains use interfaces that are not attached: {', '.join(missing)}; "
                             "attach them first")
        return self
