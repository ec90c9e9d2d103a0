"""`nft -j list ruleset` -> ir.Ruleset.

Tables of the ip, ip6, inet and netdev families are read (bridge and arp tables judge frames
Tidegate's ACL does not, and are only mentioned in the notes). Base chains keep their hook,
priority, policy and (netdev) device; a verdict map (`vmap`) becomes one rule per element.
Rules that iptables-nft wrote carry `xt` expressions whose options the JSON does not show:
they stay in netfilter (import such tables from iptables-save instead).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from control.migrate import nft_expr
from control.migrate.ir import Box, Chain, Cond, Iface, Kind, Ruleset, SourceRule, Target, Unsupported
from control.migrate.nft_text import render

FAMILIES = {"ip": (4,), "ip6": (6,), "inet": (4, 6), "netdev": (4, 6)}
VERDICTS = {"accept": Kind.ACCEPT, "drop": Kind.DROP, "return": Kind.RETURN, "continue": Kind.NONE,
            "queue": Kind.OTHER, "synproxy": Kind.OTHER, "fwd": Kind.OTHER}
TRANSLATES = {"snat", "dnat", "masquerade", "redirect", "tproxy"}
MODIFIES = {"mangle", "notrack", "ct helper", "ct timeout", "ct expectation", "secmark", "tcp option"}
SIDES = {"log", "set", "dup", "map"}
STATEFUL = {"limit", "quota", "meter", "ct count", "numgen"}
PASSIVE = {"counter", "comment"}


class NftError(ValueError):
    """Input that is not `nft -j list ruleset` output; the message says what is wrong."""


@dataclass
class _Doc:
    ruleset: Ruleset
    sets: dict[str, nft_expr.NamedSets] = field(default_factory=dict)  # "family table" -> name -> elems
    maps: dict[str, dict[str, list[Any]]] = field(default_factory=dict)


def parse(text: str, ruleset: Ruleset | None = None, name: str = "nft -j",
          skip: set[str] | None = None) -> Ruleset:
    """`skip`: tables ("ip filter") read from elsewhere (iptables-nft's, from iptables-save)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NftError(f"{name}: line {exc.lineno}, column {exc.colno}: not JSON: {exc.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("nftables"), list):
        raise NftError(f"{name}: expected the object `nft -j list ruleset` prints ({{\"nftables\": [...]}})")
    doc = _Doc(ruleset if ruleset is not None else Ruleset())
    doc.ruleset.sources["nft"] = text
    items = data["nftables"]
    for n, item in enumerate(items):
        if not isinstance(item, dict) or len(item) != 1:
            raise NftError(f"{name}: nftables[{n}]: expected one object per entry")
    skipped: set[str] = set()
    shared = {t for t in (skip or ()) if _iptables_made(items, t)}
    items = [i for i in items if not _in(i, shared)]
    for item in items:
        _declare(doc, item, skipped)
    for n, item in enumerate(items):
        if "rule" in item:
            try:
                _rule(doc, item["rule"])
            except (KeyError, TypeError, ValueError) as exc:
                raise NftError(f"{name}: nftables[{n}] (rule): {exc}") from None
    for table in sorted(shared & {_table_key(next(iter(i.values()))) for i in data["nftables"]
                                  if "table" in i}):
        doc.ruleset.notes.append(f"nft table {table} is iptables-nft's: read from iptables-save instead")
    for table in sorted(skipped):
        doc.ruleset.notes.append(f"nft table {table} is not read (only ip, ip6, inet and netdev tables "
                                 "judge what Tidegate's ACL judges)")
    return doc.ruleset


IPTABLES_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


def _iptables_made(items: list[dict[str, Any]], table: str) -> bool:
    """Whether `table` holds a base chain named as iptables names its built-in chains."""
    return any("chain" in i and _table_key(i["chain"]) == table and "hook" in i["chain"]
               and i["chain"]["name"] in IPTABLES_CHAINS for i in items)


def _in(item: dict[str, Any], tables: set[str]) -> bool:
    obj = next(iter(item.values()))
    return isinstance(obj, dict) and "family" in obj and _table_key(obj) in tables


def _table_key(obj: dict[str, Any]) -> str:
    return f"{obj['family']} {obj['table'] if 'table' in obj else obj['name']}"


def _declare(doc: _Doc, item: dict[str, Any], skipped: set[str]) -> None:
    kind, obj = next(iter(item.items()))
    if kind not in ("table", "chain", "set", "map"):
        return
    if obj.get("family") not in FAMILIES:
        skipped.add(_table_key(obj))
        return
    if kind == "set":
        doc.sets.setdefault(_table_key(obj), {})[obj["name"]] = list(obj.get("elem", []))
    elif kind == "map":
        doc.maps.setdefault(_table_key(obj), {})[obj["name"]] = list(obj.get("elem", []))
    elif kind == "chain":
        _chain(doc, obj)


def _chain(doc: _Doc, obj: dict[str, Any]) -> None:
    chain = Chain("nft", _table_key(obj), obj["name"], FAMILIES[obj["family"]])
    if "hook" in obj:
        chain.hook = str(obj["hook"])
        prio = obj.get("prio", 0)
        chain.priority = prio if isinstance(prio, int) else 0
        chain.policy = str(obj.get("policy", "accept"))
        dev = obj.get("dev")
        chain.device = (dev if isinstance(dev, str) else ",".join(dev)) if dev else None
        if chain.hook == "ingress" and not dev:
            chain.device = "?"
    doc.ruleset.add_chain(chain)


def _rule(doc: _Doc, obj: dict[str, Any]) -> None:
    if obj.get("family") not in FAMILIES:
        return
    table = _table_key(obj)
    chain = doc.ruleset.chains.get(("nft", table, obj["chain"]))
    if chain is None:
        raise ValueError(f"chain {obj['chain']} of table {table} is not in the ruleset")
    exprs = obj.get("expr", [])
    text = render(exprs)
    cond = Cond([Box(f) for f in chain.families])
    if chain.device == "?" or (chain.device and "," in chain.device):
        cond.unsupported.append(Unsupported("ingress chain", f"device {chain.device} (not in the JSON "
                                                             "before nft 1.0.7, or several devices)"))
    elif chain.device:
        cond.iif.append(Iface(chain.device))
    sets = doc.sets.get(table, {})
    arms = _statements(cond, exprs, sets, doc.maps.get(table, {}))
    nft_expr.finish(cond)
    for arm_cond, target, suffix in arms:
        nft_expr.finish(arm_cond)
        rule = SourceRule(doc.ruleset.next_number(), "nft", table, chain.name, len(chain.rules) + 1,
                          int(obj.get("handle", 0)), text + suffix, arm_cond, target,
                          str(obj.get("comment", "")))
        doc.ruleset.rules.append(rule)
        chain.rules.append(rule)


def _statements(cond: Cond, exprs: list[Any], sets: nft_expr.NamedSets,
                maps: dict[str, list[Any]]) -> list[tuple[Cond, Target, str]]:
    """The rule's arms: (condition, target, text suffix); one unless the rule ends in a vmap."""
    verdict: Target | None = None
    effects: list[str] = []
    kinds: set[Kind] = set()
    for stmt in exprs:
        key, body = next(iter(stmt.items()))
        if key == "match":
            try:
                nft_expr.apply_match(cond, body, sets)
            except (nft_expr.NotUnderstood, ValueError, KeyError, TypeError) as exc:
                nft_expr.unsupported(cond, f"nft match ({exc})", stmt)
        elif key == "vmap":
            return _vmap(cond, body, sets, maps, effects)
        elif key in VERDICTS or key in ("reject", "jump", "goto"):
            verdict = _verdict(key, body)
        elif key == "xt":
            _xt(cond, body, kinds)
        elif key in PASSIVE:
            continue
        elif key in STATEFUL:
            nft_expr.unsupported(cond, key, stmt, stateful=True)
        elif key in TRANSLATES:
            kinds.add(Kind.TRANSLATE)
        elif key in MODIFIES or key == "ct" or key == "meta":
            kinds.add(Kind.MODIFY)
        elif key in SIDES:
            effects.append(key)
        else:  # unknown: may match, may act; keep it in netfilter and assume the worst
            nft_expr.unsupported(cond, key, stmt, stateful=True)
            effects.append(key)
    return [(cond, _target(verdict, effects, kinds), "")]


def _verdict(key: str, body: Any) -> Target:
    if key == "reject":
        body = body or {}
        detail = f"{body.get('type', 'icmpx')} {body.get('expr', 'port-unreachable')}".strip()
        return Target(Kind.REJECT, "reject", detail)
    if key in ("jump", "goto"):
        return Target(Kind.JUMP if key == "jump" else Kind.GOTO, body["target"])
    return Target(VERDICTS[key], key)


def _target(verdict: Target | None, effects: list[str], kinds: set[Kind]) -> Target:
    side = ",".join(effects)
    if Kind.TRANSLATE in kinds:
        return Target(Kind.TRANSLATE, "nat", side=side)
    if verdict is not None and verdict.kind is not Kind.NONE:
        if Kind.MODIFY in kinds and verdict.kind is not Kind.DROP:
            side = ",".join([*effects, "modify"])
        return Target(verdict.kind, verdict.name, verdict.detail, side)
    if effects:
        return Target(Kind.SIDE, effects[0], side=side)
    if Kind.MODIFY in kinds:
        return Target(Kind.MODIFY, "modify")
    return Target(Kind.NONE)


def _xt(cond: Cond, body: dict[str, Any], kinds: set[Kind]) -> None:
    what = f"xt {body.get('type', 'match')} {body.get('name', '?')}"
    if body.get("type") == "target":
        kinds.add(Kind.TRANSLATE)  # unknown effect: the strictest reading
    cond.unsupported.append(Unsupported(what, "written by iptables-nft: import this table from "
                                              "iptables-save, whose output shows its options"))


def _vmap(cond: Cond, body: dict[str, Any], sets: nft_expr.NamedSets, maps: dict[str, list[Any]],
          effects: list[str]) -> list[tuple[Cond, Target, str]]:
    data = body["data"]
    if isinstance(data, str) and data.startswith("@"):
        elements = maps.get(data[1:], [])
    else:
        elements = data["set"]
    arms = []
    for key, verdict in elements:
        arm = Cond(list(cond.boxes), list(cond.iif), list(cond.oif), cond.ctstate, list(cond.unsupported),
                   list(cond.notes))
        try:
            nft_expr.apply_match(arm, {"op": "==", "left": body["key"], "right": key}, sets)
        except (nft_expr.NotUnderstood, ValueError, KeyError, TypeError) as exc:
            nft_expr.unsupported(arm, f"vmap key ({exc})", body["key"])
        vkey, vbody = next(iter(verdict.items()))
        target = _target(_verdict(vkey, vbody), effects, set())
        arms.append((arm, target, f"  [vmap element {json.dumps(key, separators=(',', ':'))}]"))
    return arms
