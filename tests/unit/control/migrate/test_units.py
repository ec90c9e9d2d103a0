"""Pure pieces of the import: integer sets against Python sets, prefix covers, box subtraction,
the capability table against the policy model, the report's id ranges, the CLI's usage errors."""

from __future__ import annotations

import ipaddress
import random

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from control.cli.main import main
from control.migrate import capability as cap
from control.migrate import intervals as iv
from control.migrate.capability import CAPABILITIES, EMITTERS, Feature, NotExpressible
from control.migrate.ir import Box, box_subtract
from control.migrate.report import id_ranges
from control.policy.models import AclRule, Match, Policy

TOP = 63
ranges = st.lists(st.tuples(st.integers(0, TOP), st.integers(0, TOP)), max_size=5).map(iv.normalize)


def members(a: iv.Ivs) -> set[int]:
    return {x for low, high in a for x in range(low, high + 1)}


@given(ranges, ranges)
def test_interval_operations_match_sets(a: iv.Ivs, b: iv.Ivs) -> None:
    assert members(iv.union(a, b)) == members(a) | members(b)
    assert members(iv.intersect(a, b)) == members(a) & members(b)
    assert members(iv.complement(a, TOP)) == set(range(TOP + 1)) - members(a)
    assert iv.overlaps(a, b) == bool(members(a) & members(b))
    assert iv.contains(a, b) == (members(b) <= members(a))


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_range_prefixes_cover_exactly(x: int, y: int) -> None:
    low, high = min(x, y), max(x, y)
    nets = [ipaddress.IPv4Network(p) for p in iv.prefixes(iv.span(low, high), 4)]
    assert int(nets[0].network_address) == low and int(nets[-1].broadcast_address) == high
    for a, b in zip(nets, nets[1:], strict=False):
        assert int(a.broadcast_address) + 1 == int(b.network_address)
    assert len(nets) <= 62


def test_box_subtract_is_exact() -> None:
    rng = random.Random(5)
    for _ in range(300):
        def box() -> Box:
            out: Box | None = Box(4)
            for dim, top in (("proto", 7), ("src", 31), ("dport", 31)):
                if rng.random() < 0.6 and out is not None:
                    low = rng.randint(0, top)
                    out = out.restrict(dim, iv.span(low, rng.randint(low, top)))
            assert out is not None
            return out

        a, b = box(), box()
        pieces = box_subtract(a, b)
        for _ in range(50):
            point = {"proto": rng.randint(0, 7), "src": rng.randint(0, 31), "dport": rng.randint(0, 31)}

            def has(x: Box, p: dict[str, int] = point) -> bool:
                return all(x.get(d) is None or iv.contains(x.get(d) or (), iv.span(v, v))
                           for d, v in p.items())

            assert sum(has(p) for p in pieces) == (has(a) and not has(b))


def test_enabled_features_have_an_emitter_and_a_model_field() -> None:
    for feature, on in CAPABILITIES.items():
        if on and feature in EMITTERS:
            assert EMITTERS[feature] is not None, f"{feature} is enabled but has no emitter"


def test_baseline_matches_are_valid_models() -> None:
    net = iv.prefix_span(ipaddress.ip_network("10.0.0.0/8"))
    boxes = [Box(4, proto=iv.span(6, 6), src=iv.complement(net, iv.top_of(4)), dport=iv.normalize([(22, 22),
                                                                                                 (80, 90)])),
             Box(6, proto=iv.span(58, 58)), Box(4), Box(4, dst=iv.span(5, 300))]
    for box in boxes:
        for match in cap.box_matches(box):
            AclRule(id=1, action="deny", match=Match.model_validate(match))


def test_missing_features_say_which() -> None:
    caps = {f: False for f in Feature}
    with pytest.raises(NotExpressible) as info:
        cap.box_matches(Box(4, proto=iv.span(6, 6), sport=iv.span(53, 53)), caps)
    assert info.value.reason == "not yet supported by Tidegate: source ports"
    with pytest.raises(NotExpressible, match="any protocol number"):
        cap.box_matches(Box(4, proto=iv.span(47, 47)), caps)
    with pytest.raises(NotExpressible, match="reject"):
        cap.action_for("reject", caps)


def test_family_pin_keeps_a_rule_to_its_family() -> None:
    assert cap.box_matches(Box(6, proto=iv.span(17, 17))) == [{"protocol": "udp", "src": "::/0"}]
    both = cap.region_matches([Box(4, proto=iv.span(17, 17)), Box(6, proto=iv.span(17, 17))])
    assert both == [{"protocol": "udp"}]


def test_id_ranges() -> None:
    assert id_ranges([7, 1, 2, 3, 9, 10]) == "1-3,7,9-10"
    assert id_ranges([]) == ""


def test_cli_without_input_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", "--local", "10.0.0.1", "--forwarding", "off"]) == 2
    assert "nothing to import" in capsys.readouterr().err


def test_cli_bad_file_names_the_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    bad = tmp_path / "rules.v4"
    bad.write_text("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m tcp --dport x -j DROP\nCOMMIT\n")
    assert main(["import", "--iptables", str(bad), "--local", "10.0.0.1", "--forwarding", "off"]) == 2
    assert "line 3" in capsys.readouterr().err


def test_cli_writes_policy_and_report(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    rules = tmp_path / "rules.v4"
    rules.write_text("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                     "-A INPUT -s 192.0.2.0/24 -p tcp -m tcp --dport 22 -j DROP\n"
                     "-A INPUT -m length --length 0:60 -j ACCEPT\n"
                     "-A INPUT -s 198.18.0.0/15 -j DROP\nCOMMIT\n")
    out = tmp_path / "policy.yaml"
    code = main(["import", "--iptables", str(rules), "--interface", "eth0", "--local", "10.0.0.1",
                 "--forwarding", "off", "-o", str(out), "--kept-dir", str(tmp_path / "kept")])
    text = capsys.readouterr().out
    assert code == 0
    assert "moved" in text and "blocked by rule 2" in text
    policy = out.read_text()
    assert "192.0.2.0/24" in policy and "198.18.0.0/15" not in policy
    loaded = Policy.model_validate(yaml.safe_load(policy))
    got = [(r.action, str(r.match.src), r.match.protocol) for r in loaded.acl]
    assert got == [("deny", "192.0.2.0/24", "tcp")]
    kept = (tmp_path / "kept" / "kept.v4").read_text()
    assert "-A INPUT ! -i eth0 -s 192.0.2.0/24" in kept and "-A INPUT -s 198.18.0.0/15 -j DROP" in kept


def test_enabling_a_feature_moves_the_rules_that_needed_it() -> None:
    """The capability table is the one switch: with a feature on (and its emitter), a rule that
    needs it moves; with it off, it is kept with the feature named. Protocol numbers (GRE) and
    source ports, both with their emitters from issue 11."""
    from control.migrate import host, iptables, translate

    text = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A INPUT -p udp -m udp --sport 53 -j DROP\n-A INPUT -p gre -j DROP\nCOMMIT\n")
    facts = host.Host(("eth0",), host.local_from_prefixes(["10.0.0.1"]), {4: False, 6: False})
    caps = {**CAPABILITIES, Feature.SPORT: False, Feature.PROTOCOL_NUMBER: False}
    off = translate.translate(iptables.parse(text, 4), facts, translate.Options(capabilities=caps))
    assert [str(f.status) for f in off.fates] == ["kept", "kept"]
    assert "source ports" in off.fates[0].reason and "any protocol number" in off.fates[1].reason

    caps = {**CAPABILITIES, Feature.SPORT: True, Feature.PROTOCOL_NUMBER: True}
    on = translate.translate(iptables.parse(text, 4), facts, translate.Options(capabilities=caps))
    assert [str(f.status) for f in on.fates] == ["moved", "moved"]
    dns = {"protocol": "udp", "sport": {"low": 53, "high": 53}, "src": "0.0.0.0/0"}
    assert on.entries[0].matches == [dns]
    assert on.entries[1].matches == [{"protocol": 47, "src": "0.0.0.0/0"}]


def test_reject_moves_as_reject_and_says_how_the_answer_differs() -> None:
    """REJECT moves onto the data plane's reject (issue 14): a tcp-reset is answered as asked, any
    other answer is refused alike and the report says what Tidegate sends instead. Off, it is kept."""
    from control.migrate import host, iptables, translate

    text = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A INPUT -p tcp -m tcp --dport 23 -j REJECT --reject-with tcp-reset\n"
            "-A INPUT -p udp -m udp --dport 69 -j REJECT\nCOMMIT\n")
    facts = host.Host(("eth0",), host.local_from_prefixes(["10.0.0.1"]), {4: False, 6: False})
    on = translate.translate(iptables.parse(text, 4), facts, translate.Options(capabilities=CAPABILITIES))
    assert [str(f.status) for f in on.fates] == ["moved", "moved"]
    assert [e.action for e in on.entries] == ["reject", "reject"]
    assert on.fates[0].reason == ""
    assert "administratively prohibited" in on.fates[1].reason
    assert "icmp-port-unreachable" in on.fates[1].reason
    off = translate.translate(iptables.parse(text, 4), facts,
                              translate.Options(capabilities={**CAPABILITIES, Feature.REJECT: False}))
    assert [str(f.status) for f in off.fates] == ["kept", "kept"]
    assert all("reject" in f.reason for f in off.fates)


def test_icmp_types_and_syn_move_and_other_tcp_flags_stay() -> None:
    """Issue 14's ICMP type/code and SYN: an echo-request rule, a type/code pair and --syn move
    (as Match.icmp_type/icmp_code/syn); a --tcp-flags test Tidegate cannot say stays, naming why;
    with the capabilities off they stay naming the feature."""
    from control.migrate import host, iptables, translate

    text = ("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A INPUT -p icmp -m icmp --icmp-type echo-request -j ACCEPT\n"
            "-A INPUT -p icmp -m icmp --icmp-type 3/4 -j DROP\n"
            "-A INPUT -p tcp -m tcp --dport 22 --syn -j DROP\n"
            "-A INPUT -p tcp -m tcp --tcp-flags SYN,ACK ACK -j DROP\n-A INPUT -p icmp -j DROP\nCOMMIT\n")
    facts = host.Host(("eth0",), host.local_from_prefixes(["10.0.0.1"]), {4: False, 6: False})
    on = translate.translate(iptables.parse(text, 4), facts)
    assert [str(f.status) for f in on.fates] == ["mirrored", "moved", "moved", "kept", "moved"]
    assert on.entries[0].matches == [{"protocol": "icmp", "icmp_type": 8, "src": "0.0.0.0/0"}]
    assert on.entries[1].matches == [{"protocol": "icmp", "icmp_type": 3, "icmp_code": 4, "src": "0.0.0.0/0"}]
    assert on.entries[2].matches == [{"protocol": "tcp", "dport": {"low": 22, "high": 22}, "syn": True,
                                      "src": "0.0.0.0/0"}]
    assert "connection opening" in on.fates[3].reason
    caps = {**CAPABILITIES, Feature.ICMP_TYPE: False, Feature.TCP_SYN: False}
    off = translate.translate(iptables.parse(text, 4), facts, translate.Options(capabilities=caps))
    assert [str(f.status) for f in off.fates] == ["kept", "kept", "kept", "kept", "blocked"]
    assert "ICMP type/code" in off.fates[0].reason and "TCP SYN" in off.fates[2].reason


def test_icmp_emitter_writes_whole_types_and_pairs() -> None:
    from control.migrate.capability import _icmp_type

    values = iv.normalize([(0x0800, 0x08FF), (0x0303, 0x0304), (0x0B00, 0x0C00)])
    assert _icmp_type(values, 1) == [{"icmp_type": 3, "icmp_code": 3}, {"icmp_type": 3, "icmp_code": 4},
                                     {"icmp_type": 8}, {"icmp_type": 11}, {"icmp_type": 12, "icmp_code": 0}]
