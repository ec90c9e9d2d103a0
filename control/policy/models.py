"""Policy as operators write it: the single source of truth for its shape and its rules.

Everything the daemon accepts (YAML policy files, gRPC requests after control.rpc.convert) becomes
these frozen models first. A model that exists is valid on its own and against its siblings
(unique ids, marks, tables, referenced interfaces); what still can fail later is only what
depends on the machine (an interface that vanished, a map capacity), and that is checked
before anything is written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    Field,
    PlainSerializer,
    SerializationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

from control.policy.acl_decode import AclErrors
from control.policy.acl_mappings import decode_dicts
from control.policy.acl_table import AclTable
from control.policy.rule_model import (
    IFNAME_RE,
    PORT_MAX,
    PORT_PROTOCOLS,
    PROTOCOL_MAX,
    PROTOCOLS,
    U32_MAX,
    AclRule,
    Address,
    IfName,
    Match,
    Model,
    Network,
    PortRange,
    describe_errors,
    protocol_conflict,
    protocol_error,
    shown,
)
from dataplane import abi

NAME_RE = r"^[a-z0-9][a-z0-9_-]{0,31}$"
# Routing tables and ip-rule priorities Tidegate owns: it creates and deletes only inside these.
TABLE_MIN, TABLE_MAX = 1000, 1999
RULE_PRIORITY_MIN, RULE_PRIORITY_MAX = 10000, 10999

# Re-exported: the rule-level models are part of the policy models.
__all__ = ["IFNAME_RE", "PORT_MAX", "PORT_PROTOCOLS", "PROTOCOL_MAX", "PROTOCOLS", "U32_MAX", "AclRule",
           "Address", "IfName", "Match", "Network", "PortRange", "describe_errors", "protocol_conflict",
           "protocol_error", "shown"]


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
    # A datagram that arrives in fragments (docs/dataplane.md, "Fragments"): "judge" judges every
    # fragment by the ACL, a later one without ports; "first" judges the datagram by its first
    # fragment and passes the later ones to the stack, which reassembles them only with a first
    # fragment that passed (as netfilter with conntrack judges the reassembled datagram).
    fragments: Literal["judge", "first"] = "judge"

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        if self.vxlan_port == self.geneve_port:
            raise ValueError(f"vxlan_port and geneve_port are both {self.vxlan_port}")
        return self


def _acl(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """The ACL as columns: a table as it is (it was validated when it was made), a list (of
    mappings or AclRule models) decoded and validated by column (control.policy.acl_decode), errors
    with their rule's index; anything else is refused as the list type refuses it."""
    if isinstance(value, AclTable):
        return value
    if isinstance(value, AclErrors):
        raise value.validation_error() from None
    if isinstance(value, list | tuple):
        try:
            return decode_dicts(value)
        except AclErrors as exc:
            raise exc.validation_error() from None
    return handler(value)


def _dump_acl(table: AclTable, info: SerializationInfo) -> list[Any]:
    return [rule.model_dump(mode=info.mode, exclude_none=info.exclude_none) for rule in table]


if TYPE_CHECKING:
    Acl = AclTable
else:
    Acl = Annotated[list[AclRule], WrapValidator(_acl), PlainSerializer(_dump_acl)]


class Policy(Model):
    settings: Settings = Settings()
    acl: Acl = Field(default_factory=AclTable)
    tunnels: list[Tunnel] = Field(default_factory=list)
    chains: list[ServiceChain] = Field(default_factory=list)

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
