"""Translation of the policy models into what one interface's data plane holds (pure)."""

from __future__ import annotations

from control.policy.intent import LegRef, interface_intent
from control.policy.models import DesiredState
from dataplane import abi

STATE = DesiredState.model_validate({
    "interfaces": [{"name": "down0"}, {"name": "svc1"}],
    "policy": {
        "settings": {"default_action": "deny", "vxlan_port": 8472, "fragments": "first"},
        "acl": [{"id": 5, "priority": 7, "action": "allow", "log": True,
                 "match": {"src": "10.0.0.0/8", "protocol": "tcp", "dport": "80-90"}}],
        "tunnels": [{"vni": 100, "geneve": False}],
        "chains": [
            {"name": "a", "priority": 3,
             "forward": {"interfaces": ["down0"], "mark": 16, "table": 1001, "nexthops": [{"dev": "svc0"}],
                         "match": {"dst": "203.0.113.0/24"}},
             "return_path": {"interfaces": ["svc1"], "mark": 17, "table": 1002,
                             "nexthops": [{"dev": "up0"}]}},
            {"name": "b", "forward": {"interfaces": ["down0"], "mark": 18, "table": 1003,
                                      "nexthops": [{"dev": "svc0"}]}},
        ],
    },
})


def test_the_acl_is_the_policy_table_itself():
    assert interface_intent(STATE, "down0").acl is STATE.policy.acl


def test_a_leg_matches_source_ports_and_any_protocol_number():
    state = DesiredState.model_validate({
        "interfaces": [{"name": "down0"}],
        "policy": {"chains": [{"name": "a", "forward": {
            "interfaces": ["down0"], "mark": 16, "table": 1001, "nexthops": [{"dev": "svc0"}],
            "match": {"protocol": "udp", "sport": 53, "dport": "0-65535"}}},
            {"name": "b", "forward": {"interfaces": ["down0"], "mark": 17, "table": 1002,
                                      "nexthops": [{"dev": "svc0"}], "match": {"protocol": 47}}}]}})
    udp, gre = interface_intent(state, "down0").classifiers
    assert (udp.proto, udp.sport, udp.dport) == (17, (53, 53), None)
    assert (gre.proto, gre.sport, gre.dport) == (47, None, None)


def test_each_interface_gets_only_the_legs_entering_on_it():
    down = interface_intent(STATE, "down0")
    svc = interface_intent(STATE, "svc1")
    assert [(c.payload, c.priority) for c in down.classifiers] == [(16, 3), (18, 1000)]
    assert down.legs == {1: LegRef("a", "forward"), 3: LegRef("b", "forward")}
    assert [c.payload for c in svc.classifiers] == [17]
    assert svc.legs == {2: LegRef("a", "return_path")}


def test_settings_and_tunnels_translate():
    intent = interface_intent(STATE, "down0")
    assert intent.config.default_action == "deny" and intent.config.vxlan_port == 8472
    assert intent.config.fragments == "first"
    assert intent.config.flags() & abi.define("TG_CFG_F_FRAGMENTS_FIRST")
    assert [(t.vni, t.vxlan, t.geneve) for t in intent.tunnels] == [(100, True, False)]
