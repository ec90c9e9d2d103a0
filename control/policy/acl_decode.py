"""Bulk ACL decoding: rules as sent (protobuf messages, YAML/JSON, packed columns, the state file)
-> an AclTable, with no model object per rule.

A reader (control.rpc.acl_wire for the wire forms, control.policy.acl_mappings for YAML/JSON,
control.apply.acl_snapshot for the state file) fills `RawRules`: one array per field, values as
written. `check` then validates by column, each check one numpy expression over every rule; only
prefix texts are parsed one by one, canonical IPv4 prefixes in C (inet_pton). Each error names
the field with the rule's index and says what the models say (control.policy.rule_model;
tests/control/policy/test_acl_decode.py holds the two to each other):
`acl[73211].match.dport.low: Input should be less than or equal to 65535`. As in the models, a
rule's own checks of several fields (ports against the protocol, the families of src and dst)
are made when those fields are valid, and duplicate ids when every rule is.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import TypeAdapter, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from control.policy.acl_table import (
    ACTION_VALUES,
    DEFAULT_PRIORITY,
    FLAG_LOG,
    GIVEN_DPORT,
    GIVEN_DST,
    GIVEN_SPORT,
    GIVEN_SRC,
    AclTable,
    Block,
)
from control.policy.prefix_scan import PAD, scan_ipv4
from control.policy.rule_model import (
    ICMP_FIELD_MAX,
    PORT_MAX,
    PORT_PROTOCOL_NUMBERS,
    PROTOCOL_MAX,
    PROTOCOL_NAMES,
    U32_MAX,
    AclRule,
    Network,
    PortRange,
    describe_errors,
    icmp_error,
    ports_error,
    protocol_conflict,
    protocol_error,
    syn_error,
)
from dataplane import protocols
from dataplane.match.columns import ADDR_BYTES, ICMP_FIELDS, PORT_ANY, SCHEMA, RuleColumns

I64 = npt.NDArray[np.int64]
# RawRules.action: 1.. are ACTIONS in order (and the proto Action numbers), 0 unset
ACTION_MISSING, ACTION_ALLOW, ACTION_DENY, ACTION_REJECT, ACTION_INVALID = 0, 1, 2, 3, 4
PROTO_ANY, PROTO_BAD = -1, -2  # RawRules.protocol besides the numbers 0-255
SIDES = ("src", "dst")
PORTS = ("dport", "sport")
ICMP_NUMBERS = sorted(protocols.ICMP_NUMBERS)
# Where each field's errors come within a rule: the models' field order.
RANK = {"id": 0, "priority": 1, "action": 2, "match.src": 3, "match.dst": 4, "match.protocol": 5,
        "match.protocol_number": 5, "match.dport.low": 6, "match.dport.high": 7, "match.dport": 8,
        "match.sport.low": 9, "match.sport.high": 10, "match.sport": 11, "match.icmp_type": 12,
        "match.icmp_code": 13, "match.syn": 14, "match": 15, "log": 16, "description": 17, "metrics": 18}


def _model_message(data: dict[str, Any], path: str) -> str:
    """What the AclRule model says about `path` of `data`: messages are the models', not copies."""
    try:
        AclRule.model_validate(data)
    except ValidationError as exc:
        return next(m for p, m in describe_errors(exc) if p == path)
    raise AssertionError(f"{data} is valid")


_RULE = {"id": 1, "action": "deny"}
_TCP = {"protocol": "tcp"}
_ICMP = {"protocol": "icmp"}
MSG = {
    ("id", "low"): _model_message({**_RULE, "id": 0}, "id"),
    ("id", "high"): _model_message({**_RULE, "id": U32_MAX + 1}, "id"),
    ("priority", "low"): _model_message({**_RULE, "priority": -1}, "priority"),
    ("priority", "high"): _model_message({**_RULE, "priority": U32_MAX + 1}, "priority"),
    ("action", "missing"): _model_message({"id": 1}, "action"),
    ("action", "invalid"): _model_message({**_RULE, "action": "x"}, "action"),
    ("port", "low"): _model_message({**_RULE, "match": {**_TCP, "dport": -1}}, "match.dport.low"),
    ("port", "high"): _model_message({**_RULE, "match": {**_TCP, "dport": PORT_MAX + 1}}, "match.dport.low"),
    ("icmp", "low"): _model_message({**_RULE, "match": {**_ICMP, "icmp_type": -1}}, "match.icmp_type"),
    ("icmp", "high"): _model_message({**_RULE, "match": {**_ICMP, "icmp_type": ICMP_FIELD_MAX + 1}},
                                     "match.icmp_type"),
    ("description", "long"): _model_message({**_RULE, "description": "x" * 257}, "description"),
}
DESCRIPTION_MAX = AclRule.model_fields["description"].metadata[0].max_length


@dataclass
class RawRules:
    """Fields of n rules as decoded, in list order, before any check."""

    ids: I64
    priority: I64
    action: npt.NDArray[np.int8]  # ACTION_*
    log: npt.NDArray[np.bool_]
    description: list[str]
    metrics: npt.NDArray[np.bool_]
    src: list[str | None]  # text as written; None: not given
    dst: list[str | None]
    protocol: I64  # 0-255, PROTO_ANY, or PROTO_BAD (its message in `notes`)
    ports: dict[str, tuple[npt.NDArray[np.bool_], I64, I64]]  # "dport" -> (given, low, high)
    icmp: dict[str, tuple[npt.NDArray[np.bool_], I64]]  # "icmp_type" -> (given, value)
    syn: npt.NDArray[np.bool_]
    # Errors found while decoding, by (row, field): a protocol or a port text that is not one.
    notes: dict[tuple[int, str], str] = field(default_factory=dict)
    # Rules the AclRule model judged (odd shapes) and refused: row -> [(field, message)].
    settled: dict[int, list[tuple[str, str]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def sized(cls, n: int) -> RawRules:
        return cls(np.zeros(n, np.int64), np.full(n, DEFAULT_PRIORITY, np.int64), np.zeros(n, np.int8),
                   np.zeros(n, bool), [""] * n, np.zeros(n, bool), [None] * n, [None] * n,
                   np.full(n, PROTO_ANY, np.int64),
                   {p: (np.zeros(n, bool), np.zeros(n, np.int64), np.full(n, PORT_MAX, np.int64))
                    for p in PORTS},
                   {f: (np.zeros(n, bool), np.zeros(n, np.int64)) for f in ICMP_FIELDS}, np.zeros(n, bool))


@dataclass
class Addresses:
    """One side (src or dst) of n rules, parsed: what the columns hold, and errors by row."""

    given: npt.NDArray[np.bool_]
    version: npt.NDArray[np.uint8]  # 4 or 6; 0 when not given or refused
    addr: npt.NDArray[np.uint8]  # (n, 16)
    plen: npt.NDArray[np.uint8]
    errors: dict[int, str]

    @classmethod
    def sized(cls, n: int) -> Addresses:
        return cls(np.zeros(n, bool), np.zeros(n, np.uint8), np.zeros((n, ADDR_BYTES), np.uint8),
                   np.zeros(n, np.uint8), {})

    def text(self, row: int) -> str:
        addr = bytes(self.addr[row])
        if self.version[row] == 4:
            return f"{socket.inet_ntoa(addr[:4])}/{self.plen[row]}"
        return f"{ipaddress.IPv6Address(addr)}/{self.plen[row]}"


class AclErrors(ValueError):
    """A rule set refused: (row, field, message) in rule order, rows None for the list itself."""

    def __init__(self, errors: list[tuple[int | None, str, str]]) -> None:
        self.errors = errors
        super().__init__(f"{len(errors)} errors")

    def validation_error(self) -> ValidationError:
        """The errors as pydantic's, located under the list (the model of a field holding it
        prefixes the field's path)."""
        details = [InitErrorDetails(type=PydanticCustomError("acl_rule", "{reason}", {"reason": message}),
                                    loc=() if row is None else (row, *name.split(".")) if name else (row,),
                                    input=None)
                   for row, name, message in self.errors]
        return ValidationError.from_exception_data("acl", details)

    def paths(self, where: str) -> list[tuple[str, str]]:
        """(`acl[3].match.src`, message) pairs, the list named `where`."""
        return [(where if row is None else f"{where}[{row}]" + (f".{name}" if name else ""), message)
                for row, name, message in self.errors]


# --- prefixes as text ---------------------------------------------------------------------------

_NETWORK = TypeAdapter(Network)


def parse_prefixes(texts: Sequence[object]) -> Addresses:
    """Prefix texts (None: not given) -> Addresses: as bytes, through prefixes_in() (texts that
    are not strings go to the model as they are, which says what is wrong)."""
    encoded = [t.encode(errors="surrogatepass") if type(t) is str else b"" for t in texts]
    lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
    starts = np.cumsum(lengths) - lengths
    buf = np.frombuffer(b"".join(encoded) + bytes(PAD), np.uint8)
    given = np.fromiter((t is not None for t in texts), bool, len(texts))
    odd = np.fromiter((type(t) is not str for t in texts), bool, len(texts))
    return prefixes_in(buf, starts, np.where(odd, 0, lengths), given,
                       lambda rows: [texts[r] for r in rows.tolist()])


def prefixes_in(buf: npt.NDArray[np.uint8], start: I64, length: I64, given: npt.NDArray[np.bool_],
                texts_of: Callable[[npt.NDArray[np.intp]], Sequence[object]]) -> Addresses:
    """The prefix texts buf[start[i]:start[i] + length[i]] of the rows `given` -> Addresses
    (`buf` padded by prefix_scan.PAD bytes). Canonical IPv4 prefixes without host bits are
    read at once (control.policy.prefix_scan); every other row's text (`texts_of(rows)`) is
    read alone: plain IPv6 prefixes here, the rest by the model's own type, which also says what
    is wrong."""
    n = len(start)
    out = Addresses.sized(n)
    out.given[:] = given
    ok, octets, plens = scan_ipv4(buf, start, length)
    ok &= given
    values = octets.astype(np.uint64) @ (np.uint64(1) << np.arange(24, -1, -8, dtype=np.uint64))
    host = ok & (values & ((np.uint64(1) << (np.uint64(32) - plens.astype(np.uint64))) - np.uint64(1)) != 0)
    ok &= ~host  # the model says which bits to clear
    out.version[ok] = 4
    out.addr[ok, :4] = octets[ok]
    out.plen[ok] = plens[ok]
    rest = np.flatnonzero(given & ~ok)
    quick_rows, packed, lengths = [], [], []
    for row, text in zip(rest.tolist(), texts_of(rest), strict=True):
        found = _ipv6_quickly(text)
        if found is None:
            _parse_one(out, row, text)
        else:
            quick_rows.append(row)
            packed.append(found[0])
            lengths.append(found[1])
    if quick_rows:
        out.version[quick_rows] = 6
        out.addr[quick_rows] = np.frombuffer(b"".join(packed), np.uint8).reshape(-1, ADDR_BYTES)
        out.plen[quick_rows] = lengths
    return out


_V6_CHARS = frozenset("0123456789abcdefABCDEF:")


def _ipv6_quickly(text: object) -> tuple[bytes, int] | None:
    """(address, length) of an IPv6 prefix in the plain form ("2001:db8::/32": hex groups and
    colons, a slash, a decimal length, no host bits), read without the model's type, which reads
    it the same way; None for anything else (the model's type then reads it, or says what is
    wrong)."""
    if type(text) is not str:
        return None
    addr, slash, plen = text.partition("/")
    decimal = 0 < len(plen) <= 3 and plen.isdigit() and plen.isascii() and (plen == "0" or plen[0] != "0")
    if not (slash and decimal and _V6_CHARS.issuperset(addr) and ":" in addr):
        return None
    try:
        packed = socket.inet_pton(socket.AF_INET6, addr)
    except OSError:
        return None
    length = int(plen)
    if length > 128 or int.from_bytes(packed, "big") & ((1 << (128 - length)) - 1):
        return None
    return packed, length


def _parse_one(out: Addresses, row: int, text: object) -> None:
    out.given[row] = True
    try:
        net = _NETWORK.validate_python(text)
    except ValidationError as exc:
        out.errors[row] = describe_errors(exc)[0][1]
        return
    out.version[row] = net.version
    out.addr[row] = np.frombuffer(net.network_address.packed.ljust(ADDR_BYTES, b"\0"), np.uint8)
    out.plen[row] = net.prefixlen


def addresses_from_columns(given: npt.NDArray[np.bool_], family: npt.NDArray[np.uint8],
                           addr: npt.NDArray[np.uint8], plen: npt.NDArray[np.uint8], side: str) -> Addresses:
    """One side of rules given as columns (the packed wire form, the state file): checked by
    column (a family, a length within it, no bits past it)."""
    n = len(given)
    out = Addresses.sized(n)
    known = np.isin(family, (4, 6))
    bits = np.where(family == 4, 32, 128)
    for r in np.flatnonzero(given & ~known).tolist():
        out.errors[r] = f"a rule with a {side} prefix needs address family 4 or 6, not {family[r]}"
    for r in np.flatnonzero(given & known & (plen > bits)).tolist():
        out.errors[r] = f"prefix length {plen[r]} is above {bits[r]} (IPv{family[r]})"
    kept = np.clip(np.where(given, plen, 0)[:, None].astype(np.int64) - 8 * np.arange(ADDR_BYTES), 0, 8)
    masks = ((0xFF00 >> kept) & 0xFF).astype(np.uint8)
    for r in np.flatnonzero((addr & ~masks).any(axis=1) & given).tolist():
        out.errors.setdefault(r, f"the address has bits set past its prefix length {plen[r]}")
    ok = given.copy()
    ok[list(out.errors)] = False
    out.given[:] = given
    out.version[ok] = family[ok]
    out.addr[ok] = addr[ok]
    out.plen[ok] = plen[ok]
    return out


def set_protocols(raw: RawRules, named: I64, has_number: npt.NDArray[np.bool_], number: I64) -> None:
    """RawRules.protocol (and notes) from the wire's two fields: Match.protocol (an open enum:
    any number; 0 any unless a number is given) and protocol_number (0-255, must agree)."""
    value = np.where(has_number, number, named)
    conflict = has_number & (named != 0) & (named != number)
    refused = conflict | (value < 0) | (value > PROTOCOL_MAX)
    for r in np.flatnonzero(refused).tolist():
        name = "match.protocol_number" if has_number[r] else "match.protocol"
        raw.notes[(r, name)] = (protocol_conflict(int(named[r]), int(value[r])) if conflict[r]
                                else protocol_error(int(value[r])))
    raw.protocol = np.where(refused, PROTO_BAD, np.where((value == 0) & ~has_number, PROTO_ANY, value))


# --- validation by column ------------------------------------------------------------------------

class _Errors:
    def __init__(self, n: int) -> None:
        self.found: list[tuple[int, int, str, str]] = []  # (row, rank, field, message)
        self.bad = np.zeros(n, bool)  # rows with an error in any field

    def add(self, mask: npt.NDArray[np.bool_], name: str, message: str | Callable[[int], str]) -> None:
        rank = RANK[name]
        for row in np.flatnonzero(mask).tolist():
            self.found.append((row, rank, name, message if isinstance(message, str) else message(row)))
        self.bad |= mask

    def note(self, row: int, name: str, message: str) -> None:
        self.found.append((row, RANK[name], name, message))
        self.bad[row] = True


def _range(errors: _Errors, values: I64, name: str, low: int, high: int, kind: str,
           given: npt.NDArray[np.bool_] | None = None) -> npt.NDArray[np.bool_]:
    """Flags values outside low..high; returns the mask of those in range."""
    below, above = values < low, values > high
    if given is not None:
        below, above = below & given, above & given
    errors.add(below, name, MSG[(kind, "low")])
    errors.add(above, name, MSG[(kind, "high")])
    return ~(below | above)


def _protocol_text(number: int) -> str | int | None:
    return None if number == PROTO_ANY else PROTOCOL_NAMES.get(number, number)


def _check_ports(errors: _Errors, raw: RawRules, side: str, proto_ok: npt.NDArray[np.bool_]) -> Any:
    """Flags the ports of one side; returns the mask of rules with an error there."""
    given, low, high = raw.ports[side]
    ok = _range(errors, low, f"match.{side}.low", 0, PORT_MAX, "port", given)
    ok &= _range(errors, high, f"match.{side}.high", 0, PORT_MAX, "port", given)
    out_of_range = given & ~ok
    ok &= given
    reversed_ = ok & (low > high)
    errors.add(reversed_, f"match.{side}", lambda r: f"low {low[r]} is above high {high[r]}")
    no_ports = ~np.isin(raw.protocol, list(PORT_PROTOCOL_NUMBERS))
    refused = ok & ~reversed_ & proto_ok & no_ports & ~((low == PORT_ANY[0]) & (high == PORT_ANY[1]))

    def refusal(r: int) -> str:
        ports = PortRange.model_construct(low=int(low[r]), high=int(high[r]))
        return ports_error(side, ports, _protocol_text(int(raw.protocol[r])))

    errors.add(refused, f"match.{side}", refusal)
    return out_of_range | reversed_ | refused


def _check_l4(errors: _Errors, raw: RawRules, proto_ok: npt.NDArray[np.bool_]) -> Any:
    """Flags ICMP types/codes and SYN out of range or without their protocol; returns the mask of
    rules with an error there."""
    bad = np.zeros(len(raw), bool)
    icmp = np.isin(raw.protocol, ICMP_NUMBERS)
    for name in ICMP_FIELDS:
        given, value = raw.icmp[name]
        ok = _range(errors, value, f"match.{name}", 0, ICMP_FIELD_MAX, "icmp", given)
        refused = given & ok & proto_ok & ~icmp
        for r in np.flatnonzero(refused).tolist():
            protocol = _protocol_text(int(raw.protocol[r]))
            errors.note(r, f"match.{name}", icmp_error(name, int(value[r]), protocol))
        bad |= (given & ~ok) | refused
    refused = raw.syn & proto_ok & (raw.protocol != protocols.TCP)
    errors.add(refused, "match.syn", lambda r: syn_error(_protocol_text(int(raw.protocol[r]))))
    return bad | refused


def check(raw: RawRules, src: Addresses, dst: Addresses) -> list[tuple[int | None, str, str]]:
    """Every error of the rules, in rule order and the models' field order within a rule."""
    n = len(raw)
    errors = _Errors(n)
    _range(errors, raw.ids, "id", 1, U32_MAX, "id")
    _range(errors, raw.priority, "priority", 0, U32_MAX, "priority")
    errors.add(raw.action == ACTION_MISSING, "action", MSG[("action", "missing")])
    errors.add(raw.action == ACTION_INVALID, "action", MSG[("action", "invalid")])
    match_bad = np.zeros(n, bool)
    for side, parsed in zip(SIDES, (src, dst), strict=True):
        for row, message in parsed.errors.items():
            errors.note(row, f"match.{side}", message)
            match_bad[row] = True
    for (row, name), message in raw.notes.items():
        errors.note(row, name, message)
        match_bad[row] = True
    proto_ok = raw.protocol != PROTO_BAD
    for side in PORTS:
        match_bad |= _check_ports(errors, raw, side, proto_ok)
    match_bad |= _check_l4(errors, raw, proto_ok)
    mixed = ~match_bad & src.given & dst.given & (src.version != dst.version)
    errors.add(mixed, "match", lambda r: f"src {src.text(r)} and dst {dst.text(r)} are of different IP "
                                         "families: such a rule can never match")
    lengths = np.fromiter(map(len, raw.description), np.int64, n)
    errors.add(lengths > DESCRIPTION_MAX, "description", MSG[("description", "long")])
    for row, found in raw.settled.items():
        errors.found.extend((row, rank, name, message) for rank, (name, message) in enumerate(found))
    errors.found.sort(key=lambda e: (e[0], e[1]))
    out: list[tuple[int | None, str, str]] = [(row, name, message) for row, _, name, message in errors.found]
    if not out:
        out = _duplicates(raw.ids)
    return out


def _duplicates(ids: I64) -> list[tuple[int | None, str, str]]:
    """The first id used twice, as the models say it (at the list, naming both rules)."""
    if len(ids) < 2:
        return []
    order = np.argsort(ids, kind="stable")
    same = ids[order][1:] == ids[order][:-1]
    if not same.any():
        return []
    later = order[1:][same]  # rows whose id an earlier row has
    here = int(later.min())
    first = int(np.flatnonzero(ids == ids[here])[0])
    return [(None, "", f"id {ids[here]} is used by both acl[{first}] and acl[{here}]")]


def block(raw: RawRules, src: Addresses, dst: Addresses) -> Block:
    """The rules as a block (list order): valid rules only (check() found nothing)."""
    n = len(raw)
    cols: dict[str, Any] = {name: np.zeros((n, *shape), dtype=dtype) for name, dtype, shape in SCHEMA}
    cols["rule_id"][:] = raw.ids
    cols["order"][:] = (raw.priority.astype(np.uint64) << np.uint64(32)) | raw.ids.astype(np.uint64)
    cols["action"][:] = ACTION_VALUES[raw.action.astype(np.intp) - 1]
    cols["flags"][:] = np.where(raw.log, FLAG_LOG, 0)
    cols["family"][:] = np.maximum(src.version, dst.version)
    given = np.zeros(n, np.uint8)
    for side, parsed, bit in (("src", src, GIVEN_SRC), ("dst", dst, GIVEN_DST)):
        cols[f"{side}_addr"][:] = parsed.addr
        cols[f"{side}_len"][:] = parsed.plen
        given |= np.where(parsed.given, bit, 0).astype(np.uint8)
    cols["proto_any"][:] = raw.protocol == PROTO_ANY
    cols["proto"][:] = np.where(raw.protocol >= 0, raw.protocol, 0)
    for side, bit in (("sport", GIVEN_SPORT), ("dport", GIVEN_DPORT)):
        ports_given, low, high = raw.ports[side]
        cols[f"{side}_lo"][:] = np.where(ports_given, low, PORT_ANY[0])
        cols[f"{side}_hi"][:] = np.where(ports_given, high, PORT_ANY[1])
        given |= np.where(ports_given, bit, 0).astype(np.uint8)
    for name in ICMP_FIELDS:
        icmp_given, value = raw.icmp[name]
        cols[f"has_{name}"][:] = icmp_given
        cols[name][:] = np.where(icmp_given, value, 0)
    cols["syn"][:] = raw.syn
    description = np.empty(n, dtype=object)
    description[:] = raw.description
    return Block(RuleColumns(**cols), given, np.arange(n, dtype=np.uint64), description, raw.metrics.copy())


def decode(raw: RawRules) -> AclTable:
    """Validated RawRules -> AclTable; AclErrors naming every problem otherwise."""
    src, dst = parse_prefixes(raw.src), parse_prefixes(raw.dst)
    errors = check(raw, src, dst)
    if errors:
        raise AclErrors(errors)
    return AclTable.from_block(block(raw, src, dst))
