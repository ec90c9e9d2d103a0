"""Runtime configuration and tunnel entries as the maps hold them (typed, validated).

These are the data plane's own shapes; the control plane's policy models translate into them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dataplane import abi

# An event costs NSEC_PER_SEC / event_rate of credit: above 1e9/s it would cost nothing.
EVENT_RATE_MAX = 1_000_000_000
EVENT_BURST_MAX = (1 << 32) - 1  # a __u32
CT_TIMEOUT_MAX = 30 * 24 * 3600  # seconds: a month; longer is a table nothing ever leaves


def _ct_timeout(define: str, what: str) -> int:
    return Field(default=abi.define(define), ge=1, le=CT_TIMEOUT_MAX, description=f"{what}, seconds")


class RuntimeConfig(BaseModel):
    """What struct tg_config carries, minus the interface MAC (read from the interface)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vxlan_port: int = Field(default=abi.define("TG_VXLAN_PORT_DEFAULT"), ge=1, le=65535)
    geneve_port: int = Field(default=abi.define("TG_GENEVE_PORT_DEFAULT"), ge=1, le=65535)
    decap: bool = True
    unknown_vni_action: Literal["pass", "drop"] = "pass"
    default_action: Literal["allow", "deny"] = "allow"
    rewrite_inner_dmac: bool = True
    # Drop UDP to a tunnel port that is no tunnel packet, instead of judging it as plain UDP.
    strict_tunnel_ports: bool = False
    # Policy events (dataplane.kernel.events), paced per CPU by a token bucket; 0 sends none (each is
    # then counted as rate limited).
    event_rate: int = Field(default=abi.define("TG_EVENT_RATE_DEFAULT"), ge=0, le=EVENT_RATE_MAX,
                            description="policy events per second per CPU")
    event_burst: int = Field(default=abi.define("TG_EVENT_BURST_DEFAULT"), ge=1, le=EVENT_BURST_MAX,
                             description="policy events a CPU may send back to back")
    # Replies of flows that left through the interface pass before the ACL (xdp/include/conntrack.h),
    # until the flow has been idle this long.
    allow_established: bool = False
    # "first": a datagram is judged by its first fragment and its later fragments pass before the
    # ACL (the stack reassembles them only with a first fragment that passed); "judge": a later
    # fragment is judged by the ACL without ports (docs/dataplane.md, "Fragments").
    fragments: Literal["judge", "first"] = "judge"
    ct_tcp_s: int = _ct_timeout("TG_CT_TCP_TIMEOUT_DEFAULT", "TCP idle timeout")
    ct_tcp_closing_s: int = _ct_timeout("TG_CT_TCP_CLOSING_TIMEOUT_DEFAULT", "TCP timeout after a FIN or RST")
    ct_udp_s: int = _ct_timeout("TG_CT_UDP_TIMEOUT_DEFAULT", "UDP idle timeout")
    ct_icmp_s: int = _ct_timeout("TG_CT_ICMP_TIMEOUT_DEFAULT", "ICMP echo idle timeout")
    # Answers to rejected packets, paced per CPU like policy events; 0 answers none.
    reject_rate: int = Field(default=abi.define("TG_REJECT_RATE_DEFAULT"), ge=0, le=EVENT_RATE_MAX,
                             description="reject answers per second per CPU")
    reject_burst: int = Field(default=abi.define("TG_REJECT_BURST_DEFAULT"), ge=1, le=EVENT_BURST_MAX,
                              description="reject answers a CPU may send back to back")

    def flags(self) -> int:
        flags = 0
        if self.decap:
            flags |= abi.define("TG_CFG_F_DECAP")
        if self.rewrite_inner_dmac:
            flags |= abi.define("TG_CFG_F_REWRITE_INNER_DMAC")
        if self.strict_tunnel_ports:
            flags |= abi.define("TG_CFG_F_STRICT_TUNNEL_PORTS")
        if self.allow_established:
            flags |= abi.define("TG_CFG_F_ESTABLISHED")
        if self.fragments == "first":
            flags |= abi.define("TG_CFG_F_FRAGMENTS_FIRST")
        return flags


class TunnelEntry(BaseModel):
    """A VNI terminated here and the encapsulations it is accepted with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vni: int = Field(ge=0, le=abi.VNI_MAX)
    vxlan: bool = True
    geneve: bool = True

    def flags(self) -> int:
        return (abi.define("TG_TUNNEL_F_VXLAN") if self.vxlan else 0) | (
            abi.define("TG_TUNNEL_F_GENEVE") if self.geneve else 0
        )
