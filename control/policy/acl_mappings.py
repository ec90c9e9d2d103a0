"""ACL rules as YAML/JSON mappings (a policy file, a list given to the Policy model) -> RawRules
(control.policy.acl_decode), read in one pass without a model object per rule.

A mapping of the usual shape (known keys, values of the types a file holds: ints, strings,
`80-90` port texts, protocol names or numbers) is read directly; any other rule (an unknown key,
a value of an odd type, not a mapping at all) is handed to the AclRule model, whose errors, or
values, are taken as they are. Then every rule is checked by column as any other rule set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from control.policy.acl_decode import (
    ACTION_ALLOW,
    ACTION_DENY,
    ACTION_INVALID,
    ACTION_MISSING,
    ACTION_REJECT,
    PORTS,
    PROTO_ANY,
    PROTO_BAD,
    SIDES,
    RawRules,
    decode,
)
from control.policy.acl_table import DEFAULT_PRIORITY, AclTable
from control.policy.rule_model import (
    PROTOCOL_MAX,
    PROTOCOLS,
    AclRule,
    describe_errors,
    port_range,
    protocol_error,
)
from dataplane.match.columns import ICMP_FIELDS

RULE_KEYS = frozenset(AclRule.model_fields)
MATCH_KEYS = frozenset(AclRule.model_fields["match"].annotation.model_fields)  # type: ignore[union-attr]
_INT_LIMIT = 1 << 62  # beyond this an int is refused by a range check anyway: the model says so
_ACTIONS = {"allow": ACTION_ALLOW, "deny": ACTION_DENY, "reject": ACTION_REJECT}


class _Odd(Exception):
    """A rule the fast path does not read: the model judges it."""


def _int(value: object) -> int:
    if type(value) is not int or not -_INT_LIMIT < value < _INT_LIMIT:
        raise _Odd
    return value


def _protocol_number(raw: RawRules, row: int, value: object, name: str = "match.protocol") -> int:
    """A protocol as written -> its number, PROTO_ANY, or PROTO_BAD with a note."""
    if value is None:
        return PROTO_ANY
    if type(value) is str:
        if value in PROTOCOLS:
            return PROTOCOLS[value]
        number: object = int(value) if value.isascii() and value.isdigit() else value
    elif type(value) is int:
        number = value
    else:
        raise _Odd
    if type(number) is int and 0 <= number <= PROTOCOL_MAX:
        return number
    raw.notes[(row, name)] = protocol_error(value)
    return PROTO_BAD


def _ports(raw: RawRules, row: int, side: str, value: object) -> None:
    if value is None:
        return
    if type(value) is str:
        try:
            value = port_range(value)
        except ValueError as exc:
            raw.notes[(row, f"match.{side}")] = str(exc)
            return
    if type(value) is int:
        low = high = value
    elif type(value) is dict and value.keys() == {"low", "high"}:
        low, high = _int(value["low"]), _int(value["high"])
    else:
        raise _Odd
    given, lows, highs = raw.ports[side]
    given[row], lows[row], highs[row] = True, low, high


def _read_mapping(raw: RawRules, row: int, d: object) -> None:
    if type(d) is not dict or not d.keys() <= RULE_KEYS:
        raise _Odd
    raw.ids[row] = _int(d.get("id"))
    if "priority" in d:
        raw.priority[row] = _int(d["priority"])
    action = d.get("action")
    if action is not None and type(action) is not str:
        raise _Odd
    raw.action[row] = ACTION_MISSING if action is None else _ACTIONS.get(action, ACTION_INVALID)
    log, description, metrics = d.get("log", False), d.get("description", ""), d.get("metrics", False)
    if type(log) is not bool or type(description) is not str or type(metrics) is not bool:
        raise _Odd
    raw.log[row], raw.description[row], raw.metrics[row] = log, description, metrics
    match = d.get("match", {})
    if type(match) is not dict or not match.keys() <= MATCH_KEYS:
        raise _Odd
    for side in SIDES:
        text = match.get(side)
        if text is not None and type(text) is not str:
            raise _Odd
        getattr(raw, side)[row] = text
    raw.protocol[row] = _protocol_number(raw, row, match.get("protocol"))
    for side in PORTS:
        _ports(raw, row, side, match.get(side))
    for name in ICMP_FIELDS:
        if match.get(name) is not None:
            given, values = raw.icmp[name]
            given[row], values[row] = True, _int(match[name])
    syn = match.get("syn", False)
    if type(syn) is not bool:
        raise _Odd
    raw.syn[row] = syn


def _read_model(raw: RawRules, row: int, rule: AclRule) -> None:
    m = rule.match
    raw.ids[row], raw.priority[row] = rule.id, rule.priority
    raw.action[row] = _ACTIONS[rule.action]
    raw.log[row], raw.description[row], raw.metrics[row] = rule.log, rule.description, rule.metrics
    raw.src[row] = None if m.src is None else str(m.src)
    raw.dst[row] = None if m.dst is None else str(m.dst)
    number = m.protocol_number
    raw.protocol[row] = PROTO_ANY if number is None else number
    for side in PORTS:
        ports = getattr(m, side)
        if ports is not None:
            given, lows, highs = raw.ports[side]
            given[row], lows[row], highs[row] = True, ports.low, ports.high
    for name in ICMP_FIELDS:
        value = getattr(m, name)
        if value is not None:
            given, values = raw.icmp[name]
            given[row], values[row] = True, value
    raw.syn[row] = m.syn


def raw_from_dicts(items: Sequence[Any]) -> RawRules:
    """Rules as mappings (parsed YAML/JSON) or AclRule models -> RawRules."""
    raw = RawRules.sized(len(items))
    for row, item in enumerate(items):
        if type(item) is AclRule:
            _read_model(raw, row, item)
            continue
        try:
            _read_mapping(raw, row, item)
            continue
        except _Odd:
            pass
        for key in [k for k in raw.notes if k[0] == row]:
            del raw.notes[key]
        _neutral(raw, row)
        try:
            _read_model(raw, row, AclRule.model_validate(item))
        except ValidationError as exc:
            raw.settled[row] = [("" if p == "(policy)" else p, m) for p, m in describe_errors(exc)]
    return raw


def _neutral(raw: RawRules, row: int) -> None:
    """A row the fast path left half read, as a valid rule: the model fills it, or refuses it
    (then its errors are the model's, and no column check may find more)."""
    raw.ids[row], raw.priority[row], raw.action[row] = 1, DEFAULT_PRIORITY, ACTION_ALLOW
    raw.log[row], raw.description[row], raw.src[row], raw.dst[row] = False, "", None, None
    raw.metrics[row] = False
    raw.protocol[row] = PROTO_ANY
    for side in PORTS:
        raw.ports[side][0][row] = False
    for name in ICMP_FIELDS:
        raw.icmp[name][0][row] = False
    raw.syn[row] = False


def decode_dicts(items: Sequence[Any]) -> AclTable:
    """YAML/JSON rule mappings (or AclRule models) -> AclTable; AclErrors otherwise."""
    return decode(raw_from_dicts(items))
