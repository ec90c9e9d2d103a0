"""Output of the `tidegate` CLI: responses as JSON-ready dicts, and those dicts as text tables.

Every command builds one dict (`*_data`), which `-j` prints as one JSON object and the default
mode renders as aligned tables (`*_text`). Listings are in the shape of the policy file: `tidegate
-j acl list` is `{"generation": N, "acl": [...]}`, `tunnel list` `{"generation", "tunnels"}`,
`chain list` `{"generation", "chains"}`, `policy show` the whole policy plus its generation,
each item as the policy models (control.policy.models) dump it, so any listing is a policy file that
`tidegate policy apply -f` takes back (it ignores `generation`). Pure functions: no gRPC calls,
no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import yaml

from control.policy.models import AclRule, Match, Policy, ServiceChain, Tunnel
from control.rpc import convert
from control.rpc.api import pb2

Data = dict[str, Any]
NONE = "-"  # an empty cell


# --- generic ------------------------------------------------------------------------------------

def to_json(data: Data) -> str:
    return json.dumps(data, indent=2, sort_keys=False)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart; numbers right-aligned; no trailing blanks."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [any(r[i] != NONE for r in cells) and all(r[i].isdigit() or r[i] == NONE for r in cells)
               for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in cells)])


def _cell(value: object) -> str:
    if value is None or value == "":
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _enum(enum: Any, prefix: str, number: int) -> str | None:
    """"XDP_MODE_NATIVE" -> "native"; 0 (UNSPECIFIED) -> None."""
    if number == 0:
        return None
    try:
        return str(enum.Name(number)).removeprefix(prefix).lower()
    except ValueError:
        return str(number)


def _ids(values: Iterable[object]) -> str:
    return ",".join(str(v) for v in values) or NONE


# --- interfaces and status ----------------------------------------------------------------------

def interface_data(msg: pb2.InterfaceStatus) -> Data:
    memory = msg.kernel_memory_bytes if msg.HasField("kernel_memory_bytes") else None
    return {"name": msg.name,
            "requested_mode": _enum(pb2.XdpMode, "XDP_MODE_", msg.requested_mode),
            "active_mode": _enum(pb2.XdpMode, "XDP_MODE_", msg.active_mode),
            "attached": msg.attached,
            "kernel_memory_bytes": memory}


def mebibytes(size: int | None) -> str | None:
    """12345678 -> "11.8 MiB"; None stays None (an empty cell)."""
    return None if size is None else f"{size / (1 << 20):.1f} MiB"


def interfaces_table(interfaces: Sequence[Data]) -> str:
    if not interfaces:
        return "no interfaces attached (tidegate attach IFNAME)"
    return table(["INTERFACE", "REQUESTED", "ACTIVE", "ATTACHED", "KERNEL MEMORY"],
                 [(i["name"], i["requested_mode"], i["active_mode"], i["attached"],
                   mebibytes(i["kernel_memory_bytes"])) for i in interfaces])


def status_data(health: str, interfaces: pb2.ListInterfacesResponse, policy: pb2.GetPolicyResponse) -> Data:
    p = policy.policy
    return {"health": health, "generation": policy.generation,
            "interfaces": [interface_data(i) for i in interfaces.interfaces],
            "policy": {"acl_rules": len(p.acl), "tunnels": len(p.tunnels), "chains": len(p.chains)}}


def status_text(data: Data) -> str:
    counts = data["policy"]
    return "\n".join([
        f"health:     {data['health']}",
        f"generation: {data['generation']}",
        f"policy:     {counts['acl_rules']} ACL rules, {counts['tunnels']} tunnels, "
        f"{counts['chains']} chains",
        "",
        interfaces_table(data["interfaces"]),
    ])


# --- ACL, tunnels, chains -------------------------------------------------------------------------

def _dump(model: Any) -> Data:
    return dict(model.model_dump(mode="json"))


def rules_data(msg: pb2.ListAclRulesResponse) -> Data:
    return {"generation": msg.generation, "acl": [_dump(convert.acl_rule_from_proto(r)) for r in msg.rules]}


def _l4_cell(m: Match) -> str:
    """ICMP type/code and SYN as one cell: "type 8 code 0", "code 4", "syn"; empty: any."""
    parts = [f"{name} {value}" for name, value in (("type", m.icmp_type), ("code", m.icmp_code))
             if value is not None]
    return " ".join([*parts, "syn"] if m.syn else parts)


def _match_cells(m: Match) -> list[object]:
    protocol = "any" if m.protocol is None else m.protocol
    return [m.src or "any", m.dst or "any", protocol, m.sport, m.dport, _l4_cell(m)]


def rules_text(data: Data) -> str:
    rules = [AclRule.model_validate(r) for r in data["acl"]]
    if not rules:
        return f"no ACL rules (generation {data['generation']})"
    return table(["ID", "PRIO", "ACTION", "SRC", "DST", "PROTO", "SPORT", "DPORT", "L4", "LOG", "METRICS",
                  "DESCRIPTION"],
                 [(r.id, r.priority, r.action, *_match_cells(r.match), r.log, r.metrics, r.description)
                  for r in rules])


def tunnels_data(msg: pb2.ListTunnelsResponse) -> Data:
    return {"generation": msg.generation,
            "tunnels": [_dump(convert.tunnel_from_proto(t)) for t in msg.tunnels]}


def tunnels_text(data: Data) -> str:
    tunnels = [Tunnel.model_validate(t) for t in data["tunnels"]]
    if not tunnels:
        return f"no tunnels (generation {data['generation']})"
    return table(["VNI", "VXLAN", "GENEVE"], [(t.vni, t.vxlan, t.geneve) for t in tunnels])


def chains_data(msg: pb2.ListChainsResponse) -> Data:
    return {"generation": msg.generation,
            "chains": [_dump(convert.service_chain_from_proto(c)) for c in msg.chains]}


def _nexthop(via: object, dev: object) -> str:
    """As `ip route` writes one: "via 10.0.0.2 dev eth0"."""
    parts = [f"via {via}" if via else "", f"dev {dev}" if dev else ""]
    return " ".join(p for p in parts if p)


def chains_text(data: Data) -> str:
    chains = [ServiceChain.model_validate(c) for c in data["chains"]]
    if not chains:
        return f"no service chains (generation {data['generation']})"
    rows = []
    for c in chains:
        for name, leg in c.legs():
            hops = ", ".join(_nexthop(h.via, h.dev) for h in leg.nexthops)
            rows.append((c.name, c.priority, name, ",".join(leg.interfaces), *_match_cells(leg.match),
                         f"{leg.mark:#x}", leg.table, hops))
    return table(["CHAIN", "PRIO", "LEG", "INTERFACES", "SRC", "DST", "PROTO", "SPORT", "DPORT", "L4", "MARK",
                  "TABLE", "NEXTHOPS"], rows)


# --- policy -----------------------------------------------------------------------------------

def policy_data(policy: Policy, generation: int | None = None) -> Data:
    """The model's own JSON shape, after the generation when given (a daemon's policy):
    `tidegate policy apply -f` takes it back unchanged (ignoring `generation`)."""
    head = {} if generation is None else {"generation": generation}
    return {**head, **_dump(policy)}


def _short_ports(value: Any) -> Any:
    """Every `dport: {low: 80, high: 90}` written as `dport: 80-90`, sport too (forms the models accept)."""
    if isinstance(value, list):
        return [_short_ports(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _short_ports(v) for k, v in value.items()}
    for side in ("sport", "dport"):
        ports = out.get(side)
        if isinstance(ports, dict) and set(ports) == {"low", "high"}:
            out[side] = ports["low"] if ports["low"] == ports["high"] else f"{ports['low']}-{ports['high']}"
    return out


def policy_yaml(policy: Policy, generation: int) -> str:
    """The policy as a YAML file `tidegate policy apply -f` takes back (unset fields left out)."""
    body = yaml.safe_dump(_short_ports(policy.model_dump(mode="json", exclude_none=True)), sort_keys=False)
    return f"# generation: {generation}\n{body}".rstrip("\n")


def apply_data(msg: pb2.ApplyPolicyResponse, dry_run: bool) -> Data:
    d = msg.diff
    sections = {name: {k: list(getattr(part, k)) for k in ("added", "removed", "changed")}
                for name, part in (("acl", d.acl), ("tunnels", d.tunnels), ("chains", d.chains))}
    return {"generation": msg.generation, "dry_run": dry_run, "unchanged": msg.unchanged,
            "diff": {**sections, "settings_changed": d.settings_changed}}


def apply_text(data: Data, source: str) -> str:
    diff = data["diff"]
    if data["dry_run"]:
        head = (f"dry run of {source}: " + ("would change nothing" if data["unchanged"] else "would change")
                + f" (generation stays {data['generation']})")
    elif data["unchanged"]:
        head = f"{source} is the policy in force: nothing applied (generation stays {data['generation']})"
    else:
        head = f"applied {source}: generation {data['generation']}"
    rows = [(s, _ids(diff[s]["added"]), _ids(diff[s]["removed"]), _ids(diff[s]["changed"]))
            for s in ("acl", "tunnels", "chains")]
    settings = "settings:  " + ("changed" if diff["settings_changed"] else "unchanged")
    return "\n".join([head, table(["SECTION", "ADDED", "REMOVED", "CHANGED"], rows), settings])


# --- stats --------------------------------------------------------------------------------------

def _enum_name(enum: Any, prefix: str, number: int) -> str:
    """"REASON_DROP_DENIED" -> "DROP_DENIED" (the ABI's name); a number this CLI does not know as is."""
    try:
        return str(enum.Name(number)).removeprefix(prefix)
    except ValueError:
        return str(number)


def _count(c: pb2.Counter) -> Data:
    return {"packets": c.packets, "bytes": c.bytes}


def stats_data(msg: pb2.GetStatsResponse) -> Data:
    """One dict per section, keyed by what is counted (JSON keys are strings: rule ids too)."""
    legs: dict[str, Data] = {}
    for leg in msg.chain_legs:
        legs.setdefault(leg.chain, {})[leg.leg] = _count(leg.counter)
    return {
        "generation": msg.generation,
        "reasons": {_enum_name(pb2.Reason, "REASON_", r.reason): _count(r.counter) for r in msg.reasons},
        "acl_rules": {str(r.rule_id): _count(r.counter) for r in msg.acl_rules},
        "tunnels": {str(t.vni): _count(t.counter) for t in msg.tunnels},
        "chain_legs": legs,
        "events": {_enum_name(pb2.Event, "EVENT_", e.event): _count(e.counter) for e in msg.events},
        "interfaces": {i.name: _count(i.counter) for i in msg.interfaces},
        "policy_events": {k: getattr(msg.policy_events, k) for k in DELIVERY_FIELDS},
    }


# PolicyEventDelivery's fields, in the order the proto documents them
DELIVERY_FIELDS = ("sent", "rate_limited", "ringbuf_full", "read", "watch_dropped", "export_dropped",
                   "watchers")


_STATS_SECTIONS = [("interfaces", "INTERFACE"), ("reasons", "REASON"), ("acl_rules", "RULE"),
                   ("tunnels", "VNI"), ("events", "EVENT")]


def stats_text(data: Data) -> str:
    out = [f"generation {data['generation']}"]
    for section, key in _STATS_SECTIONS:
        rows = [(k, c["packets"], c["bytes"]) for k, c in data[section].items()]
        out += ["", table([key, "PACKETS", "BYTES"], rows) if rows else f"{key}: none"]
    legs = [(chain, leg, c["packets"], c["bytes"])
            for chain, per_leg in data["chain_legs"].items() for leg, c in per_leg.items()]
    out += ["", table(["CHAIN", "LEG", "PACKETS", "BYTES"], legs) if legs else "CHAIN: none"]
    delivery = data["policy_events"]
    out += ["", table(["POLICY EVENTS", "COUNT"], [(k, delivery[k]) for k in DELIVERY_FIELDS])]
    return "\n".join(out)
