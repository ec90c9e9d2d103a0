"""The control plane's quick paths give exactly what the general ones give (pure)."""

from __future__ import annotations

import ipaddress
import random
from itertools import islice

import numpy as np
import pytest
from pydantic import ValidationError

from control.policy import prefix_scan
from control.policy.acl_decode import parse_prefixes
from control.policy.models import Match, describe_errors

ODD = ["10.0.0.0/8", "10.0.0.0/08", "10.0.0.1/8", "010.0.0.0/8", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0",
       "10.0.0/24", "0.0.0.0/0", "255.255.255.255/32", "10.0.0.0/255.0.0.0", " 10.0.0.0/8", "10.0.0.0/8 ",
       "10.0.0.0/+8", "10.0.0.0/²", "1.2.3.4/32", "1.2.3.4/-1", "::ffff:10.0.0.0/104", "2001:db8::/32",
       "0x0a.0.0.0/8", "10.0.0.0//8", "", "/8", "10.0.0.0\x00/8", "10.0.0.0/8\x00", "10.0.0.0%eth0/8"]
# IPv6: the column decoder reads the plain form itself (acl_decode._ipv6_quickly), the model the rest
ODD6 = ["2001:db8::/32", "2001:DB8::/32", "2001:db8::1/32", "2001:db8::/129", "2001:db8::/032", "::/0",
        "::/00", "::1/128", "::/128", "2001:db8:0:0:0:0:0:0/48", "2001:0db8::/32", "02001:db8::/32",
        "2001:db8:::/32", "2001:db8::/", "2001:db8::", "fe80::%eth0/64", "fe80::/64%eth0",
        "1:2:3:4:5:6:7:8/128", "1:2:3:4:5:6:7:8:9/128", "1::2::3/128", ":::/0", "2001:db8::/+32",
        "2001:db8::/٣٢", "::ffff:1.2.3.4/128", "2001:db8::/32 ", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/12",
        "ffff::/1", "8000::/1", "g::/16", "2001:db8::\x00/32"]


def _prefixes6(rng: random.Random) -> list[str]:
    out = []
    for _ in range(200):
        length = rng.randint(0, 128)
        # few zero groups, or many
        shape = rng.choice([(1 << 128) - 1, ((1 << 64) - 1) << 64, ((1 << 16) - 1) << 112])
        value = rng.getrandbits(128) & shape
        if rng.random() < 0.8:
            value &= ~((1 << (128 - length)) - 1) & ((1 << 128) - 1)
        address = ipaddress.IPv6Address(value)
        out.append(f"{address.exploded if rng.random() < 0.3 else address}/{length}")
    return out


def _prefixes(rng: random.Random) -> list[str]:
    out = []
    for _ in range(400):
        length = rng.randint(0, 32)
        value = rng.getrandbits(32)
        if rng.random() < 0.8:
            value &= ~((1 << (32 - length)) - 1) & 0xFFFFFFFF
        out.append(f"{ipaddress.IPv4Address(value)}/{length}")
    return out


@pytest.mark.parametrize("text", [*ODD, *_prefixes(random.Random(7))])
def test_a_prefix_is_what_ipaddress_makes_of_it(text):
    try:
        expected = ipaddress.ip_network(text)
    except ValueError:
        expected = None
    try:
        got = Match(src=text).src
    except ValidationError:
        got = None
    if expected is None:
        assert got is None, f"{text!r} was accepted: {got!r}"
        return
    assert got == expected and type(got) is type(expected) and str(got) == str(expected)
    assert got.prefixlen == expected.prefixlen and got.netmask == expected.netmask
    assert vars(expected).keys() <= vars(got).keys(), "built as ipaddress builds it"  # + cached properties
    assert all(v == vars(got)[k] for k, v in vars(expected).items() if k != "hosts")
    assert list(islice(got.hosts(), 3)) == list(islice(expected.hosts(), 3))
    dumped = Match(src=text).model_dump(mode="json")["src"]
    assert dumped == str(expected)
    assert Match.model_validate_json(Match(src=text).model_dump_json()) == Match(src=expected)


@pytest.mark.parametrize("text", [*ODD, *_prefixes(random.Random(8)), *ODD6, *_prefixes6(random.Random(9))])
def test_the_column_decoder_reads_a_prefix_as_the_model_does(text):
    """parse_prefixes (C for canonical IPv4, the model's type for the rest) gives the model's
    network, or the model's message."""
    try:
        expected, message = Match(src=text).src, None
    except ValidationError as exc:
        expected, message = None, describe_errors(exc)[0][1]
    got = parse_prefixes([text])
    if expected is None:
        assert got.errors == {0: message}
        return
    assert not got.errors and got.given[0]
    assert (got.version[0], got.plen[0]) == (expected.version, expected.prefixlen)
    assert bytes(got.addr[0]) == expected.network_address.packed.ljust(16, b"\0")


def _expected(text: str) -> tuple[object, str | None]:
    try:
        return Match(src=text).src, None
    except ValidationError as exc:
        return None, describe_errors(exc)[0][1]


@pytest.mark.parametrize("seed", range(4))
def test_a_batch_of_prefixes_reads_each_as_the_model_does(seed):
    """Many texts at once: all canonical (read in one go by prefix_scan) and mixed with odd ones
    (read character by character), each row as the model reads it alone."""
    rng = random.Random(seed)
    canonical = [t for t in _prefixes(rng) if _expected(t)[0] is not None and "/" in t]
    mixed = [*canonical, *ODD, *(t.replace(".", "..", 1) for t in canonical[:5]), *ODD6, *_prefixes6(rng)]
    rng.shuffle(mixed)
    for texts in (canonical, mixed):
        got = parse_prefixes(texts)
        for row, text in enumerate(texts):
            expected, message = _expected(text)
            if expected is None:
                assert got.errors.get(row) == message, text
                continue
            assert row not in got.errors and got.given[row], text
            assert (got.version[row], got.plen[row]) == (expected.version, expected.prefixlen), text
            assert bytes(got.addr[row]) == expected.network_address.packed.ljust(16, b"\0"), text


def test_both_ways_of_reading_a_batch_agree():
    texts = [t.encode() for t in _prefixes(random.Random(3))]
    lengths = np.array([len(t) for t in texts], dtype=np.int64)
    buf = np.frombuffer(b"".join(texts) + bytes(prefix_scan.PAD), np.uint8)
    starts = np.cumsum(lengths) - lengths
    assert prefix_scan._numbers(prefix_scan._lines(buf, starts, lengths), len(texts)) is not None, "in one go"
    at_once = prefix_scan.scan_ipv4(buf, starts, lengths)
    by_char = prefix_scan._scan_columns(buf, starts, lengths)
    assert all(np.array_equal(a, b) for a, b in zip(at_once, by_char, strict=True))
    assert at_once[0].all()
