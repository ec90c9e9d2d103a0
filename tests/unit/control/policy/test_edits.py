"""Incremental edits and diffs of a desired state (pure)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pydantic import ValidationError

from control.errors import AlreadyExists, GenerationMismatch, InUse, InvalidArgument, NotFound
from control.policy import edits
from control.policy.models import AclRule, DesiredState, Interface, Policy, ServiceChain, Tunnel

CHAIN = {"name": "fw", "forward": {"interfaces": ["eth0"], "mark": 16, "table": 1001,
                                   "nexthops": [{"via": "10.9.0.2"}]}}


def _base() -> DesiredState:
    policy = Policy.model_validate({"acl": [{"id": 1, "action": "deny"}], "chains": [CHAIN]})
    return DesiredState(interfaces=[Interface(name="eth0")], policy=policy)


def test_add_and_delete_a_rule():
    rule = AclRule(id=2, action="allow")
    added = edits.add_rule(_base(), rule)
    assert [r.id for r in added.policy.acl] == [1, 2]
    assert [r.id for r in edits.delete_rule(added, 1).policy.acl] == [2]


def test_adding_a_taken_id_is_already_exists():
    with pytest.raises(AlreadyExists, match="ACL rule 1"):
        edits.add_rule(_base(), AclRule(id=1, action="allow"))


@pytest.mark.parametrize("edit,message", [
    (lambda s: edits.delete_rule(s, 9), "ACL rule 9"),
    (lambda s: edits.delete_tunnel(s, 9), "tunnel VNI 9"),
    (lambda s: edits.delete_chain(s, "nope"), "chain nope"),
    (lambda s: edits.detach(s, "eth9"), "interface eth9"),
])
def test_deleting_what_is_not_there_is_not_found(edit, message):
    with pytest.raises(NotFound, match=message):
        edit(_base())


def test_a_chain_naming_an_unattached_interface_is_invalid():
    chain = ServiceChain.model_validate({**CHAIN, "name": "fw2", "forward": {**CHAIN["forward"],
                                         "interfaces": ["eth1"], "mark": 17, "table": 1002}})
    with pytest.raises(InvalidArgument, match="eth1"):
        edits.add_chain(_base(), chain)


def test_detaching_an_interface_a_chain_uses_is_refused():
    with pytest.raises(InUse, match="fw"):
        edits.detach(_base(), "eth0")


def test_attaching_twice_is_already_exists():
    with pytest.raises(AlreadyExists, match="detach it first"):
        edits.attach(_base(), Interface(name="eth0", mode="generic"))


def test_edits_keep_the_generation_for_the_controller_to_bump():
    state = _base().model_copy(update={"generation": 7})
    assert edits.add_tunnel(state, Tunnel(vni=5)).generation == 7


def test_generation_check():
    edits.check_generation(_base(), 0)  # 0 = do not check
    with pytest.raises(GenerationMismatch, match="generation 0, not 4"):
        edits.check_generation(_base(), 4)


def test_diff_names_what_changed():
    old = _base().policy
    new = Policy.model_validate({"acl": [{"id": 1, "action": "allow"}, {"id": 3, "action": "deny"}],
                                 "tunnels": [{"vni": 7}], "settings": {"default_action": "deny"}})
    d = edits.diff(old, new)
    assert (d.acl.added, d.acl.changed, d.acl.removed) == ([3], [1], [])
    assert d.tunnels.added == [7] and d.chains.removed == ["fw"] and d.settings_changed
    assert edits.diff(old, old).empty


def test_diff_orders_numbers_as_numbers():
    old = Policy()
    new = Policy.model_validate({"acl": [{"id": i, "priority": 999 - i, "action": "deny"}
                                         for i in (10, 9, 100)]})
    assert edits.diff(old, new).acl.added == [9, 10, 100]  # judged 100 first: still listed by number
    assert edits.diff(new, old).acl.removed == [9, 10, 100]
    changed = Policy.model_validate({"acl": [{"id": i, "priority": 999 - i, "action": "allow"}
                                             for i in (10, 9, 100)]})
    assert edits.diff(new, changed).acl.changed == [9, 10, 100]


# --- validated once: an edit keeps the instances it does not touch, and is still never laxer ---


def _random_edit(rng: random.Random) -> tuple[str, Any]:
    """An edit and its argument, as a plain value: valid or not, taken or not."""
    op = rng.choice(["add_rule", "delete_rule", "add_tunnel", "delete_tunnel", "add_chain", "delete_chain",
                     "attach", "detach"])
    if op == "add_rule":
        return op, {"id": rng.randint(1, 6), "action": rng.choice(["allow", "deny"]),
                    "match": rng.choice([{}, {"src": f"10.{rng.randint(0, 3)}.0.0/16"},
                                         {"dst": "2001:db8::/32", "protocol": "tcp", "dport": 443}])}
    if op in ("delete_rule", "delete_tunnel"):
        return op, rng.randint(1, 6)
    if op == "add_tunnel":
        return op, {"vni": rng.randint(1, 6)}
    if op == "add_chain":
        n = rng.randint(1, 4)
        return op, {"name": f"c{n}", "forward": {"interfaces": [f"eth{rng.randint(0, 2)}"],
                                                 "mark": rng.randint(1, 4), "table": 1000 + rng.randint(1, 4),
                                                 "nexthops": [{"via": "10.9.0.2"}]}}
    if op == "delete_chain":
        return op, f"c{rng.randint(1, 4)}"
    return op, f"eth{rng.randint(0, 2)}"


_LISTS = {"rule": ("acl", "id"), "tunnel": ("tunnels", "vni"), "chain": ("chains", "name")}


def _naive(state: DesiredState, op: str, arg: Any) -> dict[str, Any]:
    """What the edit means, on the state's plain dump (for a full validation from scratch)."""
    data = state.model_dump(mode="json")
    if op in ("attach", "detach"):
        names = [i["name"] for i in data["interfaces"]]
        if op == "attach" and arg in names:
            data["interfaces"][names.index(arg)] = {"name": arg}  # again in the same mode: an update
        elif op == "attach":
            data["interfaces"].append({"name": arg})
        elif arg in names:
            data["interfaces"].pop(names.index(arg))
        return data
    verb, what = op.split("_")
    name, key = _LISTS[what]
    if verb == "add":
        data["policy"][name].append(arg)
    else:
        data["policy"][name] = [x for x in data["policy"][name] if x[key] != arg]
    return data


def _edit(state: DesiredState, op: str, arg: Any) -> DesiredState:
    if op == "attach":
        return edits.attach(state, Interface(name=arg))
    if op == "detach":
        return edits.detach(state, arg)
    model = {"add_rule": AclRule, "add_tunnel": Tunnel, "add_chain": ServiceChain}.get(op)
    return edits.Edit(op, model.model_validate(arg) if model else arg)(state)


@pytest.mark.parametrize("seed", range(20))
def test_an_edit_is_valid_exactly_when_the_whole_state_is(seed):
    """Every edit's result is what validating the whole edited state from scratch gives, and an
    edit is refused whenever that validation (or the edit's own check) refuses it."""
    rng = random.Random(seed)
    state = DesiredState()
    applied = 0
    for _ in range(60):
        op, arg = _random_edit(rng)
        try:
            whole = DesiredState.model_validate(_naive(state, op, arg))
        except ValidationError:
            whole = None
        try:
            new = _edit(state, op, arg)
        except (InvalidArgument, AlreadyExists, NotFound, InUse):
            continue  # refused: fine whatever the whole validation says (a duplicate, a missing key)
        assert whole is not None, f"{op} {arg} was accepted, a full validation refuses it"
        assert new == whole
        assert DesiredState.model_validate_json(new.model_dump_json()) == new
        if op in ("add_rule", "delete_rule"):
            kept = {id(b) for b in state.policy.acl.blocks} & {id(b) for b in new.policy.acl.blocks}
            assert len(kept) >= len(state.policy.acl.blocks) - 1, "an ACL edit copies one block at most"
        else:
            assert new.policy.acl is state.policy.acl
        state = new
        applied += 1
    assert applied > 10


def test_a_duplicate_slipped_past_the_edit_is_still_refused():
    """The cross-field checks run on every edit, not only the edit's own lookup."""
    state = _base()
    with pytest.raises(InvalidArgument, match="id 1 is used by both"):
        edits._edit_list(state, "acl", [*state.policy.acl, AclRule(id=1, action="allow")])


@pytest.mark.parametrize("seed", range(5))
def test_replay_is_the_edits_one_after_another(seed):
    rng = random.Random(seed)
    state, done = _base(), []
    for _ in range(40):
        op, arg = _random_edit(rng)
        if op in ("attach", "detach"):
            continue
        try:
            new = _edit(state, op, arg)
        except (InvalidArgument, AlreadyExists, NotFound, InUse):
            continue
        edit = edits.Edit.from_record(edits.Edit(op, new.policy.acl[-1] if op == "add_rule" else
                                             _edit_arg(op, arg)).record())
        done.append(edit)
        state = new
    assert edits.replay(_base(), done) == state


def _edit_arg(op: str, arg: Any) -> Any:
    model = {"add_tunnel": Tunnel, "add_chain": ServiceChain}.get(op)
    return model.model_validate(arg) if model else arg


def test_replay_refuses_what_a_single_edit_refuses():
    with pytest.raises(NotFound):
        edits.replay(_base(), [edits.Edit("delete_rule", 9)])
    with pytest.raises(AlreadyExists):
        edits.replay(_base(), [edits.Edit("add_rule", AclRule(id=1, action="allow"))])


def test_attaching_again_in_the_same_mode_changes_next_program_only():
    state = edits.attach(DesiredState(), Interface(name="eth0"))
    state = edits.attach(state, Interface(name="eth0", next_program="/sys/fs/bpf/lb/xdp"))
    assert [(i.name, i.next_program) for i in state.interfaces] == [("eth0", "/sys/fs/bpf/lb/xdp")]
    with pytest.raises(AlreadyExists, match="detach it first to change the mode"):
        edits.attach(state, Interface(name="eth0", mode="generic"))
