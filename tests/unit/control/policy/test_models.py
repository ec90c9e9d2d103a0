"""The policy models reject every malformed config with the field at fault and a useful reason.

Faucet-style: one tiny config per mistake, as an operator would write it (YAML), with the field
path describe_errors reports and a substring of the reason.
"""

from __future__ import annotations

import time

import pytest
import yaml
from pydantic import ValidationError

from control.policy.models import (
    AclRule,
    DesiredState,
    Interface,
    Match,
    Policy,
    PortRange,
    ServiceChain,
    describe_errors,
)

U32 = 1 << 32
# A valid chain leg, for cases that break one other thing about it.
LEG = "{interfaces: [eth0], mark: 1, table: 1000, nexthops: [{via: 10.0.0.1}]}"


def _load(snippet: str | dict) -> dict:
    return yaml.safe_load(snippet) if isinstance(snippet, str) else snippet


def errors_of(model: type, snippet: str | dict) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(_load(snippet))
    return describe_errors(info.value)


def assert_rejected(model: type, snippet: str | dict, path: str, reason: str) -> None:
    errors = errors_of(model, snippet)
    assert any(p == path and reason in r for p, r in errors), f"expected {path}: ...{reason}..., got {errors}"


def chain(name: str = "fw", forward: str = LEG, **more: str) -> str:
    extra = "".join(f", {k}: {v}" for k, v in more.items())
    return f"{{name: {name}, forward: {forward}{extra}}}"


def on_leg(**changes: object) -> dict:
    """A policy with one chain whose forward leg has `changes`."""
    return {"chains": [{"name": "fw", "forward": leg(**changes)}]}


def leg(**changes: object) -> dict:
    out: dict = {"interfaces": ["eth0"], "mark": 1, "table": 1000, "nexthops": [{"via": "10.0.0.1"}]}
    out.update(changes)
    return out


# (description, policy snippet, field path, reason substring)
INVALID_POLICIES = [
    # prefixes
    ("malformed prefix", "acl: [{id: 1, action: deny, match: {src: 10.0.0.300/8}}]",
     "acl[0].match.src", "is not an IPv4 or IPv6 prefix"),
    ("prefix that is a word", "acl: [{id: 1, action: deny, match: {dst: any}}]",
     "acl[0].match.dst", "is not an IPv4 or IPv6 prefix"),
    ("prefix length 33", "acl: [{id: 1, action: deny, match: {src: 10.0.0.0/33}}]",
     "acl[0].match.src", "is not an IPv4 or IPv6 prefix"),
    ("IPv6 prefix length 129", "acl: [{id: 1, action: deny, match: {src: '2001:db8::/129'}}]",
     "acl[0].match.src", "is not an IPv4 or IPv6 prefix"),
    ("prefix with host bits", "acl: [{id: 1, action: deny, match: {src: 10.0.0.1/8}}]",
     "acl[0].match.src", "10.0.0.1/8 has host bits set: write 10.0.0.0/8"),
    ("IPv6 prefix with host bits", "acl: [{id: 1, action: deny, match: {dst: '2001:db8::1/32'}}]",
     "acl[0].match.dst", "write 2001:db8::/32"),
    ("src and dst of different families",
     "acl: [{id: 1, action: deny, match: {src: 10.0.0.0/8, dst: '2001:db8::/32'}}]",
     "acl[0].match", "different IP families"),
    # ICMP type/code, SYN
    ("icmp type without a protocol", "acl: [{id: 1, action: allow, match: {icmp_type: 8}}]",
     "acl[0].match.icmp_type", "icmp_type 8 needs protocol icmp or icmpv6 (the rule names none)"),
    ("icmp code with udp", "acl: [{id: 1, action: allow, match: {protocol: udp, icmp_code: 0}}]",
     "acl[0].match.icmp_code", "needs protocol icmp or icmpv6 (udp has no ICMP header)"),
    ("icmp type 256", "acl: [{id: 1, action: allow, match: {protocol: icmpv6, icmp_type: 256}}]",
     "acl[0].match.icmp_type", "less than or equal to 255"),
    ("icmp type as a name", "acl: [{id: 1, action: allow, match: {protocol: icmp, icmp_type: echo}}]",
     "acl[0].match.icmp_type", "valid integer"),
    ("syn with protocol 47", "acl: [{id: 1, action: deny, match: {protocol: 47, syn: true}}]",
     "acl[0].match.syn", "syn needs protocol tcp (protocol 47 has no TCP flags)"),
    ("syn without a protocol", "acl: [{id: 1, action: deny, match: {syn: true}}]",
     "acl[0].match.syn", "syn needs protocol tcp (the rule names none)"),
    # ports
    ("port 70000", "acl: [{id: 1, action: deny, match: {protocol: tcp, dport: 70000}}]",
     "acl[0].match.dport.low", "less than or equal to 65535"),
    ("range ending at 70000", "acl: [{id: 1, action: deny, match: {protocol: tcp, dport: 80-70000}}]",
     "acl[0].match.dport.high", "less than or equal to 65535"),
    ("negative port", "acl: [{id: 1, action: deny, match: {protocol: udp, dport: -1}}]",
     "acl[0].match.dport.low", "greater than or equal to 0"),
    ("port range reversed", "acl: [{id: 1, action: deny, match: {protocol: tcp, dport: 90-80}}]",
     "acl[0].match.dport", "low 90 is above high 80"),
    ("port range reversed as low/high",
     "acl: [{id: 1, action: deny, match: {protocol: tcp, dport: {low: 90, high: 80}}}]",
     "acl[0].match.dport", "low 90 is above high 80"),
    ("port by service name", "acl: [{id: 1, action: deny, match: {protocol: tcp, dport: http}}]",
     "acl[0].match.dport", "is not a port or a low-high range"),
    ("port range with a colon", "acl: [{id: 1, action: deny, match: {protocol: tcp, dport: '80:90'}}]",
     "acl[0].match.dport", "is not a port or a low-high range"),
    ("port range missing high",
     "acl: [{id: 1, action: deny, match: {protocol: tcp, dport: {low: 80}}}]",
     "acl[0].match.dport.high", "Field required"),
    ("dport without protocol", "acl: [{id: 1, action: deny, match: {dport: 80}}]",
     "acl[0].match.dport", "dport 80 needs protocol tcp, udp or sctp (the rule names none)"),
    ("dport with icmp", "acl: [{id: 1, action: deny, match: {protocol: icmp, dport: 80}}]",
     "acl[0].match.dport", "(icmp has no ports)"),
    ("sport range with GRE", "acl: [{id: 1, action: deny, match: {protocol: 47, sport: 1-1023}}]",
     "acl[0].match.sport", "sport 1-1023 needs protocol tcp, udp or sctp (protocol 47 has no ports)"),
    ("sport above 65535", "acl: [{id: 1, action: deny, match: {protocol: udp, sport: 65536}}]",
     "acl[0].match.sport.low", "less than or equal to 65535"),
    ("sport range reversed", "acl: [{id: 1, action: deny, match: {protocol: udp, sport: 9-8}}]",
     "acl[0].match.sport", "low 9 is above high 8"),
    ("unknown protocol name", "acl: [{id: 1, action: deny, match: {protocol: gre}}]",
     "acl[0].match.protocol", "'gre' is not an IP protocol: write tcp, udp, sctp, icmp, icmpv6 or a number"),
    ("protocol 256", "acl: [{id: 1, action: deny, match: {protocol: 256}}]",
     "acl[0].match.protocol", "256 is not an IP protocol"),
    ("negative protocol", "acl: [{id: 1, action: deny, match: {protocol: -1}}]",
     "acl[0].match.protocol", "-1 is not an IP protocol"),
    # ACL rules
    ("duplicate rule id", "acl: [{id: 7, action: deny}, {id: 8, action: deny}, {id: 7, action: allow}]",
     "acl", "id 7 is used by both acl[0] and acl[2]"),
    ("rule id 0", "acl: [{id: 0, action: deny}]", "acl[0].id", "greater than or equal to 1"),
    ("rule id 2^32", f"acl: [{{id: {U32}, action: deny}}]", "acl[0].id", "less than or equal to 4294967295"),
    ("rule id as a word", "acl: [{id: web, action: deny}]", "acl[0].id", "valid integer"),
    ("negative priority", "acl: [{id: 1, priority: -1, action: deny}]",
     "acl[0].priority", "greater than or equal to 0"),
    ("rule without action", "acl: [{id: 1}]", "acl[0].action", "Field required"),
    ("action drop", "acl: [{id: 1, action: drop}]", "acl[0].action", "'allow', 'deny' or 'reject'"),
    ("description of 257 characters", {"acl": [{"id": 1, "action": "deny", "description": "x" * 257}]},
     "acl[0].description", "at most 256 characters"),
    # unknown fields (extra="forbid") everywhere
    ("unknown top-level field", "acls: []", "acls", "Extra inputs are not permitted"),
    ("unknown rule field", "acl: [{id: 1, action: deny, port: 80}]", "acl[0].port", "Extra inputs"),
    ("unknown match field", "acl: [{id: 1, action: deny, match: {source_port: 80}}]",
     "acl[0].match.source_port", "Extra inputs"),
    ("unknown settings field", "settings: {vxlan: 4789}", "settings.vxlan", "Extra inputs"),
    ("unknown leg field", on_leg(gateway="10.0.0.1"),
     "chains[0].forward.gateway", "Extra inputs"),
    # tunnels
    ("duplicate VNI", "tunnels: [{vni: 5}, {vni: 6}, {vni: 5, geneve: false}]",
     "tunnels", "vni 5 is used by both tunnels[0] and tunnels[2]"),
    ("VNI 2^24", f"tunnels: [{{vni: {1 << 24}}}]", "tunnels[0].vni", "less than or equal to 16777215"),
    ("negative VNI", "tunnels: [{vni: -1}]", "tunnels[0].vni", "greater than or equal to 0"),
    ("tunnel with neither encapsulation", "tunnels: [{vni: 5, vxlan: false, geneve: false}]",
     "tunnels[0]", "enable vxlan, geneve or both"),
    # settings
    ("vxlan_port == geneve_port", "settings: {vxlan_port: 4789, geneve_port: 4789}",
     "settings", "vxlan_port and geneve_port are both 4789"),
    ("geneve_port moved onto the vxlan default", "settings: {geneve_port: 4789}",
     "settings", "are both 4789"),
    ("vxlan_port 0", "settings: {vxlan_port: 0}", "settings.vxlan_port", "greater than or equal to 1"),
    ("geneve_port 65536", "settings: {geneve_port: 65536}", "settings.geneve_port", "less than or equal"),
    ("unknown_vni_action reject", "settings: {unknown_vni_action: reject}",
     "settings.unknown_vni_action", "'pass' or 'drop'"),
    ("default_action drop", "settings: {default_action: drop}",
     "settings.default_action", "'allow' or 'deny'"),
    ("fragments all", "settings: {fragments: all}", "settings.fragments", "'judge' or 'first'"),
    ("fragments as a flag", "settings: {fragments: true}", "settings.fragments", "'judge' or 'first'"),
    # service chains: marks and tables
    ("mark 0", on_leg(mark=0),
     "chains[0].forward.mark", "greater than or equal to 1"),
    ("mark 2^32", on_leg(mark=U32),
     "chains[0].forward.mark", "less than or equal to 4294967295"),
    ("table 999", on_leg(table=999),
     "chains[0].forward.table", "greater than or equal to 1000"),
    ("table 2000", on_leg(table=2000),
     "chains[0].forward.table", "less than or equal to 1999"),
    ("table 254 (main)", on_leg(table=254),
     "chains[0].forward.table", "greater than or equal to 1000"),
    ("duplicate chain name", f"chains: [{chain('fw')}, {chain('fw')}]",
     "chains", "name fw is used by both chains[0] and chains[1]"),
    ("duplicate mark across chains",
     {"chains": [{"name": "a", "forward": leg(mark=7, table=1000)},
                 {"name": "b", "forward": leg(mark=7, table=1001)}]},
     "chains", "mark 7 is used by both a.forward and b.forward"),
    ("duplicate mark across forward and return legs",
     {"chains": [{"name": "a", "forward": leg(mark=7, table=1000), "return_path": leg(mark=7, table=1001)}]},
     "chains", "mark 7 is used by both a.forward and a.return_path"),
    ("duplicate mark of one chain's return and another's forward",
     {"chains": [{"name": "a", "forward": leg(mark=1, table=1000), "return_path": leg(mark=2, table=1001)},
                 {"name": "b", "forward": leg(mark=2, table=1002)}]},
     "chains", "mark 2 is used by both a.return_path and b.forward"),
    ("duplicate table across chains",
     {"chains": [{"name": "a", "forward": leg(mark=1, table=1500)},
                 {"name": "b", "forward": leg(mark=2, table=1500)}]},
     "chains", "table 1500 is used by both a.forward and b.forward"),
    ("duplicate table across forward and return legs",
     {"chains": [{"name": "a", "forward": leg(mark=1, table=1500), "return_path": leg(mark=2, table=1500)}]},
     "chains", "table 1500 is used by both a.forward and a.return_path"),
    # service chains: next hops
    ("empty nexthops", on_leg(nexthops=[]),
     "chains[0].forward.nexthops", "at least 1 item"),
    ("17 nexthops", on_leg(nexthops=[{"dev": "eth0"}] * 17),
     "chains[0].forward.nexthops", "at most 16 items"),
    ("nexthop with neither via nor dev", on_leg(nexthops=[{}]),
     "chains[0].forward.nexthops[0]", "a next hop needs via, dev or both"),
    ("nexthop via a prefix", on_leg(nexthops=[{"via": "10.0.0.0/24"}]),
     "chains[0].forward.nexthops[0].via", "not a valid IPv4 or IPv6 address"),
    ("nexthop dev with '/'", on_leg(nexthops=[{"dev": "eth/0"}]),
     "chains[0].forward.nexthops[0].dev", "should match pattern"),
    # service chains: interfaces and names
    ("leg without interfaces", on_leg(interfaces=[]),
     "chains[0].forward.interfaces", "at least 1 item"),
    ("interface name of 16 characters", on_leg(interfaces=["a" * 16]),
     "chains[0].forward.interfaces[0]", "should match pattern"),
    ("interface name with '/'", on_leg(interfaces=["eth0", "veth/1"]),
     "chains[0].forward.interfaces[1]", "should match pattern"),
    ("interface name with a space", on_leg(interfaces=["eth 0"]),
     "chains[0].forward.interfaces[0]", "should match pattern"),
    ("interface name with a trailing newline", on_leg(interfaces=["eth0\n"]),
     "chains[0].forward.interfaces[0]", "should match pattern"),
    ("interface name with an emoji", on_leg(interfaces=["eth\U0001F600"]),
     "chains[0].forward.interfaces[0]", "should match pattern"),
    ("interface name with a non-ASCII letter", on_leg(interfaces=["ethé"]),
     "chains[0].forward.interfaces[0]", "should match pattern"),
    ("interface name starting with '-'", on_leg(interfaces=["-eth0"]),
     "chains[0].forward.interfaces[0]", "should match pattern"),
    ("chain name with an accent", f"chains: [{chain('café')}]", "chains[0].name", "should match pattern"),
    ("chain name with an emoji", {"chains": [{"name": "fw\U0001F525", "forward": leg()}]},
     "chains[0].name", "should match pattern"),
    ("chain name in capitals", f"chains: [{chain('Firewall')}]", "chains[0].name", "should match pattern"),
    ("chain name of 33 characters", f"chains: [{chain('a' * 33)}]", "chains[0].name", "should match pattern"),
    ("empty chain name", f"chains: [{chain(repr(''))}]", "chains[0].name", "should match pattern"),
    ("chain without forward leg", "chains: [{name: fw}]", "chains[0].forward", "Field required"),
    ("chain leg match with a bad prefix",
     on_leg(match={"src": "10.1.1.1/16"}),
     "chains[0].forward.match.src", "host bits set: write 10.1.0.0/16"),
]

# (description, desired-state snippet, field path, reason substring)
INVALID_STATES = [
    ("chain interface not attached",
     f"{{interfaces: [{{name: eth1}}], policy: {{chains: [{chain()}]}}}}",
     "(policy)", "chains use interfaces that are not attached: eth0; attach them first"),
    ("return leg interface not attached",
     {"interfaces": [{"name": "eth0"}],
      "policy": {"chains": [{"name": "fw", "forward": leg(),
                             "return_path": leg(interfaces=["svc0"], mark=2, table=1001)}]}},
     "(policy)", "not attached: svc0"),
    ("interface attached twice", "interfaces: [{name: eth0}, {name: eth0, mode: native}]",
     "(policy)", "interface eth0 is used by both interfaces[0] and interfaces[1]"),
    ("interface mode offload", "interfaces: [{name: eth0, mode: offload}]",
     "interfaces[0].mode", "'native', 'generic' or 'auto'"),
    ("interface name of 16 characters", {"interfaces": [{"name": "x" * 16}]},
     "interfaces[0].name", "should match pattern"),
    ("interface name with '/'", "interfaces: [{name: eth0/1}]", "interfaces[0].name", "should match pattern"),
    ("interface name with an emoji", {"interfaces": [{"name": "\U0001F30A"}]},
     "interfaces[0].name", "should match pattern"),
    ("empty interface name", "interfaces: [{name: ''}]", "interfaces[0].name", "should match pattern"),
    ("unknown interface field", "interfaces: [{name: eth0, driver: ixgbe}]", "interfaces[0].driver", "Extra"),
    ("negative generation", "generation: -1", "generation", "greater than or equal to 0"),
    ("policy errors keep their path", "policy: {acl: [{id: 1, action: deny, match: {dport: 80}}]}",
     "policy.acl[0].match.dport", "dport 80 needs protocol"),
]


def _params(cases: list) -> list:
    return [pytest.param(snippet, path, reason, id=desc) for desc, snippet, path, reason in cases]


@pytest.mark.parametrize("snippet, path, reason", _params(INVALID_POLICIES))
def test_invalid_policy_is_rejected(snippet, path, reason):
    assert_rejected(Policy, snippet, path, reason)


@pytest.mark.parametrize("snippet, path, reason", _params(INVALID_STATES))
def test_invalid_desired_state_is_rejected(snippet, path, reason):
    assert_rejected(DesiredState, snippet, path, reason)


def test_models_are_frozen():
    rule = AclRule(id=1, action="deny")
    with pytest.raises(ValidationError, match="frozen"):
        rule.priority = 5  # type: ignore[misc]


# --- valid configs -----------------------------------------------------------------------------

@pytest.mark.parametrize("dport, low, high", [
    pytest.param(80, 80, 80, id="int"),
    pytest.param("80", 80, 80, id="string"),
    pytest.param("80-90", 80, 90, id="range string"),
    pytest.param(" 80 - 90 ", 80, 90, id="range string with spaces"),
    pytest.param({"low": 80, "high": 90}, 80, 90, id="low/high"),
    pytest.param(0, 0, 0, id="port 0 (non-first fragments)"),
    pytest.param("0-65535", 0, 65535, id="every port"),
])
def test_port_forms(dport, low, high):
    match = Match.model_validate({"protocol": "tcp", "dport": dport})
    assert match.dport == PortRange(low=low, high=high)


def test_ipv6_rule():
    rule = AclRule.model_validate(yaml.safe_load(
        "{id: 1, action: deny, match: {src: '2001:db8::/32', dst: '::/0', protocol: udp, dport: 53}}"))
    assert rule.match.src.version == 6 and rule.match.dst.prefixlen == 0


def test_bare_address_is_a_host_prefix():
    assert str(Match(src="192.0.2.7").src) == "192.0.2.7/32"
    assert str(Match(dst="2001:db8::7").dst) == "2001:db8::7/128"


def test_one_family_is_enough():
    assert Match.model_validate({"src": "0.0.0.0/0", "protocol": "icmp"}).dst is None


def test_full_valid_desired_state():
    state = DesiredState.model_validate(yaml.safe_load("""
interfaces: [{name: eth0, mode: native}, {name: svc0}, {name: bond0.100}]
policy:
  settings: {vxlan_port: 8472, geneve_port: 6081, unknown_vni_action: drop, default_action: deny,
             fragments: first}
  acl:
    - {id: 1, priority: 0, action: allow, match: {src: 10.0.0.0/8, protocol: tcp, dport: 22}, log: true}
    - {id: 4294967295, action: deny, description: "everything else from the lab"}
    - {id: 2, action: allow, match: {protocol: icmpv6}}
  tunnels: [{vni: 0}, {vni: 16777215, vxlan: false}]
  chains:
    - name: fw_1
      forward: {interfaces: [eth0], match: {dst: 192.0.2.0/24}, mark: 1, table: 1000,
                nexthops: [{via: 198.51.100.1, dev: svc0}, {via: 'fe80::1', dev: svc0}]}
      return_path: {interfaces: [svc0], mark: 4294967295, table: 1999, nexthops: [{dev: eth0}]}
    - name: ids
      priority: 5
      forward: {interfaces: [bond0.100], mark: 2, table: 1001, nexthops: [{dev: svc0}]}
"""))
    assert state.policy.interfaces() == {"eth0", "svc0", "bond0.100"}
    assert state.policy.settings.vxlan_port == 8472
    assert state.policy.settings.fragments == "first"
    assert [leg for leg, _ in state.policy.chains[0].legs()] == ["forward", "return_path"]


@pytest.mark.parametrize("name", ["eth0", "a" * 15, "bond0.100", "veth-a_b", "eth0:1", "vlan@eth0", "0"])
def test_valid_interface_names(name):
    assert Interface(name=name).mode == "auto"


@pytest.mark.parametrize("name", ["fw", "a" * 32, "0-service_chain"])
def test_valid_chain_names(name):
    assert ServiceChain.model_validate({"name": name, "forward": leg()}).priority == 1000


def test_huge_lists_validate_quickly():
    rules = [{"id": i, "action": "deny" if i % 2 else "allow",
              "match": {"src": f"10.{i >> 8 & 255}.{i & 255}.0/24", "protocol": "tcp", "dport": i % 65536}}
             for i in range(1, 10_001)]
    tunnels = [{"vni": v} for v in range(4096)]
    started = time.perf_counter()
    policy = Policy.model_validate({"acl": rules, "tunnels": tunnels})
    elapsed = time.perf_counter() - started
    assert len(policy.acl) == 10_000
    assert elapsed < 10, f"validating 10k rules took {elapsed:.1f}s"
