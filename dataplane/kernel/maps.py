"""Typed access to the data plane's maps: config, tunnels and counters.

Layouts come from BCC's generated Key/Leaf types (the ABI header is their only definition);
callers get and give pydantic/dataclass values, never raw bytes. The match tables (ACL,
classifiers) live in dataplane.tables.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from dataplane import abi
from dataplane.map_config import RuntimeConfig, TunnelEntry

ETH_ALEN = 6


@dataclass(frozen=True)
class Counter:
    packets: int = 0
    bytes: int = 0

    def __add__(self, other: Counter) -> Counter:
        return Counter(self.packets + other.packets, self.bytes + other.bytes)


def percpu_sum(values: Any) -> Counter:
    """Sums one per-CPU tg_counter entry over the CPUs."""
    total = Counter()
    for v in values:
        total = total + Counter(v.packets, v.bytes)
    return total


def u8_array(ctype: Any, data: bytes) -> Any:
    return ctype(*data)


class DataplaneMaps:
    """The config, tunnel and counter maps of one loaded data plane."""

    def __init__(self, table: Any) -> None:
        self._table = table  # name -> BCC table

    # --- config ------------------------------------------------------------------------
    def write_config(self, cfg: RuntimeConfig, if_mac: bytes) -> None:
        if len(if_mac) != ETH_ALEN:
            raise ValueError(f"if_mac: need {ETH_ALEN} bytes, got {len(if_mac)}")
        t = self._table("config")
        leaf = t.Leaf()
        leaf.flags = cfg.flags()
        leaf.vxlan_port = cfg.vxlan_port
        leaf.geneve_port = cfg.geneve_port
        leaf.unknown_vni_action = abi.UnknownVniAction[cfg.unknown_vni_action.upper()]
        leaf.default_action = abi.Action[cfg.default_action.upper()]
        leaf.if_mac = u8_array(type(leaf.if_mac), if_mac)
        leaf.event_rate = cfg.event_rate
        leaf.event_burst = cfg.event_burst
        t[t.Key(0)] = leaf

    def read_config(self) -> tuple[RuntimeConfig, bytes]:
        leaf = self._table("config")[ctypes.c_uint32(0)]
        flags = leaf.flags
        cfg = RuntimeConfig.model_validate({  # validated: a map written by hand could hold anything
            "vxlan_port": leaf.vxlan_port or abi.define("TG_VXLAN_PORT_DEFAULT"),
            "geneve_port": leaf.geneve_port or abi.define("TG_GENEVE_PORT_DEFAULT"),
            "decap": bool(flags & abi.define("TG_CFG_F_DECAP")),
            "rewrite_inner_dmac": bool(flags & abi.define("TG_CFG_F_REWRITE_INNER_DMAC")),
            "strict_tunnel_ports": bool(flags & abi.define("TG_CFG_F_STRICT_TUNNEL_PORTS")),
            "unknown_vni_action": abi.UnknownVniAction(leaf.unknown_vni_action).name.lower(),
            "default_action": abi.Action(leaf.default_action).name.lower(),
            "event_rate": leaf.event_rate,
            "event_burst": leaf.event_burst or abi.define("TG_EVENT_BURST_DEFAULT"),
        })
        return cfg, bytes(leaf.if_mac)

    # --- tunnels -----------------------------------------------------------------------
    def put_tunnel(self, tunnel: TunnelEntry) -> None:
        t = self._table("tunnels")
        stats = self._table("tunnel_stats")
        try:
            stats[stats.Key(tunnel.vni)]  # counters survive a change of the tunnel's settings
        except KeyError:
            stats[stats.Key(tunnel.vni)] = stats.Leaf()
        leaf = t.Leaf()
        leaf.flags = tunnel.flags()
        t[t.Key(tunnel.vni)] = leaf

    def delete_tunnel(self, vni: int) -> None:
        for name in ("tunnels", "tunnel_stats"):
            t = self._table(name)
            try:
                del t[t.Key(vni)]
            except KeyError:
                pass

    def tunnels(self) -> list[TunnelEntry]:
        out = []
        for key, leaf in self._table("tunnels").items():
            out.append(
                TunnelEntry(
                    vni=key.value,
                    vxlan=bool(leaf.flags & abi.define("TG_TUNNEL_F_VXLAN")),
                    geneve=bool(leaf.flags & abi.define("TG_TUNNEL_F_GENEVE")),
                )
            )
        return sorted(out, key=lambda t: t.vni)

    # --- counters ----------------------------------------------------------------------
    def _array_counts(self, name: str, size: int) -> list[Counter]:
        t = self._table(name)
        return [percpu_sum(t.getvalue(t.Key(i))) for i in range(size)]

    def reason_counts(self) -> dict[Any, Counter]:
        counts = self._array_counts("reason_stats", abi.REASON_MAX)
        return {abi.Reason(i): c for i, c in enumerate(counts) if i != abi.Reason["UNSPECIFIED"]}

    def event_counts(self) -> dict[Any, Counter]:
        counts = self._array_counts("event_stats", abi.EVENT_MAX)
        return {abi.Event(i): c for i, c in enumerate(counts) if i != abi.Event["UNSPECIFIED"]}

    def reset_event_budget(self) -> None:
        """Refills every CPU's policy event bucket (an all-zero bucket counts as full)."""
        t = self._table("event_bucket")
        t[t.Key(0)] = t.Leaf()

    def tunnel_counts(self) -> dict[int, Counter]:
        return {k.value: percpu_sum(v) for k, v in self._table("tunnel_stats").items()}

    def slot_counts(self, stats_map: str, slots: list[int]) -> dict[int, Counter]:
        t = self._table(stats_map)
        return {s: percpu_sum(t.getvalue(t.Key(s))) for s in slots}

    def reset_slot_counts(self, stats_map: str, slots: list[int]) -> None:
        """A freed slot is reused by another rule later: it must start from zero."""
        t = self._table(stats_map)
        for s in slots:
            t[t.Key(s)] = t.Leaf()  # a per-CPU Leaf is one zeroed counter per CPU
