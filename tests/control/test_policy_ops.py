"""Incremental edits and diffs of a desired state (pure)."""

from __future__ import annotations

import pytest

from control import policy_ops as ops
from control.errors import AlreadyExists, GenerationMismatch, InUse, InvalidArgument, NotFound
from control.models import AclRule, DesiredState, Interface, Policy, ServiceChain, Tunnel

CHAIN = {"name": "fw", "forward": {"interfaces": ["eth0"], "mark": 16, "table": 1001,
                                   "nexthops": [{"via": "10.9.0.2"}]}}


def _base() -> DesiredState:
    policy = Policy.model_validate({"acl": [{"id": 1, "action": "deny"}], "chains": [CHAIN]})
    return DesiredState(interfaces=[Interface(name="eth0")], policy=policy)


def test_add_and_delete_a_rule():
    rule = AclRule(id=2, action="allow")
    added = ops.add_rule(_base(), rule)
    assert [r.id for r in added.policy.acl] == [1, 2]
    assert [r.id for r in ops.delete_rule(added, 1).policy.acl] == [2]


def test_adding_a_taken_id_is_already_exists():
    with pytest.raises(AlreadyExists, match="ACL rule 1"):
        ops.add_rule(_base(), AclRule(id=1, action="allow"))


@pytest.mark.parametrize("edit,message", [
    (lambda s: ops.delete_rule(s, 9), "ACL rule 9"),
    (lambda s: ops.delete_tunnel(s, 9), "tunnel VNI 9"),
    (lambda s: ops.delete_chain(s, "nope"), "chain nope"),
    (lambda s: ops.detach(s, "eth9"), "interface eth9"),
])
def test_deleting_what_is_not_there_is_not_found(edit, message):
    with pytest.raises(NotFound, match=message):
        edit(_base())


def test_a_chain_naming_an_unattached_interface_is_invalid():
    chain = ServiceChain.model_validate({**CHAIN, "name": "fw2", "forward": {**CHAIN["forward"],
                                         "interfaces": ["eth1"], "mark": 17, "table": 1002}})
    with pytest.raises(InvalidArgument, match="eth1"):
        ops.add_chain(_base(), chain)


def test_detaching_an_interface_a_chain_uses_is_refused():
    with pytest.raises(InUse, match="fw"):
        ops.detach(_base(), "eth0")


def test_attaching_twice_is_already_exists():
    with pytest.raises(AlreadyExists, match="detach it first"):
        ops.attach(_base(), Interface(name="eth0", mode="generic"))


def test_edits_keep_the_generation_for_the_controller_to_bump():
    state = _base().model_copy(update={"generation": 7})
    assert ops.add_tunnel(state, Tunnel(vni=5)).generation == 7


def test_generation_check():
    ops.check_generation(_base(), 0)  # 0 = do not check
    with pytest.raises(GenerationMismatch, match="generation 0, not 4"):
        ops.check_generation(_base(), 4)


def test_diff_names_what_changed():
    old = _base().policy
    new = Policy.model_validate({"acl": [{"id": 1, "action": "allow"}, {"id": 3, "action": "deny"}],
                                 "tunnels": [{"vni": 7}], "settings": {"default_action": "deny"}})
    d = ops.diff(old, new)
    assert (d.acl.added, d.acl.changed, d.acl.removed) == ([3], [1], [])
    assert d.tunnels.added == [7] and d.chains.removed == ["fw"] and d.settings_changed
    assert ops.diff(old, old).empty


def test_diff_orders_numbers_as_numbers():
    old = Policy()
    new = Policy.model_validate({"acl": [{"id": i, "action": "deny"} for i in (10, 9, 100)]})
    assert ops.diff(old, new).acl.added == [9, 10, 100]
