"""The netfilter rules to keep once Tidegate judges first, in the tools' own input formats.

Everything stays except what moved: a rule whose every use is a deny Tidegate now does in
full (translate.Status.MOVED) no longer needs to see traffic of the attach interface. It gets
`! -i IF` (nft: `iifname != IF`), so traffic arriving on other interfaces, which XDP never sees,
is judged as before; a rule that named `-i IF` itself is left out. With several attach
interfaces an iptables rule cannot say "none of these", so it stays whole (nft can).

Loading these in place of the original rules is optional and safe either way: with the
original rules still in place, Tidegate's denies are only judged twice. Load the policy into
Tidegate first, then these (`iptables-restore < kept.v4`, `nft -j -f kept.json`).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from control.migrate.ir import Iface, Ruleset, SourceRule
from control.migrate.translate import Plan

_RULE = re.compile(r"^(\[\d+:\d+\]\s+)?(-A|--append|-I|--insert)\s+(\S+)(\s+\d+)?(?=\s|$)")


def _named_only(rule: SourceRule, interfaces: tuple[str, ...]) -> bool:
    """The rule itself says -i IF for exactly the attach interface: nothing else can match it."""
    return len(interfaces) == 1 and rule.cond.iif == [Iface(interfaces[0])]


def iptables_text(ruleset: Ruleset, plan: Plan, origin: str) -> tuple[str, int]:
    """(the restore input, how many rules changed) for one iptables origin."""
    text = ruleset.sources.get(origin, "")
    interfaces = plan.host.interfaces
    removable = plan.removable
    by_line = {r.line: r for r in ruleset.rules if r.origin == origin and r.number in removable}
    changed = 0
    out = [f"# {origin}: rules kept by `tidegate import` (moved rules: ! -i {','.join(interfaces) or '-'})"]
    for number, line in enumerate(text.splitlines(), 1):
        rule = by_line.get(number)
        if rule is None or len(interfaces) != 1:
            out.append(line)
            continue
        if _named_only(rule, interfaces):
            out.append(f"# moved to Tidegate: {line.strip()}")
            changed += 1
        elif not rule.cond.iif:
            stripped = line.strip()
            found = _RULE.match(stripped)
            if found is None:
                out.append(line)
                continue
            out.append(f"{stripped[:found.end()]} ! -i {interfaces[0]}{stripped[found.end():]}")
            changed += 1
        else:
            out.append(line)
    return "\n".join(out) + "\n", changed


def nft_json(ruleset: Ruleset, plan: Plan) -> tuple[str, int]:
    """(`nft -j -f` input that replaces each table read, how many rules changed)."""
    doc = json.loads(ruleset.sources.get("nft", '{"nftables": []}'))
    interfaces = plan.host.interfaces
    arms: dict[tuple[str, str, int], list[SourceRule]] = {}
    for r in ruleset.rules:
        if r.origin == "nft":
            arms.setdefault((r.table, r.chain, r.line), []).append(r)
    removable = plan.removable
    items: list[dict[str, Any]] = []
    tables: list[dict[str, str]] = []
    changed = 0
    for item in doc.get("nftables", []):
        kind, obj = next(iter(item.items()))
        if kind == "metainfo":
            continue
        obj = copy.deepcopy(obj)
        obj.pop("handle", None)
        if kind == "table":
            tables.append({"family": obj["family"], "name": obj["name"]})
        if kind == "rule" and interfaces:
            key = (f"{obj['family']} {obj['table']}", obj["chain"], int(item["rule"].get("handle", 0)))
            rules = arms.get(key, [])
            if rules and all(r.number in removable for r in rules):
                changed += 1
                if _named_only(rules[0], interfaces):
                    continue
                right: Any = interfaces[0] if len(interfaces) == 1 else {"set": list(interfaces)}
                guard = {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": right}}
                obj["expr"] = [guard, *obj.get("expr", [])]
        items.append({kind: obj})
    head: list[dict[str, Any]] = [{"metainfo": {"json_schema_version": 1}}]
    for t in tables:  # add first, so that delete finds it; then the table as read
        head += [{"add": {"table": t}}, {"delete": {"table": t}}]
    return json.dumps({"nftables": head + items}, indent=1) + "\n", changed
