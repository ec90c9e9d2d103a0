"""A Plan written as a Tidegate policy (the models, so whatever comes out is valid) and as YAML.

Rule ids and priorities are the rules' places in the first-match list (1, 2, ...); each
rule's description names the source rule it came from. `base` is the policy in place (for
`--apply`): its tunnels, chains and other settings stay, the ACL, default_action,
allow_established and fragments are the import's (established timeouts: the longer of the two).
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from control.migrate.translate import Plan
from control.policy.models import Policy

HEADER = ("# Written by `tidegate import`: the rules that may move in front of netfilter.\n"
          "# Rule ids follow first-match order; each description names its source rule.\n")


def acl(plan: Plan) -> list[dict[str, Any]]:
    """The ACL as model dicts; fills each entry's Copy.ids."""
    out: list[dict[str, Any]] = []
    for entry in plan.entries:
        ids = []
        for match in entry.matches:
            number = len(out) + 1
            ids.append(number)
            out.append({"id": number, "priority": number, "action": entry.action, "match": match,
                        "description": entry.description})
        if entry.copy is not None:
            entry.copy.ids = ids
    return out


def to_policy(plan: Plan, base: Policy | None = None) -> Policy:
    data: dict[str, Any] = base.model_dump(mode="json") if base is not None else {}
    settings = dict(data.get("settings", {}))
    settings["default_action"] = plan.default_action
    # Always set: a recorded flow's packet skips every deny, so the plan holds only with the
    # setting it was made for (established.py), whatever the daemon had before.
    settings["allow_established"] = plan.allow_established
    # Likewise: the plan judges fragmented datagrams as netfilter does only with its setting
    # (fragments.py), whatever the daemon had before.
    settings["fragments"] = plan.fragments
    if plan.established_timeouts is not None:
        had = dict(settings.get("established_timeouts") or {})
        settings["established_timeouts"] = {k: max(v, had.get(k, 0))
                                            for k, v in plan.established_timeouts.items()}
    data["settings"] = settings
    data["acl"] = acl(plan)
    return Policy.model_validate(data)


def _short(rule: dict[str, Any]) -> dict[str, Any]:
    match = {k: (f"{v['low']}-{v['high']}" if v["low"] != v["high"] else v["low"])
             if isinstance(v, dict) and set(v) == {"low", "high"} else v
             for k, v in rule["match"].items() if v is not None and v is not False}
    out = {"id": rule["id"], "priority": rule["priority"], "action": rule["action"]}
    if match:
        out["match"] = match
    if rule.get("description"):
        out["description"] = rule["description"]
    return out


def policy_yaml(policy: Policy) -> str:
    """YAML whose ACL has one rule a line, written as JSON (a JSON object is a YAML flow mapping):
    100,000 rules in well under a second, where a YAML emitter takes tens of seconds."""
    data = policy.model_dump(mode="json", exclude_none=True, exclude_defaults=False)
    rules = data.pop("acl")
    head = yaml.safe_dump(data, sort_keys=False, width=200)
    lines = [json.dumps(_short(r), separators=(", ", ": ")) for r in rules]
    acl = "acl:\n" + "".join(f"- {line}\n" for line in lines) if lines else "acl: []\n"
    return HEADER + head + acl
