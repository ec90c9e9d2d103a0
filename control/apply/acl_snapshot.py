"""The ACL in the state file: its columns, each the base64 of its bytes, inside the state's JSON.

    "acl": {"format": "columns/1", "rules": N, "crc32": C,
            "columns": {"rule_id": "<base64>", "order": ..., "given": ..., "seq": ...},
            "descriptions": ["...", ...]}          (absent when every description is empty)

One file still holds the whole state (replaced atomically by control.apply.state); 100,000 rules are
about 9 MB written in tens of milliseconds and read back as fast, with no object per rule.
Rows are in judging order, little-endian; `seq` keeps the list order. Reading checks the
checksum and the shapes, then every rule as a request's would be checked (control.policy.acl_decode),
so a file edited by hand or damaged is refused naming the rule and field, never half-read.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

import numpy as np
import numpy.typing as npt

from control.policy.acl_decode import (
    ACTION_ALLOW,
    ACTION_DENY,
    ACTION_INVALID,
    ACTION_REJECT,
    PORTS,
    PROTO_ANY,
    RawRules,
    addresses_from_columns,
    block,
    check,
)
from control.policy.acl_table import (
    ACTION_VALUES,
    FLAG_LOG,
    GIVEN_DPORT,
    GIVEN_DST,
    GIVEN_SPORT,
    GIVEN_SRC,
    AclTable,
    Block,
)
from dataplane.match.columns import ICMP_FIELDS, PORT_ANY, SCHEMA

FORMAT = "columns/1"
ERRORS_SHOWN = 5
_EXTRA = (("given", np.uint8, ()), ("seq", np.uint64, ()), ("metrics", np.bool_, ()))
# Columns a file may lack (written before they existed): all zero then (no mark; any ICMP type
# and code, any TCP flags).
_OPTIONAL = frozenset({"mark", "has_icmp_type", "icmp_type", "has_icmp_code", "icmp_code", "syn"})
_GIVEN = {"src": GIVEN_SRC, "dst": GIVEN_DST, "sport": GIVEN_SPORT, "dport": GIVEN_DPORT}


def is_columns(value: object) -> bool:
    return isinstance(value, dict) and value.get("format") == FORMAT


def _little(dtype: Any) -> np.dtype[Any]:
    return np.dtype(dtype).newbyteorder("<")


def _arrays(table: AclTable) -> dict[str, npt.NDArray[Any]]:
    whole = table.whole()
    out = {name: getattr(whole.rules, name) for name, _, _ in SCHEMA}
    out["given"], out["seq"], out["metrics"] = whole.given, whole.seq, whole.metrics
    return out


def _encoded(table: AclTable) -> tuple[int, dict[str, bytes]]:
    """(crc32, the base64 of each column)."""
    crc = 0
    columns = {}
    for name, array in _arrays(table).items():
        data = np.ascontiguousarray(array.astype(_little(array.dtype))).tobytes()
        crc = zlib.crc32(data, crc)
        columns[name] = base64.b64encode(data)
    return crc, columns


def dump(table: AclTable) -> dict[str, Any]:
    crc, columns = _encoded(table)
    out: dict[str, Any] = {"format": FORMAT, "rules": len(table), "crc32": crc,
                           "columns": {name: text.decode("ascii") for name, text in columns.items()}}
    descriptions = table.whole().description
    if any(descriptions):
        out["descriptions"] = descriptions.tolist()
    return out


def dump_json(table: AclTable) -> bytes:
    """json.dumps(dump(table)) as bytes, compact, written directly: the base64 texts need no
    escaping, and a JSON encoder scanning megabytes of them for it is most of the cost."""
    crc, columns = _encoded(table)
    parts = [b'{"format":"%s","rules":%d,"crc32":%d,"columns":{' % (FORMAT.encode(), len(table), crc),
             b",".join(b'"%s":"%s"' % (name.encode(), text) for name, text in columns.items()), b"}"]
    descriptions = table.whole().description
    if any(descriptions):
        parts.append(b',"descriptions":' + json.dumps(descriptions.tolist(), separators=(",", ":")).encode())
    parts.append(b"}")
    return b"".join(parts)


def load(data: dict[str, Any]) -> AclTable:
    """ValueError saying what is wrong with the columns."""
    n = data.get("rules")
    columns = data.get("columns")
    if not isinstance(n, int) or n < 0 or not isinstance(columns, dict):
        raise ValueError("acl: `rules` (a count) and `columns` are required")
    arrays: dict[str, Any] = {}
    crc = 0
    for name, dtype, shape in (*SCHEMA, *_EXTRA):
        text = columns.get(name)
        if text is None and name in _OPTIONAL:
            arrays[name] = np.zeros((n, *shape), dtype)
            continue
        if not isinstance(text, str):
            raise ValueError(f"acl.columns.{name} is missing")
        raw = base64.b64decode(text, validate=True)
        crc = zlib.crc32(raw, crc)
        size = n * int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if len(raw) != size:
            raise ValueError(f"acl.columns.{name}: {len(raw)} bytes, {size} expected for {n} rules")
        arrays[name] = np.frombuffer(raw, _little(dtype)).astype(dtype).reshape(n, *shape)
    if crc != data.get("crc32"):
        raise ValueError("acl: the columns do not match their checksum (crc32): the file is damaged")
    descriptions = data.get("descriptions", [""] * n)
    if not isinstance(descriptions, list) or len(descriptions) != n or \
            not all(isinstance(d, str) for d in descriptions):
        raise ValueError(f"acl.descriptions: expected {n} texts")
    return _checked(arrays, descriptions)


def _checked(a: dict[str, Any], descriptions: list[str]) -> AclTable:
    """The columns as rules again, checked as any rule set (their rows are those of the file)."""
    n = len(a["rule_id"])
    raw = RawRules.sized(n)
    raw.ids = a["rule_id"].astype(np.int64)
    raw.priority = (a["order"] >> np.uint64(32)).astype(np.int64)
    action = np.full(n, ACTION_INVALID, np.int8)
    action[a["action"] == ACTION_VALUES[0]] = ACTION_ALLOW
    action[a["action"] == ACTION_VALUES[1]] = ACTION_DENY
    action[a["action"] == ACTION_VALUES[2]] = ACTION_REJECT
    raw.action = action
    raw.log = (a["flags"] & FLAG_LOG) != 0
    raw.description = descriptions
    raw.metrics = a["metrics"]
    raw.protocol = np.where(a["proto_any"], PROTO_ANY, a["proto"].astype(np.int64))
    given = a["given"]
    problems = [f"acl row {r}: order does not hold the rule's id" for r in
                np.flatnonzero((a["order"] & np.uint64(0xFFFFFFFF)) != a["rule_id"]).tolist()]
    problems += [f"acl row {r}: mark is not 0 (ACL rules set no mark)"
                 for r in np.flatnonzero(a["mark"]).tolist()]
    for side in PORTS:
        has = (given & _GIVEN[side]) != 0
        low, high = a[f"{side}_lo"].astype(np.int64), a[f"{side}_hi"].astype(np.int64)
        raw.ports[side] = (has, low, high)
        problems += [f"acl row {r}: {side} is not given but not 0-65535" for r in
                     np.flatnonzero(~has & ((low != PORT_ANY[0]) | (high != PORT_ANY[1]))).tolist()]
    for name in ICMP_FIELDS:
        raw.icmp[name] = (a[f"has_{name}"].copy(), a[name].astype(np.int64))
    raw.syn = a["syn"].copy()
    src, dst = (addresses_from_columns((given & _GIVEN[side]) != 0, a["family"], a[f"{side}_addr"],
                                       a[f"{side}_len"], side) for side in ("src", "dst"))
    problems += [f"acl row {row}: {name or 'acl'}: {message}" for row, name, message in check(raw, src, dst)]
    if problems:
        more = f" (and {len(problems) - ERRORS_SHOWN} more)" if len(problems) > ERRORS_SHOWN else ""
        raise ValueError("; ".join(problems[:ERRORS_SHOWN]) + more)
    rebuilt = block(raw, src, dst)
    return AclTable.from_block(Block(rebuilt.rules, rebuilt.given, a["seq"], rebuilt.description,
                                     rebuilt.metrics))
