"""Typed access to the data plane's maps: config, tunnels and counters.

Layouts come from BCC's generated Key/Leaf types (the ABI header is their only definition);
callers get and give pydantic/dataclass values, never raw bytes. The match tables (ACL,
classifiers) live in dataplane.match.table.
"""

from __future__ import annotations

import ctypes
import ipaddress
from dataclasses import dataclass
from typing import Any

from dataplane import abi
from dataplane.map_config import RuntimeConfig, TunnelEntry

ETH_ALEN = 6
CT_TIMEOUTS = ("ct_tcp_s", "ct_tcp_closing_s", "ct_udp_s", "ct_icmp_s")  # RuntimeConfig = tg_config members
_PACED = ("reject_rate", "reject_burst")


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


def raw_array(ctype: Any, data: bytes) -> Any:
    """A ctypes array of any element type holding `data` as its memory: a MAC's bytes, or
    addresses the ABI keeps as words (struct tg_ct_key's), bytes in network order all the same."""
    return ctype.from_buffer_copy(data)


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class CtKey:
    """A flow as its replies will look (struct tg_ct_key): src is the remote end, dst the local
    one, ports in host order; an ICMP/ICMPv6 echo has sport 0 and its identifier as dport."""

    src: IpAddress
    dst: IpAddress
    proto: int
    sport: int
    dport: int

    @property
    def family(self) -> int:
        return abi.define("TG_FAMILY_V4") if self.src.version == 4 else abi.define("TG_FAMILY_V6")


@dataclass(frozen=True)
class CtEntry:
    seen_ns: int  # CLOCK_MONOTONIC (coarse: bpf_ktime_get_coarse_ns) of the last packet, either direction
    closing: bool  # TCP: a FIN or RST went either way


def socket_order(port: int) -> int:
    """A u16 port between host order and the network order the map holds (either way)."""
    return int.from_bytes(port.to_bytes(2, "little"), "big")


def _addr(raw: bytes, family: int) -> IpAddress:
    if family == abi.define("TG_FAMILY_V4"):
        return ipaddress.IPv4Address(raw[:4])
    return ipaddress.IPv6Address(raw)


@dataclass(frozen=True)
class _Way:
    """Where a tunnel sits in the tunnels map, and what the way holds."""

    bucket: int
    way: int
    flags: int
    counter: int


_U32 = 0xFFFFFFFF


def tunnel_bucket(vni: int, second: int, buckets: int) -> int:
    """Bucket `second` (0 or 1) of a VNI: xdp/include/tunnel.h's tg_tunnel_bucket, murmur3's
    32-bit finaliser modulo the bucket count."""
    h = vni | (abi.define("TG_TUNNEL_SECOND") if second else 0)
    h ^= h >> 16
    h = (h * abi.define("TG_TUNNEL_MIX1")) & _U32
    h ^= h >> 13
    h = (h * abi.define("TG_TUNNEL_MIX2")) & _U32
    h ^= h >> 16
    return h % buckets


class DataplaneMaps:
    """The config, tunnel and counter maps of one loaded data plane."""

    def __init__(self, table: Any) -> None:
        self._table = table  # name -> BCC table
        # VNI -> its way of the tunnels map and its settings, read from the map when first needed
        # (a restarted daemon finds the tunnels the kernel holds); this object writes it after.
        self._ways: dict[int, _Way] | None = None

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
        leaf.if_mac = raw_array(type(leaf.if_mac), if_mac)
        leaf.event_rate = cfg.event_rate
        leaf.event_burst = cfg.event_burst
        for name in (*CT_TIMEOUTS, *_PACED):
            setattr(leaf, name, getattr(cfg, name))
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
            "allow_established": bool(flags & abi.define("TG_CFG_F_ESTABLISHED")),
            "fragments": "first" if flags & abi.define("TG_CFG_F_FRAGMENTS_FIRST") else "judge",
            **{name: getattr(leaf, name) or RuntimeConfig.model_fields[name].default for name in CT_TIMEOUTS},
            "reject_rate": leaf.reject_rate,
            "reject_burst": leaf.reject_burst or abi.define("TG_REJECT_BURST_DEFAULT"),
            "unknown_vni_action": abi.UnknownVniAction(leaf.unknown_vni_action).name.lower(),
            "default_action": abi.Action(leaf.default_action).name.lower(),
            "event_rate": leaf.event_rate,
            "event_burst": leaf.event_burst or abi.define("TG_EVENT_BURST_DEFAULT"),
        })
        return cfg, bytes(leaf.if_mac)

    # --- tunnels -----------------------------------------------------------------------
    def _tunnel_ways(self) -> dict[int, _Way]:
        if self._ways is None:
            used = abi.define("TG_TUNNEL_KEY_USED")
            self._ways = {way.key & ~used: _Way(k.value, w, way.flags, way.counter)
                          for k, leaf in self._table("tunnels").items()
                          for w, way in enumerate(leaf.ways) if way.key & used}
        return self._ways

    def _free_counter(self) -> int:
        """The lowest entry of tunnel_counters no tunnel holds, zeroed (a deleted tunnel's counts
        must not carry over to the next one)."""
        counters = self._table("tunnel_counters")
        used = {w.counter for w in self._tunnel_ways().values()}
        free = next((i for i in range(counters.max_entries) if i not in used), None)
        if free is None:
            raise ValueError(f"tunnels: {len(used)} tunnels hold every one of the {counters.max_entries} "
                             "tunnel counters; raise capacities.tunnels or delete a tunnel first")
        counters[counters.Key(free)] = counters.Leaf()  # a per-CPU Leaf: one zeroed counter per CPU
        return free

    def _free_way(self, vni: int) -> tuple[int, int]:
        """The first free way of the VNI's two buckets (tidegate_abi.h, struct tg_tunnel_bucket)."""
        t = self._table("tunnels")
        taken = {(w.bucket, w.way) for w in self._tunnel_ways().values()}
        for second in (0, 1):
            bucket = tunnel_bucket(vni, second, t.max_entries)
            for way in range(abi.define("TG_TUNNEL_WAYS")):
                if (bucket, way) not in taken:
                    return bucket, way
        raise ValueError(f"tunnels: no room for VNI {vni}: both of its buckets are full (a rare clash of "
                         "VNIs); raise capacities.tunnels for more buckets")

    def _write_way(self, w: _Way, key: int) -> None:
        t = self._table("tunnels")
        leaf = t[t.Key(w.bucket)]
        way = leaf.ways[w.way]
        way.key, way.flags, way.counter = key, w.flags, w.counter
        t[t.Key(w.bucket)] = leaf

    def put_tunnel(self, tunnel: TunnelEntry) -> None:
        ways = self._tunnel_ways()
        old = ways.get(tunnel.vni)
        key = tunnel.vni | abi.define("TG_TUNNEL_KEY_USED")
        if old is not None:  # a tunnel's counters survive a change of its settings
            new = _Way(old.bucket, old.way, tunnel.flags(), old.counter)
            self._write_way(new, key)
        else:
            bucket, way = self._free_way(tunnel.vni)
            new = _Way(bucket, way, tunnel.flags(), self._free_counter())
            self._write_way(new, 0)  # settings first, the key after: no search sees half a way
            self._write_way(new, key)
        ways[tunnel.vni] = new

    def delete_tunnel(self, vni: int) -> None:
        w = self._tunnel_ways().pop(vni, None)
        if w is not None:
            self._write_way(w, 0)  # the key first: no search finds it from here on
            self._write_way(_Way(w.bucket, w.way, 0, 0), 0)

    def tunnels(self) -> list[TunnelEntry]:
        vxlan, geneve = abi.define("TG_TUNNEL_F_VXLAN"), abi.define("TG_TUNNEL_F_GENEVE")
        return [TunnelEntry(vni=vni, vxlan=bool(w.flags & vxlan), geneve=bool(w.flags & geneve))
                for vni, w in sorted(self._tunnel_ways().items())]

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

    def reset_reject_budget(self) -> None:
        """Refills every CPU's reject answer bucket."""
        t = self._table("reject_bucket")
        t[t.Key(0)] = t.Leaf()

    # --- allow_established --------------------------------------------------------------
    def _ct_key(self, key: CtKey) -> Any:
        k = self._table("conntrack").Key()
        k.src = raw_array(type(k.src), key.src.packed.ljust(abi.define("TG_ADDR_LEN"), b"\0"))
        k.dst = raw_array(type(k.dst), key.dst.packed.ljust(abi.define("TG_ADDR_LEN"), b"\0"))
        k.sport, k.dport = socket_order(key.sport), socket_order(key.dport)
        k.proto, k.family = key.proto, key.family
        return k

    def conntrack(self) -> dict[CtKey, CtEntry]:
        """Every recorded flow (expired ones too, until a reply or the LRU takes them out)."""
        out = {}
        for k, v in self._table("conntrack").items():
            key = CtKey(_addr(bytes(k.src), k.family), _addr(bytes(k.dst), k.family), k.proto,
                        socket_order(k.sport), socket_order(k.dport))
            out[key] = CtEntry(v.seen_ns, v.state == abi.enums()["tg_ct_state"]["TG_CT_CLOSING"])
        return out

    def put_conntrack(self, key: CtKey, seen_ns: int, closing: bool = False) -> None:
        """Records a flow by hand (tests); the programs' count of entries does not see it."""
        t = self._table("conntrack")
        leaf = t.Leaf()
        leaf.seen_ns = seen_ns
        leaf.state = abi.enums()["tg_ct_state"]["TG_CT_CLOSING" if closing else "TG_CT_OPEN"]
        t[self._ct_key(key)] = leaf

    def clear_conntrack(self) -> None:
        """Forgets every flow, and the programs' count of them."""
        self._table("conntrack").clear()
        live = self._table("conntrack_live")
        live[live.Key(0)] = live.Leaf(0)

    def conntrack_live(self) -> int:
        """The flows the programs hold: one counter read, not a walk of the table, so a scrape
        may ask it of a full table."""
        live = self._table("conntrack_live")
        return int(live[live.Key(0)].value)

    def tunnel_counts(self) -> dict[int, Counter]:
        """Packets/bytes decapped, per VNI of the tunnels configured."""
        counters = self._table("tunnel_counters")
        return {vni: percpu_sum(counters.getvalue(counters.Key(w.counter)))
                for vni, w in self._tunnel_ways().items()}

    def slot_counts(self, stats_map: str, slots: list[int]) -> dict[int, Counter]:
        t = self._table(stats_map)
        return {s: percpu_sum(t.getvalue(t.Key(s))) for s in slots}

    def reset_slot_counts(self, stats_map: str, slots: list[int]) -> None:
        """A freed slot is reused by another rule later: it must start from zero."""
        t = self._table(stats_map)
        for s in slots:
            t[t.Key(s)] = t.Leaf()  # a per-CPU Leaf is one zeroed counter per CPU
