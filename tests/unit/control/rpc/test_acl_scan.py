"""The ACL read from a Policy's encoding (control.rpc.acl_scan, control.rpc.wire_scan) is what the
message walk (control.rpc.acl_wire.raw_from_messages) reads from the parsed messages: for random
rule sets with invalid values in every field, and for encodings a client may send that upb does
not write (unknown fields, another field order, a field given twice, negative enums, values past
32 bits, a field of an unexpected wire type). What the scan declines (NotPlain) is decoded from
the messages, with the same answer."""

from __future__ import annotations

import random

import numpy as np
import pytest

from control.errors import InvalidArgument
from control.policy.acl_decode import AclErrors, Addresses, RawRules, parse_prefixes
from control.rpc import acl_wire, convert
from control.rpc.acl_scan import ACL_FIELD, raw_from_policy
from control.rpc.api import pb2
from control.rpc.wire_scan import NotPlain, Wire

from ..policy.test_acl_decode import _message


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, wire_type: int, payload: bytes | int) -> bytes:
    head = varint(number << 3 | wire_type)
    if wire_type == 0:
        return head + varint(int(payload))  # type: ignore[arg-type]
    if wire_type == 2:
        return head + varint(len(payload)) + payload  # type: ignore[arg-type]
    return head + payload  # type: ignore[operator]


def policy_of(*rules: bytes) -> bytes:
    return b"".join(field(ACL_FIELD, 2, r) for r in rules)


def walked(data: bytes) -> tuple[RawRules, Addresses, Addresses]:
    raw = acl_wire.raw_from_messages(pb2.Policy.FromString(data).acl)
    return raw, parse_prefixes(raw.src), parse_prefixes(raw.dst)


def same(got: tuple[RawRules, Addresses, Addresses], want: tuple[RawRules, Addresses, Addresses]) -> None:
    (raw, src, dst), (ref, ref_src, ref_dst) = got, want
    for name in ("ids", "priority", "action", "log", "metrics", "protocol", "syn"):
        assert np.array_equal(getattr(raw, name), getattr(ref, name)), name
    assert raw.description == ref.description
    assert raw.notes == ref.notes and raw.settled == ref.settled
    for side in raw.ports:
        for a, b in zip(raw.ports[side], ref.ports[side], strict=True):
            assert np.array_equal(a, b), side
    for name in raw.icmp:
        for a, b in zip(raw.icmp[name], ref.icmp[name], strict=True):
            assert np.array_equal(a, b), name
    for a, b in ((src, ref_src), (dst, ref_dst)):
        for part in ("given", "version", "addr", "plen"):
            assert np.array_equal(getattr(a, part), getattr(b, part)), part
        assert a.errors == b.errors


@pytest.mark.parametrize("bad", [0.0, 0.05, 0.3])
@pytest.mark.parametrize("seed", range(20))
def test_the_scan_reads_what_the_message_walk_reads(seed: int, bad: float) -> None:
    rng = random.Random(seed)
    acl = [_message(rng, i + 1, bad) for i in range(80)]
    data = pb2.Policy(acl=acl).SerializeToString()
    same(raw_from_policy(data), walked(data))


@pytest.mark.parametrize("seed", range(5))
def test_a_policy_decodes_as_its_messages_do_errors_included(seed: int) -> None:
    rng = random.Random(seed)
    acl = [_message(rng, i + 1, 0.1) for i in range(60)]
    outcomes = []
    for decode in (acl_wire.table_from_messages, lambda a: acl_wire.table_from_policy(pb2.Policy(acl=a))):
        try:
            outcomes.append(list(decode(acl)))
        except AclErrors as exc:
            outcomes.append(exc.paths("acl"))
    assert outcomes[0] == outcomes[1]


MATCH = field(1, 2, b"10.0.0.0/8") + field(3, 0, 6) + field(4, 2, field(1, 0, 80) + field(2, 0, 90))
ODD = {
    "plain": field(1, 0, 7) + field(3, 0, 2) + field(4, 2, MATCH),
    "unknown fields of every wire type": (field(99, 0, 5) + field(1, 0, 7) + field(12, 5, b"abcd")
                                          + field(3, 0, 2) + field(13, 1, b"12345678") + field(4, 2, MATCH)
                                          + field(2000, 2, b"whatever")),
    "another order": field(4, 2, MATCH) + field(3, 0, 1) + field(2, 0, 5) + field(1, 0, 9),
    "a scalar given twice: the last one": field(1, 0, 7) + field(3, 0, 2) + field(1, 0, 8) + field(3, 0, 1),
    "negative enums": (field(1, 0, 7) + field(3, 0, -1)
                       + field(4, 2, field(3, 0, -7) + field(6, 0, 6))),
    "values past 32 bits": (field(1, 0, (1 << 32) + 5) + field(2, 0, (1 << 40) + 3)
                            + field(3, 0, (1 << 33) + 1)
                            + field(4, 2, field(4, 2, field(1, 0, (1 << 36) + 80)))),
    "a known field of another wire type": field(1, 5, b"\x07\0\0\0") + field(3, 0, 2) + field(5, 2, b"x"),
    "an empty match, ports with only a high end": (field(1, 0, 3) + field(3, 0, 2) + field(4, 2, b"")
                                                   + field(4 + 100, 0, 1)),
    "ports with only a high end": field(1, 0, 3) + field(3, 0, 2) + field(4, 2, field(5, 2, field(2, 0, 9))),
    "a description and a string given twice": (
        field(1, 0, 3) + field(3, 0, 2) + field(6, 2, "é".encode())
        + field(4, 2, field(1, 2, b"1.0.0.0/8") + field(1, 2, b"2.0.0.0/8"))),
    "booleans from any non-zero varint": (field(1, 0, 3) + field(3, 0, 2) + field(5, 0, 2)
                                          + field(7, 0, 1 << 40)),
    "optional fields set to zero": (field(1, 0, 3) + field(2, 0, 0)
                                    + field(4, 2, field(6, 0, 0) + field(7, 0, 0))),
}


@pytest.mark.parametrize("name", ODD)
def test_odd_encodings_read_as_the_parser_reads_them(name: str) -> None:
    data = policy_of(ODD["plain"], ODD[name], ODD["plain"])
    same(raw_from_policy(data), walked(data))


@pytest.mark.parametrize("data", [
    policy_of(field(1, 0, 3) + field(4, 2, MATCH) + field(4, 2, field(2, 2, b"1.0.0.0/8"))),  # match twice
    policy_of(field(1, 0, 3) + field(4, 2, field(4, 2, field(1, 0, 1)) + field(4, 2, field(2, 0, 5)))),
    policy_of(field(1, 0, 3) + bytes([0x1B]) + bytes([0x1C])),  # a group
])
def test_what_a_parser_merges_is_left_to_the_parser(data: bytes) -> None:
    with pytest.raises(NotPlain):
        raw_from_policy(data)
    parsed = pb2.Policy.FromString(data) if b"\x1b" not in data else None
    if parsed is not None:  # the daemon's path: re-serialized by upb, which merges
        same(raw_from_policy(parsed.SerializeToString()), walked(data))


@pytest.mark.parametrize("data", [
    policy_of(field(1, 0, 3))[:-1],  # cut inside the value
    field(ACL_FIELD, 2, field(1, 0, 3))[:-2],  # the element's length past the end
    policy_of(bytes([0x08, 0x80])),  # a varint cut at the end of its message
    policy_of(field(4, 2, bytes([0x0A, 0x05]) + b"ab")),  # a string past the end of its message
    policy_of(bytes([0x08]) + bytes([0xFF] * 11)),  # a varint of 11 bytes
])
def test_a_malformed_encoding_is_declined_never_misread(data: bytes) -> None:
    with pytest.raises(NotPlain):
        raw_from_policy(data)


def test_the_elements_of_a_repeated_field_are_found_among_other_fields() -> None:
    data = (field(1, 2, b"settings") + field(2, 2, b"a") + field(3, 2, b"tunnel") + field(2, 2, b"")
            + field(5, 0, 1) + field(2, 2, b"bcd"))
    start, end = Wire(data).entries(2)
    assert [data[s:e] for s, e in zip(start.tolist(), end.tolist(), strict=True)] == [b"a", b"", b"bcd"]


@pytest.mark.parametrize("name", ODD)
def test_a_policy_read_from_the_bytes_it_came_from_is_the_parsed_one(name: str) -> None:
    """convert.policy_from_proto with the bytes as received (ApplyPolicy, a fleet key) and
    without them (the message encoded again) give the same policy."""
    data = policy_of(ODD["plain"], ODD[name].replace(field(1, 0, 3), field(1, 0, 11)))
    message = pb2.Policy.FromString(data)
    outcomes = []
    for encoded in (data, None):
        try:
            outcomes.append(list(convert.policy_from_proto(message, encoded=encoded).acl))
        except InvalidArgument as exc:
            outcomes.append(exc.errors)
    assert outcomes[0] == outcomes[1]


def test_bytes_a_parser_merges_are_read_from_the_parsed_message() -> None:
    data = policy_of(field(1, 0, 3) + field(3, 0, 2) + field(4, 2, field(1, 2, b"10.0.0.0/8"))
                     + field(4, 2, field(2, 2, b"10.1.0.0/16")))  # match given twice: merged
    policy = convert.policy_from_proto(pb2.Policy.FromString(data), encoded=data)
    assert str(policy.acl[0].match.src) == "10.0.0.0/8" and str(policy.acl[0].match.dst) == "10.1.0.0/16"
