"""A rule's JSON expressions written back roughly as `nft list ruleset` shows them, for the
report (the JSON carries no text). Unknown pieces are shown as compact JSON."""

from __future__ import annotations

import json
from typing import Any


def _value(v: Any) -> str:
    if isinstance(v, dict):
        if "prefix" in v:
            return f"{v['prefix']['addr']}/{v['prefix']['len']}"
        if "range" in v:
            return "-".join(_value(x) for x in v["range"])
        if "set" in v:
            return "{ " + ", ".join(_value(x) for x in v["set"]) + " }"
        if "concat" in v:
            return " . ".join(_value(x) for x in v["concat"])
        if "elem" in v:
            return _value(v["elem"].get("val"))
        if "|" in v:
            return "|".join(_value(x) for x in v["|"])
        return _left(v)
    if isinstance(v, list):
        return ",".join(_value(x) for x in v)
    if isinstance(v, str) and " " in v:
        return json.dumps(v)
    return str(v)


def _left(v: Any) -> str:
    if isinstance(v, dict):
        if "payload" in v:
            p = v["payload"]
            return f"{p.get('protocol', p.get('base', '?'))} {p.get('field', p.get('offset', '?'))}"
        if "meta" in v:
            return f"meta {v['meta'].get('key')}"
        if "ct" in v:
            return f"ct {v['ct'].get('key')}"
        if "&" in v:
            return f"{_left(v['&'][0])} & {_value(v['&'][1])}"
        if "concat" in v:
            return " . ".join(_left(x) for x in v["concat"])
    return json.dumps(v, separators=(",", ":"))


def _statement(stmt: dict[str, Any]) -> str:
    key, body = next(iter(stmt.items()))
    if key == "match":
        op = body.get("op", "==")
        shown = "" if op in ("==", "in") else f"{op} "
        return f"{_left(body['left'])} {shown}{_value(body['right'])}"
    if body is None:
        return key
    if key in ("jump", "goto"):
        return f"{key} {body['target']}"
    if key == "counter":
        return "counter"
    if key == "reject":
        return "reject" + (f" with {body.get('type')} {body.get('expr', '')}".rstrip() if body else "")
    if key == "vmap":
        return f"{_left(body['key'])} vmap {_value(body['data'])}"
    if key == "log":
        return "log" + (f" prefix {json.dumps(body['prefix'])}" if isinstance(body, dict) and "prefix" in body
                        else "")
    return f"{key} {json.dumps(body, separators=(',', ':'))}"


def render(exprs: list[Any]) -> str:
    return " ".join(_statement(s) for s in exprs if isinstance(s, dict) and len(s) == 1)
