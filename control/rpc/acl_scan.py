"""`repeated AclRule` of a Policy read from its encoding into RawRules, every rule at once.

Walking 100,000 parsed messages field by field costs a Python object per message and an
attribute read per field (~0.3 s, and garbage for the cyclic collector); the same rules read from
the Policy's bytes by column (control.rpc.wire_scan) cost a pass over the elements and a few
numpy steps per field. What this fills is what control.rpc.acl_wire.raw_from_messages fills from
the messages (tests/unit/control/rpc/test_acl_scan.py holds the two to each other), prefixes
parsed from the bytes (control.policy.acl_decode.prefixes_in). Encodings the reader declines
(wire_scan.NotPlain) are decoded message by message by the caller.
"""

from __future__ import annotations

import numpy as np

from control.policy.acl_decode import (
    ACTION_INVALID,
    ICMP_FIELDS,
    PORTS,
    Addresses,
    RawRules,
    prefixes_in,
    set_protocols,
)
from control.policy.acl_table import DEFAULT_PRIORITY
from control.rpc.api import pb2
from control.rpc.wire_scan import Column, Wire

ACL_FIELD = pb2.Policy.DESCRIPTOR.fields_by_name["acl"].number
_RAW_ACTIONS = [0, pb2.ACTION_ALLOW, pb2.ACTION_DENY, pb2.ACTION_REJECT]  # RawRules.action: the same numbers


def raw_from_policy(data: bytes) -> tuple[RawRules, Addresses, Addresses]:
    """(RawRules, src, dst) of the ACL rules of an encoded Policy, in list order. NotPlain where
    the encoding is not one this reads (the caller decodes the parsed messages instead)."""
    wire = Wire(data)
    start, end = wire.entries(ACL_FIELD)
    n = len(start)
    rules = wire.columns(start, end, pb2.AclRule.DESCRIPTOR)
    raw = RawRules.sized(n)
    raw.ids = rules["id"].uint32()
    raw.priority = np.where(rules["priority"].present, rules["priority"].uint32(), DEFAULT_PRIORITY)
    actions = rules["action"].int32()
    raw.action = np.where(np.isin(actions, _RAW_ACTIONS), actions, ACTION_INVALID).astype(np.int8)
    raw.log, raw.metrics = rules["log"].flag(), rules["metrics"].flag()
    described = np.flatnonzero(rules["description"].present)
    for row, text in zip(described.tolist(), wire.texts(rules["description"], described), strict=True):
        raw.description[row] = text
    match = _sub(wire, rules["match"], pb2.Match.DESCRIPTOR)
    set_protocols(raw, match["protocol"].int32(), match["protocol_number"].present,
                  match["protocol_number"].uint32())
    for side in PORTS:
        ports = _sub(wire, match[side], pb2.PortRange.DESCRIPTOR)
        raw.ports[side] = (match[side].present, ports["low"].uint32(),
                           np.where(match[side].present, ports["high"].uint32(), raw.ports[side][2]))
    for name in ICMP_FIELDS:
        raw.icmp[name] = (match[name].present, match[name].uint32())
    raw.syn = match["syn"].flag()
    src, dst = (_prefixes(wire, match[side]) for side in ("src", "dst"))
    return raw, src, dst


def _sub(wire: Wire, field: Column, descriptor: object) -> dict[str, Column]:
    """The columns of a sub-message field, one row per outer message (absent: every field absent)."""
    rows = np.flatnonzero(field.present)
    return wire.columns(field.start[rows], field.end()[rows], descriptor, rows, len(field.present))


def _prefixes(wire: Wire, field: Column) -> Addresses:
    """src or dst: an empty text is no prefix (as the messages read: `s or None`)."""
    given = field.present & (field.length > 0)
    return prefixes_in(wire.buf, field.start, np.where(given, field.length, 0), given,
                       lambda rows: wire.texts(field, rows))
