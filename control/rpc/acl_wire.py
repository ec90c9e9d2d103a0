"""The ACL on the wire <-> columns: `repeated AclRule` and the packed `AclColumns` of
proto/tidegate/v1/tidegate.proto, decoded into an AclTable and encoded from one, field by field
over all rules (no model object per rule; validation is control.policy.acl_decode's).

Paths of errors are the request's: `policy.acl[7].match.dport.low` for rule messages,
`policy.acl_columns.dport_low[7]` for the packed form.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from operator import attrgetter, methodcaller
from typing import Any

import numpy as np
import numpy.typing as npt

from control.policy.acl_decode import (
    ACTION_INVALID,
    ICMP_FIELDS,
    PORTS,
    PROTO_ANY,
    PROTO_BAD,
    AclErrors,
    Addresses,
    RawRules,
    addresses_from_columns,
    block,
    check,
    parse_prefixes,
    set_protocols,
)
from control.policy.acl_table import (
    ACTION_VALUES,
    ACTIONS,
    DEFAULT_PRIORITY,
    FLAG_LOG,
    GIVEN_DPORT,
    GIVEN_DST,
    GIVEN_SPORT,
    GIVEN_SRC,
    AclTable,
    Block,
)
from control.rpc import acl_scan
from control.rpc.api import pb2
from control.rpc.wire_scan import NotPlain
from dataplane.match.columns import ADDR_BYTES, PORT_ANY

_ID, _PRIORITY, _ACTION, _LOG, _DESCRIPTION, _METRICS, _MATCH = map(
    attrgetter, ("id", "priority", "action", "log", "description", "metrics", "match"))
_SRC, _DST, _PROTOCOL, _NUMBER, _LOW, _HIGH = map(
    attrgetter, ("src", "dst", "protocol", "protocol_number", "low", "high"))
_HAS_NUMBER = methodcaller("HasField", "protocol_number")
# proto Action -> RawRules.action (the same numbers: 0 unset, 1 allow, 2 deny, 3 reject), others invalid
_WIRE_ACTIONS = {pb2.ACTION_ALLOW: 1, pb2.ACTION_DENY: 2, pb2.ACTION_REJECT: 3}
_RAW_ACTIONS = [0, *_WIRE_ACTIONS.values()]
_ACTION_OF_VALUE = {int(v): pb2.Action.Value(f"ACTION_{a.upper()}") for v, a in zip(ACTION_VALUES, ACTIONS,
                                                                                      strict=True)}
PACKED_NO_PREFIX = 255  # AclColumns.src_len / dst_len: the rule names no such prefix
PACKED_PROTO_ANY = 256  # AclColumns.protocol: any protocol
PACKED_ICMP_ANY = 256  # AclColumns.icmp_type / icmp_code: any


def _ints(values: Any, n: int) -> npt.NDArray[np.int64]:
    return np.fromiter(values, np.int64, n)


def _protocols(raw: RawRules, matches: Sequence[Any]) -> None:
    """Match.protocol and protocol_number (control.policy.acl_decode.set_protocols)."""
    n = len(matches)
    named = _ints(map(_PROTOCOL, matches), n)
    has_number = np.fromiter(map(_HAS_NUMBER, matches), bool, n)
    number = np.zeros(n, np.int64)
    rows = np.flatnonzero(has_number)
    number[rows] = _ints((matches[r].protocol_number for r in rows.tolist()), len(rows))
    set_protocols(raw, named, has_number, number)


def raw_from_messages(acl: Sequence[Any]) -> RawRules:
    """`repeated AclRule` -> RawRules, a field at a time over every rule."""
    n = len(acl)
    raw = RawRules.sized(n)
    raw.ids = _ints(map(_ID, acl), n)
    priority = _ints(map(_PRIORITY, acl), n)
    unset = np.flatnonzero(priority == 0)  # 0 is a priority too: absent only when not present
    priority[unset[[not acl[r].HasField("priority") for r in unset.tolist()]]] = DEFAULT_PRIORITY
    raw.priority = priority
    actions = _ints(map(_ACTION, acl), n)
    raw.action = np.where(np.isin(actions, _RAW_ACTIONS), actions, ACTION_INVALID).astype(np.int8)
    raw.log = np.fromiter(map(_LOG, acl), bool, n)
    raw.description = list(map(_DESCRIPTION, acl))
    raw.metrics = np.fromiter(map(_METRICS, acl), bool, n)
    matches = list(map(_MATCH, acl))  # an unset match reads as the empty Match: any
    raw.src = [s or None for s in map(_SRC, matches)]
    raw.dst = [s or None for s in map(_DST, matches)]
    _protocols(raw, matches)
    for side in PORTS:
        has = np.fromiter(map(methodcaller("HasField", side), matches), bool, n)
        rows = np.flatnonzero(has)
        ranges = list(map(attrgetter(side), itertools.compress(matches, has)))
        given, low, high = raw.ports[side]
        given[rows] = True
        low[rows] = _ints(map(_LOW, ranges), len(rows))
        high[rows] = _ints(map(_HIGH, ranges), len(rows))
    for name in ICMP_FIELDS:
        has = np.fromiter(map(methodcaller("HasField", name), matches), bool, n)
        rows = np.flatnonzero(has)
        given, values = raw.icmp[name]
        given[rows] = True
        values[rows] = _ints((getattr(matches[r], name) for r in rows.tolist()), len(rows))
    raw.syn = np.fromiter(map(attrgetter("syn"), matches), bool, n)
    return raw


def table_from_messages(acl: Sequence[Any]) -> AclTable:
    """`repeated AclRule` (or a list of them), message by message; AclErrors (rows of `acl`)
    for a rule set that is not valid."""
    raw = raw_from_messages(acl)
    return _table(raw, parse_prefixes(raw.src), parse_prefixes(raw.dst))


def table_from_policy(policy: Any, encoded: bytes | None = None) -> AclTable:
    """Policy.acl read from the Policy's encoding (`encoded`, the bytes `policy` was parsed from,
    else the message encoded again), every rule at once (control.rpc.acl_scan), or message by
    message where that reader declines; AclErrors as table_from_messages."""
    try:
        raw, src, dst = acl_scan.raw_from_policy(policy.SerializeToString() if encoded is None else encoded)
    except NotPlain:
        return table_from_messages(policy.acl)
    return _table(raw, src, dst)


def _table(raw: RawRules, src: Addresses, dst: Addresses) -> AclTable:
    errors = check(raw, src, dst)
    if errors:
        raise AclErrors(errors)
    return AclTable.from_block(block(raw, src, dst))


# --- AclTable -> repeated AclRule ---------------------------------------------------------------

def messages_from_table(table: AclTable) -> list[Any]:
    """The rules as AclRule messages, in list order, every field set explicitly."""
    whole = table.whole()
    rows = table.list_order
    r = whole.rules
    given = whole.given[rows].tolist()
    texts = {side: _prefix_texts(whole, rows, side, bit) for side, bit in (("src", GIVEN_SRC),
                                                                              ("dst", GIVEN_DST))}
    proto_any, proto = r.proto_any[rows].tolist(), r.proto[rows].tolist()
    ports = {side: (getattr(r, f"{side}_lo")[rows].tolist(), getattr(r, f"{side}_hi")[rows].tolist())
             for side in PORTS}
    order = r.order[rows].tolist()
    actions = [_ACTION_OF_VALUE[a] for a in r.action[rows].tolist()]
    logs = (r.flags[rows] & FLAG_LOG).astype(bool).tolist()
    descriptions = whole.description[rows].tolist()
    metrics = whole.metrics[rows].tolist()
    icmp = {name: (getattr(r, f"has_{name}")[rows].tolist(), getattr(r, name)[rows].tolist())
            for name in ICMP_FIELDS}
    syn = r.syn[rows].tolist()
    out = []
    for i in range(len(rows)):
        match = pb2.Match(src=texts["src"][i], dst=texts["dst"][i])
        if not proto_any[i]:
            match.protocol, match.protocol_number = proto[i], proto[i]
        for side, bit in (("dport", GIVEN_DPORT), ("sport", GIVEN_SPORT)):
            if given[i] & bit:
                getattr(match, side).CopyFrom(pb2.PortRange(low=ports[side][0][i], high=ports[side][1][i]))
        for name, (has, values) in icmp.items():
            if has[i]:
                setattr(match, name, values[i])
        match.syn = syn[i]
        out.append(pb2.AclRule(id=order[i] & 0xFFFFFFFF, priority=order[i] >> 32, action=actions[i],
                               match=match, log=logs[i], description=descriptions[i], metrics=metrics[i]))
    return out


def _prefix_texts(whole: Block, rows: npt.NDArray[np.intp], side: str, bit: int) -> list[str]:
    r = whole.rules
    addresses = Addresses(whole.given[rows] & bit != 0, r.family[rows], getattr(r, f"{side}_addr")[rows],
                          getattr(r, f"{side}_len")[rows], {})
    return [addresses.text(i) if g else "" for i, g in enumerate(addresses.given.tolist())]


# --- AclColumns (packed) ------------------------------------------------------------------------

_PACKED_PATHS = {"id": "id", "priority": "priority", "action": "action", "match.src": "src_addr",
                 "match.dst": "dst_addr", "match.protocol": "protocol", "match.protocol_number": "protocol",
                 "match.dport.low": "dport_low", "match.dport.high": "dport_high", "match.dport": "dport_low",
                 "match.sport.low": "sport_low", "match.sport.high": "sport_high", "match.sport": "sport_low",
                 "match": "family", "log": "log", "description": "description",
                 "metrics": "metrics", "match.icmp_type": "icmp_type", "match.icmp_code": "icmp_code",
                 "match.syn": "syn"}


class PackedErrors(ValueError):
    """(field path under acl_columns, message) pairs of a refused AclColumns."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__(f"{len(errors)} errors")


def _column(msg: Any, name: str, n: int, default: int | None, errors: list[tuple[str, str]]) -> Any:
    values = getattr(msg, name)
    if len(values) == n:
        return np.array(values, dtype=np.int64) if n else np.zeros(0, np.int64)
    if len(values) == 0 and default is not None:
        return np.full(n, default, np.int64)
    errors.append((name, f"{len(values):,} entries for {n:,} rules (the length of id): give one per rule"
                   + (", or none" if default is not None else "")))
    return np.full(n, default or 0, np.int64)


def _bytes_column(msg: Any, name: str, n: int, width: int, errors: list[tuple[str, str]]) -> Any:
    data = getattr(msg, name)
    if len(data) == n * width or not data:
        return np.frombuffer(data, np.uint8).reshape(n, width) if data else None
    errors.append((name, f"{len(data):,} bytes for {n:,} rules (the length of id): give {width} per rule, "
                   "or none"))
    return None


def _packed_side(msg: Any, side: str, family: npt.NDArray[np.uint8], n: int,
                 errors: list[tuple[str, str]]) -> Addresses:
    addr = _bytes_column(msg, f"{side}_addr", n, ADDR_BYTES, errors)
    plen = _bytes_column(msg, f"{side}_len", n, 1, errors)
    if plen is None:
        return Addresses.sized(n)
    plen = plen[:, 0]
    if addr is None:
        addr = np.zeros((n, ADDR_BYTES), np.uint8)
    return addresses_from_columns(plen != PACKED_NO_PREFIX, family, addr, plen, side)


def table_from_packed(msg: Any) -> AclTable:
    """AclColumns -> AclTable; PackedErrors (paths under acl_columns) for columns that are not."""
    n = len(msg.id)
    errors: list[tuple[str, str]] = []
    raw = RawRules.sized(n)
    raw.ids = _column(msg, "id", n, None, errors)
    raw.priority = _column(msg, "priority", n, DEFAULT_PRIORITY, errors)
    actions = _column(msg, "action", n, None, errors)
    raw.action = np.where(np.isin(actions, _RAW_ACTIONS), actions, ACTION_INVALID).astype(np.int8)
    raw.log = _column(msg, "log", n, 0, errors).astype(bool)
    raw.metrics = _column(msg, "metrics", n, 0, errors).astype(bool)
    raw.description = list(msg.description) if len(msg.description) == n else [""] * n
    if len(msg.description) not in (0, n):
        errors.append(("description", f"{len(msg.description):,} entries for {n:,} rules: give one per "
                                      "rule, or none"))
    protocol = _column(msg, "protocol", n, PACKED_PROTO_ANY, errors)
    raw.protocol = np.where(protocol == PACKED_PROTO_ANY, PROTO_ANY, protocol)
    for r in np.flatnonzero(protocol > PACKED_PROTO_ANY).tolist():
        raw.notes[(r, "match.protocol")] = f"{protocol[r]} is not a protocol number 0-255 (or 256: any)"
        raw.protocol[r] = PROTO_BAD
    for side in PORTS:
        low = _column(msg, f"{side}_low", n, PORT_ANY[0], errors)
        high = _column(msg, f"{side}_high", n, PORT_ANY[1], errors)
        raw.ports[side] = ((low != PORT_ANY[0]) | (high != PORT_ANY[1]), low, high)
    for name in ICMP_FIELDS:
        values = _column(msg, name, n, PACKED_ICMP_ANY, errors)
        given = values != PACKED_ICMP_ANY
        for r in np.flatnonzero(values > PACKED_ICMP_ANY).tolist():
            errors.append((f"{name}[{r}]", f"{values[r]} is not an ICMP {name.removeprefix('icmp_')} 0-255 "
                                           "(or 256: any)"))
        raw.icmp[name] = (given, np.where(given, values, 0))
    raw.syn = _column(msg, "syn", n, 0, errors).astype(bool)
    family_bytes = _bytes_column(msg, "family", n, 1, errors)
    family = np.zeros(n, np.uint8) if family_bytes is None else family_bytes[:, 0].copy()
    src, dst = (_packed_side(msg, side, family, n, errors) for side in ("src", "dst"))
    for r in np.flatnonzero(~np.isin(family, (0, 4, 6))).tolist():
        errors.append((f"family[{r}]", f"{family[r]} is not an address family: 0 (no address), 4 or 6"))
    for r in np.flatnonzero((family != 0) & ~src.given & ~dst.given).tolist():
        errors.append((f"family[{r}]", f"{family[r]}, but the rule names no address: write 0 (or a prefix of "
                                       "length 0 to match every address of the family)"))
    if errors:
        raise PackedErrors(errors)
    found = check(raw, src, dst)
    if found:
        raise PackedErrors([(_packed_path(row, name), message) for row, name, message in found])
    return AclTable.from_block(block(raw, src, dst))


def _packed_path(row: int | None, name: str) -> str:
    if row is None:
        return "id"
    return f"{_PACKED_PATHS.get(name, name)}[{row}]"


def packed_from_table(table: AclTable) -> Any:
    """The table as AclColumns, in list order."""
    whole = table.whole()
    rows = table.list_order
    r = whole.rules
    order = r.order[rows]
    given = whole.given[rows]
    protocol = np.where(r.proto_any[rows], PACKED_PROTO_ANY, r.proto[rows].astype(np.int64))
    msg = pb2.AclColumns(id=(order & 0xFFFFFFFF).tolist(), priority=(order >> np.uint64(32)).tolist(),
                         action=[_ACTION_OF_VALUE[a] for a in r.action[rows].tolist()],
                         family=r.family[rows].tobytes(),
                         protocol=protocol.tolist(),
                         log=(r.flags[rows] & FLAG_LOG).astype(bool).tolist(),
                         description=whole.description[rows].tolist(), metrics=whole.metrics[rows].tolist())
    for side, bit in (("src", GIVEN_SRC), ("dst", GIVEN_DST)):
        has = given & bit != 0
        setattr(msg, f"{side}_addr", getattr(r, f"{side}_addr")[rows].tobytes())
        setattr(msg, f"{side}_len", np.where(has, getattr(r, f"{side}_len")[rows], PACKED_NO_PREFIX)
                .astype(np.uint8).tobytes())
    for side in PORTS:
        getattr(msg, f"{side}_low").extend(getattr(r, f"{side}_lo")[rows].tolist())
        getattr(msg, f"{side}_high").extend(getattr(r, f"{side}_hi")[rows].tolist())
    # the ICMP and SYN columns only when a rule uses them (empty: any, for every rule)
    for name in ICMP_FIELDS:
        has = getattr(r, f"has_{name}")[rows]
        if has.any():
            values = getattr(r, name)[rows].astype(np.int64)
            getattr(msg, name).extend(np.where(has, values, PACKED_ICMP_ANY).tolist())
    if r.syn[rows].any():
        msg.syn.extend(r.syn[rows].tolist())
    return msg
