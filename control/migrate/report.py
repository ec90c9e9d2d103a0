"""The report: every source rule with its fate, the counts, and what the import assumed.

`data(plan)` is the JSON shape (`tidegate import -j`); `rows(plan)` the table the CLI prints.
Statuses (translate.Status): moved, mirrored, kept, blocked, inlined.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from control.migrate import intervals as iv
from control.migrate.translate import Plan, Status

TEXT_MAX = 70


def id_ranges(ids: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3,7"."""
    out: list[str] = []
    for i in sorted(ids):
        if out and "-" in out[-1] and int(out[-1].split("-")[1]) == i - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        elif out and "-" not in out[-1] and int(out[-1]) == i - 1:
            out[-1] = f"{out[-1]}-{i}"
        else:
            out.append(str(i))
    return ",".join(out)


def counts(plan: Plan) -> dict[str, int]:
    got = Counter(str(f.status) for f in plan.fates)
    return {str(s): got.get(str(s), 0) for s in Status}


def host_data(plan: Plan) -> dict[str, Any]:
    h = plan.host
    return {"interfaces": list(h.interfaces),
            "local": {f"ipv{f}": iv.prefixes(h.local[f], f) for f in (4, 6)},
            "forwarding": {f"ipv{f}": h.forwarding[f] for f in (4, 6)},
            "routed_back": {f"ipv{f}": iv.prefixes(h.routed_back[f], f) for f in (4, 6)},
            "routed_back_why": {f"ipv{f}": why for f, why in h.routed_back_why.items()},
            "conntrack_timeouts": h.conntrack_source,
            "source": h.source}


def data(plan: Plan, ids: dict[int, list[int]] | None = None) -> dict[str, Any]:
    rules = []
    for fate in plan.fates:
        r = fate.rule
        rules.append({
            "rule": r.number, "origin": r.origin, "table": r.table, "chain": r.chain,
            "position": r.position, "line": r.line, "text": r.text, "status": str(fate.status),
            "reason": fate.reason, "blocked_by": fate.blocker,
            "tidegate_ids": (ids or {}).get(r.number, fate.ids), "scope": fate.scope,
            "netfilter": "removed for traffic of the attach interfaces" if fate.removable else "kept",
            "notes": list(dict.fromkeys(r.cond.notes)),
        })
    return {"counts": counts(plan), "rules_read": len(plan.fates),
            "tidegate_rules": sum(len(e.matches) for e in plan.entries),
            "default_action": plan.default_action, "allow_established": plan.allow_established,
            "fragments": plan.fragments,
            "established_timeouts": plan.established_timeouts, "host": host_data(plan), "notes": plan.notes,
            "rules": rules}


def rows(plan: Plan) -> list[list[object]]:
    out: list[list[object]] = []
    for fate in plan.fates:
        r = fate.rule
        text = r.text if len(r.text) <= TEXT_MAX else r.text[:TEXT_MAX - 3] + "..."
        why = fate.reason
        if fate.scope:
            why = f"{why}; {fate.scope}" if why else fate.scope
        out.append([r.number, f"{r.origin} {r.table} {r.chain}#{r.position}", str(fate.status),
                    id_ranges(fate.ids), why, text])
    return out


HEADERS = ["RULE", "WHERE", "FATE", "TIDEGATE", "WHY", "SOURCE"]


def summary_lines(plan: Plan) -> list[str]:
    c = counts(plan)
    lines = [f"{len(plan.fates)} rules read: " + ", ".join(f"{n} {s}" for s, n in c.items() if n),
             f"{sum(len(e.matches) for e in plan.entries)} Tidegate rules, default_action "
             f"{plan.default_action}, allow_established {'on' if plan.allow_established else 'off'}, "
             f"fragments {plan.fragments}"]
    h = plan.host
    lines.append(f"attach interfaces: {', '.join(h.interfaces) or '(not given)'}; forwarding: "
                 + ", ".join(f"IPv{f} {'on' if h.forwarding[f] else 'off'}" for f in (4, 6))
                 + (f" ({h.source})" if h.source else ""))
    for f in (4, 6):
        if h.forwarding[f]:
            lines.append(f"IPv{f} local destinations (INPUT's domain): "
                         + (", ".join(iv.prefixes(h.local[f], f)) or "none"))
    lines.extend(f"note: {n}" for n in plan.notes)
    return lines
