"""The ACL decoded by column says exactly what the models say, rule by rule (pure).

Every bulk path (YAML/JSON mappings, `repeated AclRule` messages, packed AclColumns, the state
file) is checked against a reference that validates one rule at a time with the AclRule model
(for messages: the single-rule conversion of control.rpc.convert, which the column code does not
use): the same rules accepted, the same errors, paths `acl[i].field` and messages alike, in the
same order, for random rule sets with invalid values in every field.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from control.apply import acl_snapshot
from control.errors import InvalidArgument
from control.policy.acl_decode import AclErrors
from control.policy.acl_mappings import decode_dicts
from control.policy.acl_table import AclTable
from control.policy.models import AclRule, Policy, describe_errors
from control.rpc import acl_wire, convert
from control.rpc.api import pb2
from dataplane import abi

U32 = (1 << 32) - 1
GOOD_PREFIXES = ["10.0.0.0/8", "192.0.2.0/24", "192.0.2.7/32", "0.0.0.0/0", "2001:db8::/32", "::/0",
                 "2001:db8::1/128", "10.1.2.3", "fe80::/10"]
BAD_PREFIXES = ["10.0.0.1/8", "10.0.0.0/33", "300.0.0.0/8", "10.0.0.0/08", "banana", "", " 10.0.0.0/8",
                "2001:db8::1/32", "10.0.0.0%eth0/8", "::/129", "10.0.0.0/-1", "x" * 80]
PROTOCOLS = ["tcp", "udp", "sctp", "icmp", "icmpv6", 6, 17, 47, 50, 89, 0, 255, "47"]
BAD_PROTOCOLS = ["gre", 256, -1, "TCP", "6.0", 1000]


# --- rule sets, valid and not ----------------------------------------------------------------------

def _ports(rng: random.Random, bad: bool) -> Any:
    if bad:
        return rng.choice([-1, 65536, "90-80", "80:90", "http", {"low": 5}, {"low": 9, "high": 2},
                           {"low": 0, "high": 70000}, [80], 1.5, True])
    low = rng.randrange(65536)
    return rng.choice([low, f"{low}-{rng.randint(low, 65535)}", {"low": low, "high": rng.randint(low, 65535)},
                       "0-65535", f" {low} "])


def _match(rng: random.Random, bad: float) -> dict[str, Any]:
    m: dict[str, Any] = {}
    for side in ("src", "dst"):
        if rng.random() < 0.6:
            m[side] = rng.choice(BAD_PREFIXES) if rng.random() < bad else rng.choice(GOOD_PREFIXES)
    if rng.random() < 0.7:
        m["protocol"] = rng.choice(BAD_PROTOCOLS) if rng.random() < bad else rng.choice(PROTOCOLS)
    for side in ("dport", "sport"):
        if rng.random() < 0.4:
            m[side] = _ports(rng, rng.random() < bad)
    icmp = m.get("protocol") in ("icmp", "icmpv6")
    for name in ("icmp_type", "icmp_code"):  # the wrong protocol now and then (or none), when bad
        if rng.random() < (0.5 if icmp else bad / 2):
            wrong = rng.random() < bad
            m[name] = rng.choice([-1, 256, "8", 2.5]) if wrong else rng.choice([0, 3, 8, 128, 255])
    if rng.random() < (0.3 if m.get("protocol") in ("tcp", 6) else bad / 2):
        m["syn"] = rng.choice(["x", 2]) if rng.random() < bad else rng.choice([True, False])
    if rng.random() < bad / 4:
        m[rng.choice(["source", "port", "src_port"])] = 1
    if rng.random() < bad / 4:
        m[rng.choice(["src", "protocol", "dport"])] = rng.choice([None, 7.5, ["x"], {"a": 1}])
    return m


def _rule(rng: random.Random, rule_id: int, bad: float) -> Any:
    if rng.random() < bad / 10:
        return rng.choice(["rule", 7, None, ["id", 1]])
    r: dict[str, Any] = {"id": rule_id}
    if rng.random() < bad:
        r["id"] = rng.choice([0, -3, U32 + 1, "x", True, None, 2.0, 1 << 70])
    if rng.random() < 0.5:
        r["priority"] = rng.choice([-1, U32 + 1, "high"]) if rng.random() < bad else rng.randrange(0, 5000)
    if rng.random() < 1 - bad / 2:
        r["action"] = rng.choice(["drop", "ALLOW", 1] if rng.random() < bad else ["allow", "deny", "reject"])
    if rng.random() < 0.8:
        r["match"] = _match(rng, bad)
    if rng.random() < 0.2:
        r["log"] = rng.choice(["yes", 1]) if rng.random() < bad else rng.choice([True, False])
    if rng.random() < 0.2:
        r["description"] = "d" * (300 if rng.random() < bad else rng.randrange(40))
    if rng.random() < 0.2:
        r["metrics"] = rng.choice(["on", 2]) if rng.random() < bad else rng.choice([True, False])
    if rng.random() < bad / 4:
        r["comment"] = "extra"
    return r


def _rules(seed: int, n: int, bad: float) -> list[Any]:
    rng = random.Random(seed)
    rules = [_rule(rng, i + 1, bad) for i in range(n)]
    if rng.random() < 0.3 and n > 2:  # a duplicate id now and then
        copied = rules[rng.randrange(n)]
        rules.insert(rng.randrange(n), dict(copied) if isinstance(copied, dict) else {"id": 1})
    return rules


def _valid_rules(rng: random.Random, n: int, first_id: int = 1) -> list[AclRule]:
    """n valid rules (random ones the model accepts), ids from first_id."""
    out: list[AclRule] = []
    while len(out) < n:
        item = _rule(rng, first_id + len(out), 0.0)
        try:
            out.append(AclRule.model_validate(item))
        except ValidationError:
            continue
    return out


def _reference(rules: list[Any], where: str = "acl") -> tuple[list[AclRule] | None, list[tuple[str, str]]]:
    """The models, one rule at a time, then unique ids (what Policy validated before columns)."""
    errors, valid = [], []
    for index, item in enumerate(rules):
        try:
            valid.append(AclRule.model_validate(item))
        except ValidationError as exc:
            errors += [(f"{where}[{index}]" + ("" if p == "(policy)" else f".{p}"), m)
                       for p, m in describe_errors(exc)]
    if errors:
        return None, errors
    seen: dict[int, int] = {}
    for index, rule in enumerate(valid):
        if rule.id in seen:
            return None, [(where, f"id {rule.id} is used by both acl[{seen[rule.id]}] and acl[{index}]")]
        seen[rule.id] = index
    return valid, []


def _columns(rules: list[Any]) -> tuple[AclTable | None, list[tuple[str, str]]]:
    try:
        return decode_dicts(rules), []
    except AclErrors as exc:
        return None, exc.paths("acl")


@pytest.mark.parametrize("bad", [0.0, 0.05, 0.3])
@pytest.mark.parametrize("seed", range(40))
def test_mappings_decode_as_the_models_validate(seed: int, bad: float) -> None:
    rules = _rules(seed, 60, bad)
    want, want_errors = _reference(rules)
    got, got_errors = _columns(rules)
    assert got_errors == want_errors
    if want is not None:
        assert got is not None and list(got) == want
        assert [r.id for r in got] == [r.id for r in want], "list order kept"


def test_every_field_is_checked_and_named_with_its_index() -> None:
    """One invalid value per field, each at its own index among valid rules."""
    cases = {
        "id": {"id": 0}, "priority": {"priority": -1}, "action": {"action": "drop"},
        "match.src": {"match": {"src": "10.0.0.1/8"}}, "match.dst": {"match": {"dst": "banana"}},
        "match.protocol": {"match": {"protocol": "gre"}},
        "match.dport.low": {"match": {"protocol": "tcp", "dport": {"low": -1, "high": 5}}},
        "match.dport.high": {"match": {"protocol": "tcp", "dport": "1-65536"}},
        "match.dport": {"match": {"protocol": "icmp", "dport": 80}},
        "match.sport.low": {"match": {"protocol": "udp", "sport": {"low": -1, "high": 5}}},
        "match.sport": {"match": {"protocol": 47, "sport": "1-2"}},
        "match.icmp_type": {"match": {"protocol": "icmp", "icmp_type": 256}},
        "match.icmp_code": {"match": {"protocol": "udp", "icmp_code": 3}},
        "match.syn": {"match": {"protocol": "icmpv6", "syn": True}},
        "match": {"match": {"src": "10.0.0.0/8", "dst": "::/0"}},
        "log": {"log": "maybe"}, "description": {"description": "x" * 257}, "color": {"color": "red"},
    }
    rules: list[Any] = [{"id": i, "action": "deny"} for i in range(1, 1001)]
    where = {}
    for k, (field, change) in enumerate(cases.items()):
        index = 37 + 53 * k
        rules[index] = {**rules[index], **change}
        where[f"acl[{index}].{field}"] = field
    _, errors = _columns(rules)
    assert [p for p, _ in errors] == list(where), errors
    assert errors == _reference(rules)[1]


def test_ten_thousand_errors_are_counted_and_the_first_ten_shown() -> None:
    match = {"protocol": "tcp", "dport": 70000}
    rules = [{"id": i, "action": "deny", "match": match} for i in range(1, 10_001)]
    with pytest.raises(InvalidArgument) as info:
        convert.validated(Policy.model_validate, {"acl": rules}, where="policy")
    assert len(info.value.errors) == 20_000  # low and high of each
    assert str(info.value).startswith("policy.acl[0].match.dport.low: Input should be less than or equal")
    assert str(info.value).endswith("; and 19990 more errors")


# --- protobuf messages -------------------------------------------------------------------------------

def _message(rng: random.Random, rule_id: int, bad: float) -> pb2.AclRule:
    m = pb2.Match()
    for side in ("src", "dst"):
        if rng.random() < 0.6:
            setattr(m, side, rng.choice(BAD_PREFIXES) if rng.random() < bad else rng.choice(GOOD_PREFIXES))
    pick = rng.random()
    if pick < 0.3:
        m.protocol = rng.choice([1, 6, 17, 58, 132, 47] + ([300, -2] if rng.random() < bad else []))
    elif pick < 0.5:
        m.protocol_number = rng.choice([256, 1000]) if rng.random() < bad else rng.choice([0, 6, 17, 47, 50])
    elif pick < 0.55:
        m.protocol, m.protocol_number = 6, rng.choice([6, 17])
    icmp = m.protocol in (1, 58) or (m.HasField("protocol_number") and m.protocol_number in (1, 58))
    for name in ("icmp_type", "icmp_code"):
        if rng.random() < (0.5 if icmp else bad / 2):
            setattr(m, name, rng.choice([256, 9999]) if rng.random() < bad else rng.choice([0, 3, 8, 129]))
    if rng.random() < (0.3 if m.protocol == 6 else bad / 2):
        m.syn = True
    for side in ("dport", "sport"):
        if rng.random() < 0.4:
            low = rng.randrange(70000) if rng.random() < bad else rng.randrange(65536)
            getattr(m, side).CopyFrom(pb2.PortRange(low=low, high=rng.choice([low, 65535, low + 5, 0])))
    action = rng.choice([0, 1, 2, 9] if rng.random() < bad else [1, 2, 3])
    description = "x" * (300 if rng.random() < bad / 2 else rng.randrange(9))
    r = pb2.AclRule(id=0 if rng.random() < bad else rule_id, action=action, log=rng.random() < 0.2,
                    description=description, metrics=rng.random() < 0.2)
    if rng.random() < 0.5:
        r.priority = rng.randrange(U32)
    if rng.random() < 0.9:
        r.match.CopyFrom(m)
    return r


def _valid_messages(rng: random.Random, n: int) -> list[pb2.AclRule]:
    out: list[pb2.AclRule] = []
    while len(out) < n:
        msg = _message(rng, len(out) + 1, 0.0)
        try:
            convert.acl_rule_from_proto(msg)
        except InvalidArgument:
            continue
        out.append(msg)
    return out


def _reference_messages(acl: list[pb2.AclRule]) -> tuple[list[AclRule] | None, list[tuple[str, str]]]:
    errors, valid = [], []
    for index, msg in enumerate(acl):
        try:
            valid.append(convert.acl_rule_from_proto(msg, where=f"acl[{index}]"))
        except InvalidArgument as exc:
            errors += exc.errors
    if errors:
        return None, errors
    return _reference([r.model_dump() for r in valid])


@pytest.mark.parametrize("bad", [0.0, 0.05, 0.3])
@pytest.mark.parametrize("seed", range(30))
def test_messages_decode_as_the_single_rule_conversion_validates(seed: int, bad: float) -> None:
    rng = random.Random(seed)
    acl = [_message(rng, i + 1, bad) for i in range(60)]
    want, want_errors = _reference_messages(acl)
    try:
        got, got_errors = acl_wire.table_from_messages(acl), []
    except AclErrors as exc:
        got, got_errors = None, exc.paths("acl")
    assert got_errors == want_errors
    if want is not None:
        assert got is not None and list(got) == want


@pytest.mark.parametrize("seed", range(10))
def test_messages_round_trip_through_the_columns(seed: int) -> None:
    rng = random.Random(seed)
    table = acl_wire.table_from_messages(_valid_messages(rng, 300))
    again = acl_wire.table_from_messages(acl_wire.messages_from_table(table))
    assert again == table and list(again) == list(table)
    assert [convert.acl_rule_from_proto(m) for m in acl_wire.messages_from_table(table)] == list(table)


# --- packed columns -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(10))
def test_packed_columns_round_trip(seed: int) -> None:
    extra = [{"id": 1001, "action": "deny", "match": {"protocol": "icmpv6", "icmp_code": 4}},
             {"id": 1002, "action": "deny", "match": {"protocol": "tcp", "syn": True}}]  # whatever the seed
    table = decode_dicts([*_valid_rules(random.Random(seed), 200), *extra])
    packed = pb2.AclColumns.FromString(acl_wire.packed_from_table(table).SerializeToString())
    again = acl_wire.table_from_packed(packed)
    assert [r.model_dump(exclude={"match": {"dport", "sport"}}) for r in again] == \
        [r.model_dump(exclude={"match": {"dport", "sport"}}) for r in table]
    assert np.array_equal(again.columns.order, table.columns.order)
    for name in ("sport_lo", "sport_hi", "dport_lo", "dport_hi", "proto", "proto_any", "family",
                 "has_icmp_type", "icmp_type", "has_icmp_code", "icmp_code", "syn"):
        assert np.array_equal(getattr(again.columns, name), getattr(table.columns, name)), name
    assert table.columns.has_icmp_code.any() and table.columns.syn.any(), "the rules use the new fields"


def _packed(n: int, **fields: Any) -> pb2.AclColumns:
    msg = pb2.AclColumns(id=list(range(1, n + 1)), action=[pb2.ACTION_DENY] * n)
    for name, value in fields.items():
        if isinstance(value, bytes):
            setattr(msg, name, value)
        else:
            del getattr(msg, name)[:]
            getattr(msg, name).extend(value)
    return msg


def _v4(*addrs: bytes) -> bytes:
    return b"".join(a.ljust(16, b"\0") for a in addrs)


@pytest.mark.parametrize("fields, path, reason", [
    ({"dport_low": [0, 70000, 0], "dport_high": [65535] * 3}, "dport_low[1]", "less than or equal to 65535"),
    ({"dport_low": [0, 9, 0], "dport_high": [65535, 8, 65535], "protocol": [6, 6, 6]}, "dport_low[1]",
     "low 9 is above high 8"),
    ({"sport_low": [0, 0, 53], "sport_high": [65535, 65535, 53]}, "sport_low[2]", "needs protocol tcp"),
    ({"protocol": [6, 257, 6]}, "protocol[1]", "0-255 (or 256: any)"),
    ({"protocol": [1, 1, 1], "icmp_type": [8, 300, 256]}, "icmp_type[1]",
     "not an ICMP type 0-255 (or 256: any)"),
    ({"protocol": [1, 6, 1], "icmp_code": [256, 0, 256]}, "icmp_code[1]", "icmp_code 0 needs protocol icmp"),
    ({"protocol": [6, 6, 17], "syn": [True, False, True]}, "syn[2]",
     "syn needs protocol tcp (udp has no TCP"),
    ({"syn": [True]}, "syn", "1 entries for 3 rules"),
    ({"family": b"\4\4\4", "src_addr": _v4(b"\n\0\0\0", b"\n\0\0\1", b"\n\0\0\0"),
      "src_len": b"\x08\x08\x08"}, "src_addr[1]", "bits set past its prefix length 8"),
    ({"family": b"\4\4\4", "src_addr": _v4(b"", b"", b""), "src_len": b"\x08\x21\x08"}, "src_addr[1]",
     "prefix length 33 is above 32"),
    ({"family": b"\4\7\4", "src_addr": _v4(b"", b"", b""), "src_len": b"\0\0\0"}, "family[1]",
     "7 is not an address family"),
    ({"family": b"\0\6\0"}, "family[1]", "the rule names no address"),
    ({"src_len": b"\x08\x08"}, "src_len", "2 bytes for 3 rules"),
    ({"priority": [1, 2]}, "priority", "2 entries for 3 rules"),
    ({"action": [1, 2]}, "action", "2 entries for 3 rules"),
])
def test_packed_errors_name_the_column_and_entry(fields: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        convert.policy_from_proto(pb2.Policy(acl_columns=_packed(3, **fields)), where="policy")
    errors = info.value.errors
    assert any(p == f"policy.acl_columns.{path}" and reason in r for p, r in errors), errors


def test_acl_and_acl_columns_are_not_both_used() -> None:
    with pytest.raises(InvalidArgument, match="policy.acl_columns: use acl or acl_columns, not both"):
        convert.policy_from_proto(pb2.Policy(acl=[pb2.AclRule(id=9, action=pb2.ACTION_DENY)],
                                             acl_columns=_packed(1)), where="policy")


def test_a_packed_policy_is_the_same_policy() -> None:
    rng = random.Random(3)
    plain = pb2.Policy(acl=_valid_messages(rng, 100))
    policy = convert.policy_from_proto(plain)
    packed = convert.policy_to_proto(policy, acl_columns=True)
    assert not packed.acl and len(packed.acl_columns.id) == 100
    again = convert.policy_from_proto(packed)
    assert [r.id for r in again.acl] == [r.id for r in policy.acl]
    assert again.acl.columns.order.tolist() == policy.acl.columns.order.tolist()


# --- the state file's columns -------------------------------------------------------------------------

def test_the_snapshot_columns_round_trip() -> None:
    table = decode_dicts(_valid_rules(random.Random(5), 500))
    assert acl_snapshot.load(acl_snapshot.dump(table)) == table


def test_a_damaged_snapshot_is_refused() -> None:
    data = acl_snapshot.dump(decode_dicts([{"id": 1, "action": "deny", "match": {"src": "10.0.0.0/8"}}]))
    damaged = {**data, "columns": {**data["columns"], "src_len": "IQ=="}}  # /33
    with pytest.raises(ValueError, match="checksum"):
        acl_snapshot.load(damaged)
    damaged["crc32"] = _crc(damaged)
    with pytest.raises(ValueError, match="prefix length 33 is above 32"):
        acl_snapshot.load(damaged)


def test_a_snapshot_from_before_the_mark_column_loads_and_a_mark_is_refused() -> None:
    import base64

    table = decode_dicts([{"id": 1, "action": "deny", "match": {"src": "10.0.0.0/8"}}])
    data = acl_snapshot.dump(table)
    older = {**data, "columns": {k: v for k, v in data["columns"].items() if k != "mark"}}
    older["crc32"] = _crc(older)
    assert acl_snapshot.load(older) == table
    marked = {**data, "columns": {**data["columns"], "mark": base64.b64encode(b"\x10\0\0\0").decode()}}
    marked["crc32"] = _crc(marked)
    with pytest.raises(ValueError, match="acl row 0: mark is not 0"):
        acl_snapshot.load(marked)


def test_a_snapshot_from_before_the_icmp_and_syn_columns_loads_as_any() -> None:
    table = decode_dicts([{"id": 1, "action": "deny", "match": {"protocol": "tcp", "dport": 22}},
                          {"id": 2, "action": "allow", "match": {"protocol": "icmp"}}])
    data = acl_snapshot.dump(table)
    new = {"has_icmp_type", "icmp_type", "has_icmp_code", "icmp_code", "syn"}
    older = {**data, "columns": {k: v for k, v in data["columns"].items() if k not in new}}
    older["crc32"] = _crc(older)
    assert acl_snapshot.load(older) == table
    with_fields = decode_dicts([{"id": 1, "action": "deny", "match": {"protocol": "tcp", "syn": True}},
                                {"id": 2, "action": "allow", "match": {"protocol": "icmp", "icmp_type": 8}}])
    again = acl_snapshot.load(acl_snapshot.dump(with_fields))
    assert again == with_fields and again.columns.syn.tolist() == [True, False]
    assert [r.match.icmp_type for r in again] == [None, 8]


def _crc(data: dict[str, Any]) -> int:
    import base64
    import zlib

    crc = 0
    for name in data["columns"]:
        crc = zlib.crc32(base64.b64decode(data["columns"][name]), crc)
    return crc


# --- edits --------------------------------------------------------------------------------------------

def test_edits_of_a_table_are_edits_of_the_list() -> None:
    rng = random.Random(11)
    model = _valid_rules(rng, 5000)
    table = decode_dicts(model)
    assert len(table.blocks) > 1
    for step in range(300):
        if rng.random() < 0.5 and model:
            victim = model.pop(rng.randrange(len(model)))
            table = table.remove(victim.id)
        else:
            new = AclRule(id=100_000 + step, priority=rng.randrange(5000), action="deny")
            model.append(new)
            table = table.add(new)
    assert list(table) == model
    assert table == decode_dicts(model)
    order = table.columns.order
    assert bool(np.all(order[1:] > order[:-1])), "judging order kept"


def test_a_table_knows_the_one_edit_that_made_it() -> None:
    table = decode_dicts(_valid_rules(random.Random(4), 50))
    rule = AclRule(id=999, priority=3, action="allow", match={"protocol": 47})
    added = table.add(rule)
    one, gone = added.edit_from(table)  # type: ignore[misc]
    assert gone is None and one is not None and one.rule_id.tolist() == [999] and one.proto.tolist() == [47]
    removed = added.remove(7)
    assert removed.edit_from(added) == (None, 7)
    assert removed.edit_from(table) is None, "two edits away: no single step"
    assert decode_dicts(list(table)).edit_from(table) is None, "a table decoded anew is no edit"


def test_yaml_round_trips_through_the_columns() -> None:
    """A policy file -> columns -> `tidegate policy show` YAML -> columns: the same rules."""
    import yaml

    from control.cli import response_format as fmt

    text = """
acl:
  - {id: 3, priority: 2000, action: deny, match: {src: 10.0.0.0/8, protocol: tcp, sport: 1024-2047, dport: 9}}
  - {id: 1, action: allow, match: {dst: "2001:db8::/32", protocol: 50}, log: true, description: esp}
  - {id: 2, action: deny, match: {protocol: 0}}
  - {id: 4, action: allow, match: {protocol: udp, dport: {low: 53, high: 53}, sport: 0-65535}}
"""
    policy = Policy.model_validate(yaml.safe_load(text))
    assert policy.acl.columns.rule_id.tolist() == [1, 2, 4, 3], "columns in judging order"
    assert policy.acl.columns.sport_lo.tolist() == [0, 0, 0, 1024]
    shown = fmt.policy_yaml(policy, 1)
    again = Policy.model_validate(yaml.safe_load(shown))
    assert again == policy
    assert "sport: 1024-2047" in shown and "protocol: 50" in shown and "protocol: 0" in shown
    assert [r.id for r in again.acl] == [3, 1, 2, 4], "list order kept"


def test_priority_zero_is_kept_and_an_absent_one_is_the_default() -> None:
    zero = pb2.AclRule(id=1, priority=0, action=pb2.ACTION_DENY)
    absent = pb2.AclRule(id=2, action=pb2.ACTION_DENY)
    assert zero.HasField("priority") and not absent.HasField("priority")
    table = acl_wire.table_from_messages([zero, absent])
    assert [(r.id, r.priority) for r in table] == [(1, 0), (2, 1000)]


def test_reject_travels_every_bulk_path_as_the_record_action() -> None:
    """A reject rule keeps its action through the columns (tg_action REJECT in the action column),
    the packed wire form, the repeated messages and the state file."""
    rules = [AclRule(id=1, action="reject", match={"protocol": "tcp", "dport": 22}),
             AclRule(id=2, action="deny"), AclRule(id=3, action="allow")]
    table = decode_dicts(rules)
    assert table.whole().rules.action.tolist() == [abi.Action.REJECT, abi.Action.DENY, abi.Action.ALLOW]
    packed = pb2.AclColumns.FromString(acl_wire.packed_from_table(table).SerializeToString())
    assert list(packed.action) == [pb2.ACTION_REJECT, pb2.ACTION_DENY, pb2.ACTION_ALLOW]
    for again in (acl_wire.table_from_packed(packed),
                  acl_wire.table_from_messages(acl_wire.messages_from_table(table)),
                  acl_snapshot.load(acl_snapshot.dump(table))):
        assert [r.action for r in again] == ["reject", "deny", "allow"]
