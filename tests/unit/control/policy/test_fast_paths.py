"""The control plane's quick paths give exactly what the general ones give (pure)."""

from __future__ import annotations

import ipaddress
import random
from itertools import islice

import pytest
from pydantic import ValidationError

from control.policy.intent import AclTranslations, acl_match_rule
from control.policy.models import AclRule, Match

ODD = ["10.0.0.0/8", "10.0.0.0/08", "10.0.0.1/8", "010.0.0.0/8", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0",
       "10.0.0/24", "0.0.0.0/0", "255.255.255.255/32", "10.0.0.0/255.0.0.0", " 10.0.0.0/8", "10.0.0.0/8 ",
       "10.0.0.0/+8", "10.0.0.0/²", "1.2.3.4/32", "1.2.3.4/-1", "::ffff:10.0.0.0/104", "2001:db8::/32",
       "0x0a.0.0.0/8", "10.0.0.0//8", "", "/8", "10.0.0.0\x00/8", "10.0.0.0/8\x00", "10.0.0.0%eth0/8"]


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


def _rules(ids: range) -> list[AclRule]:
    return [AclRule(id=i, action="deny", match={"src": f"10.{i % 256}.0.0/16", "protocol": "tcp", "dport": i})
            for i in ids]


def test_each_rule_is_translated_once_and_as_from_scratch():
    translate = AclTranslations()
    rules = _rules(range(1, 200))
    first = translate(rules)
    assert first == tuple(map(acl_match_rule, rules))
    added = [*rules, *_rules(range(500, 503))]
    again = translate(added)
    assert all(a is b for a, b in zip(first, again, strict=False)), "kept rules keep their MatchRules"
    assert again == tuple(map(acl_match_rule, added))
    shuffled = random.Random(1).sample(added, len(added))  # new rules anywhere, not only at the end
    fresh = _rules(range(900, 905))
    mixed = shuffled[:50] + fresh + shuffled[50:]
    assert translate(mixed) == tuple(map(acl_match_rule, mixed))


def test_translations_of_rules_gone_are_forgotten():
    translate = AclTranslations()
    old, new = _rules(range(1, 3000)), _rules(range(5000, 5010))
    translate(old)
    translate(new)
    translate.keep_only(new)
    assert translate(new) == tuple(map(acl_match_rule, new))
    assert len(translate._match) == len(new)  # noqa: SLF001 - what it holds is the point
