"""Rule-level policy models: what a rule or a chain leg matches, an ACL rule, and the value types
they are made of (prefixes, addresses, port ranges, protocols).

Part of the policy models (control.policy.models, which re-exports every name here): split out so that
the ACL's columnar form (control.policy.acl_table, control.policy.acl_decode), which the models' Policy holds,
can build and read these without an import cycle.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from functools import lru_cache
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
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from dataplane import protocols

U32_MAX = (1 << 32) - 1
PORT_MAX = 65535
IFNAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,14}$"  # IFNAMSIZ - 1 characters, no '/' or spaces
PROTOCOLS = protocols.NUMBERS
PROTOCOL_NAMES = protocols.NAMES
PROTOCOL_MAX = protocols.NUMBER_MAX
PORT_PROTOCOLS = protocols.PORTED
PORT_PROTOCOL_NUMBERS = frozenset(PROTOCOLS[p] for p in PORT_PROTOCOLS)
PORTS_ANY = (0, PORT_MAX)
ICMP_PROTOCOLS = protocols.ICMP
ICMP_FIELD_MAX = 255  # an ICMP/ICMPv6 type or code is one byte
_NAMES = ", ".join(PROTOCOLS)
_PORTED_NAMES = [name for name in PROTOCOLS if name in PORT_PROTOCOLS]
_PORTED_TEXT = f"{', '.join(_PORTED_NAMES[:-1])} or {_PORTED_NAMES[-1]}"


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
    return ipv4_network(value, length)


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
# IPv4Network((value, length)) for a valid prefix, quickly.
ipv4_network = (_ipv4_network_set if all(_same(_ipv4_network_set(v, n), _ipv4_network_init(v, n))
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


def port_range(value: object) -> object:
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


Ports = Annotated[PortRange, BeforeValidator(port_range)]


def protocol_error(value: object) -> str:
    text = shown(value) if isinstance(value, str) else repr(value)
    return f"{text} is not an IP protocol: write {_NAMES} or a number 0-{PROTOCOL_MAX}"


def _protocol(value: object) -> object:
    """A protocol name, or an IANA number 0-255 ("47" too): a number that has one of the names is
    written as the name, so that `6` and `tcp` are the same rule."""
    if value is None:
        return None
    if isinstance(value, str) and value in PROTOCOLS:
        return value
    number = value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    if isinstance(number, int) and not isinstance(number, bool) and 0 <= number <= PROTOCOL_MAX:
        return PROTOCOL_NAMES.get(number, number)
    raise ValueError(protocol_error(value))


ProtocolSpec = Annotated[str | int, BeforeValidator(_protocol)]


def protocol_conflict(named: int, number: int) -> str:
    """The wire's two forms of a protocol (Match.protocol, Match.protocol_number) disagree."""
    return (f"{number} is not the protocol that `protocol` names ({named}): set one of the two, "
            "or both to the same number")


def ports_error(field: str, ports: PortRange, protocol: str | int | None) -> str:
    """Ports other than any need a protocol whose header has them."""
    named = f"protocol {protocol}" if isinstance(protocol, int) else protocol
    got = "the rule names none" if protocol is None else f"{named} has no ports"
    return f"{field} {ports} needs protocol {_PORTED_TEXT} ({got}): name one, or leave {field} out"


def icmp_error(field: str, value: int, protocol: str | int | None) -> str:
    """An ICMP type or code needs protocol icmp or icmpv6."""
    named = f"protocol {protocol}" if isinstance(protocol, int) else protocol
    got = "the rule names none" if protocol is None else f"{named} has no ICMP header"
    return f"{field} {value} needs protocol icmp or icmpv6 ({got}): name one, or leave {field} out"


def syn_error(protocol: str | int | None) -> str:
    named = f"protocol {protocol}" if isinstance(protocol, int) else protocol
    got = "the rule names none" if protocol is None else f"{named} has no TCP flags"
    return f"syn needs protocol tcp ({got}): name it, or leave syn out"


class Match(Model):
    """What a rule or a chain selects. Omitted fields match anything.

    icmp_type, icmp_code: an ICMP (protocol icmp) or ICMPv6 (icmpv6) message's type and code,
    0-255 each, either or both. syn: TCP packets that open a connection (SYN set, ACK, RST and FIN
    clear: iptables' --syn). A later fragment carries no transport header, so it never matches a
    rule with any of the three (nor one with ports)."""

    src: Network | None = None
    dst: Network | None = None
    protocol: ProtocolSpec | None = None
    dport: Ports | None = None
    sport: Ports | None = None
    icmp_type: int | None = Field(default=None, ge=0, le=ICMP_FIELD_MAX)
    icmp_code: int | None = Field(default=None, ge=0, le=ICMP_FIELD_MAX)
    syn: bool = False

    @field_validator("dport", "sport")
    @classmethod
    def _port_protocol(cls, ports: PortRange | None, info: ValidationInfo) -> PortRange | None:
        """A range other than 0-65535 only with tcp, udp or sctp (fields are validated in order:
        protocol is known here unless it was refused itself)."""
        if ports is None or (ports.low, ports.high) == PORTS_ANY or "protocol" not in info.data:
            return ports
        protocol = info.data["protocol"]
        if protocol not in PORT_PROTOCOLS:
            raise ValueError(ports_error(str(info.field_name), ports, protocol))
        return ports

    @field_validator("icmp_type", "icmp_code")
    @classmethod
    def _icmp_protocol(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None or "protocol" not in info.data:
            return value
        protocol = info.data["protocol"]
        if protocol not in ICMP_PROTOCOLS:
            raise ValueError(icmp_error(str(info.field_name), value, protocol))
        return value

    @field_validator("syn")
    @classmethod
    def _syn_protocol(cls, syn: bool, info: ValidationInfo) -> bool:
        if syn and "protocol" in info.data and info.data["protocol"] != "tcp":
            raise ValueError(syn_error(info.data["protocol"]))
        return syn

    @model_validator(mode="after")
    def _consistent(self) -> Match:
        if self.src is not None and self.dst is not None and self.src.version != self.dst.version:
            raise ValueError(f"src {self.src} and dst {self.dst} are of different IP families: "
                             "such a rule can never match")
        return self

    @property
    def protocol_number(self) -> int | None:
        """The IANA number of the protocol; None for any."""
        if self.protocol is None or isinstance(self.protocol, int):
            return self.protocol
        return PROTOCOLS[self.protocol]


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
