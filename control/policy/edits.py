"""Edits of a desired state and the diff between two (pure: no I/O, no kernel).

Every edit returns a whole new DesiredState, validated as a whole by the models, so an
incremental change can never produce a state a full apply would refuse. Validated once: the
parts an edit keeps are the models' own (frozen, already validated) instances, which pydantic
accepts as they are, so a new state costs its cross-field checks (unique ids, marks, tables,
attached interfaces) and the validation of what the edit brings, not of every rule again.

The list edits (ACL rules, tunnels, chains) are also data, `Edit`: the state store journals
them (control.apply.state) and replays them on load through the same functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from control.errors import AlreadyExists, GenerationMismatch, InUse, InvalidArgument, NotFound
from control.policy.acl_table import AclTable
from control.policy.models import (
    AclRule,
    DesiredState,
    Interface,
    Policy,
    ServiceChain,
    Tunnel,
    describe_errors,
)

_RULE_ID, _VNI, _NAME = attrgetter("id"), attrgetter("vni"), attrgetter("name")


def validated_state(**fields: Any) -> DesiredState:
    try:
        return DesiredState.model_validate(fields)
    except ValidationError as exc:
        raise InvalidArgument(describe_errors(exc)) from None


def _policy_parts(policy: Policy) -> dict[str, Any]:
    return {"settings": policy.settings, "acl": policy.acl, "tunnels": policy.tunnels,
            "chains": policy.chains}


def _rebuild(state: DesiredState, policy: dict[str, Any] | Policy | None = None,
             interfaces: Sequence[Interface] | None = None) -> DesiredState:
    """A copy with some parts replaced, validated as a whole (model_copy would not validate).

    `policy` as a dict (of model instances and/or plain values) runs Policy's validators again;
    a Policy instance is taken as it is (it was validated when it was made)."""
    pol = _policy_parts(state.policy) if policy is None else policy
    ifs = list(state.interfaces if interfaces is None else interfaces)
    return validated_state(generation=state.generation, interfaces=ifs, policy=pol)


def with_policy(state: DesiredState, policy: Policy) -> DesiredState:
    return _rebuild(state, policy=policy)


def require_attached(chains: list[tuple[str, ServiceChain]], attached: set[str]) -> None:
    """InvalidArgument naming each leg interface that is not attached, by its request path (the
    desired state's own check can name only the state as a whole)."""
    problems = [(f"{where}.{leg_name}.interfaces[{k}]",
                 f"{name} is not attached: attach it first (InterfaceService.AttachInterface)")
                for where, chain in chains for leg_name, leg in chain.legs()
                for k, name in enumerate(leg.interfaces) if name not in attached]
    if problems:
        raise InvalidArgument(problems)


def replace_policy(state: DesiredState, policy: Policy, where: str = "policy") -> DesiredState:
    """The whole policy replaced (ApplyPolicy, fleet mode); chain interfaces must be attached."""
    require_attached([(f"{where}.chains[{i}]", c) for i, c in enumerate(policy.chains)],
                     {i.name for i in state.interfaces})
    return with_policy(state, policy)


def _edit_list(state: DesiredState, name: str, items: list[Any]) -> DesiredState:
    return _rebuild(state, policy={**_policy_parts(state.policy), name: items})


# Lists whose items nothing else in a state refers to, so that their one cross-field rule is a
# unique key (Policy's validators): an edit checks that key itself, against an index of the
# list, and builds the new state from the validated parts as they are (model_construct), in
# time independent of the list's length bar a copy. Chains are referred to (interfaces, marks,
# tables): their edits validate the state again. The ACL is a table of columns
# (control.policy.acl_table) that edits itself.
_KEYED_ONLY = frozenset({"tunnels"})
# name -> (the list last made by an edit, key -> item in list order): the next edit of that
# state finds its index here instead of walking the list
_indexes: dict[str, tuple[list[Any], dict[Any, Any]]] = {}


def _index(state: DesiredState, name: str, key: Callable[[Any], Any]) -> dict[Any, Any]:
    items = getattr(state.policy, name)
    hit = _indexes.get(name)
    if hit is not None and hit[0] is items:
        return hit[1]
    return dict(zip(map(key, items), items, strict=True))


def _constructed(state: DesiredState, name: str, value: Any) -> DesiredState:
    """The state with one policy part replaced by a value valid on its own and against the rest."""
    policy = Policy.model_construct(**{**_policy_parts(state.policy), name: value})
    return DesiredState.model_construct(generation=state.generation, interfaces=state.interfaces,
                                        policy=policy)


def _edited(state: DesiredState, name: str, index: dict[Any, Any]) -> DesiredState:
    items = list(index.values())  # a dict keeps insertion order: the list's, adds appended
    if name not in _KEYED_ONLY:
        return _edit_list(state, name, items)
    _indexes[name] = (items, index)
    return _constructed(state, name, items)


def _add(state: DesiredState, name: str, item: Any, key: Callable[[Any], Any], what: str) -> DesiredState:
    _check_type(f"add_{_ITEM[name]}", item, what)
    index = _index(state, name, key)
    if key(item) in index:
        raise AlreadyExists(f"{what} {key(item)} already exists; delete it first or apply a whole policy")
    index = index.copy()
    index[key(item)] = item
    return _edited(state, name, index)


def _check_type(op: str, item: Any, what: str) -> None:
    model = _EDITS[op].model
    if type(item) is not model:  # an item of a state is a validated model, never a dict
        raise TypeError(f"{what}: expected a {model.__name__}, got {type(item).__name__}")


def _delete(state: DesiredState, name: str, value: Any, key: Callable[[Any], Any], what: str) -> DesiredState:
    index = _index(state, name, key)
    if value not in index:
        raise NotFound(f"{what} {value} does not exist")
    index = index.copy()
    del index[value]
    return _edited(state, name, index)


def add_rule(state: DesiredState, rule: AclRule) -> DesiredState:
    """The rule added to the table (one block of it copied: control.policy.acl_table)."""
    _check_type("add_rule", rule, "ACL rule")
    if state.policy.acl.find(rule.id) is not None:
        raise AlreadyExists(f"ACL rule {rule.id} already exists; delete it first or apply a whole policy")
    return _constructed(state, "acl", state.policy.acl.add(rule))


def delete_rule(state: DesiredState, rule_id: int) -> DesiredState:
    try:
        table = state.policy.acl.remove(rule_id)
    except KeyError:
        raise NotFound(f"ACL rule {rule_id} does not exist") from None
    return _constructed(state, "acl", table)


def add_tunnel(state: DesiredState, tunnel: Tunnel) -> DesiredState:
    return _add(state, "tunnels", tunnel, _VNI, "tunnel VNI")


def delete_tunnel(state: DesiredState, vni: int) -> DesiredState:
    return _delete(state, "tunnels", vni, _VNI, "tunnel VNI")


def add_chain(state: DesiredState, chain: ServiceChain) -> DesiredState:
    return _add(state, "chains", chain, _NAME, "chain")


def delete_chain(state: DesiredState, name: str) -> DesiredState:
    return _delete(state, "chains", name, _NAME, "chain")


def attach(state: DesiredState, iface: Interface) -> DesiredState:
    """Attaches an interface; attaching one again in the same mode changes its next_program (at
    once, for the next packet: the programs stay attached)."""
    current = next((i for i in state.interfaces if i.name == iface.name), None)
    if current is not None and current.mode != iface.mode:
        raise AlreadyExists(f"interface {iface.name} is attached already in mode {current.mode}; detach it "
                            "first to change the mode")
    if current is not None:
        return _rebuild(state, interfaces=[iface if i.name == iface.name else i for i in state.interfaces])
    return _rebuild(state, interfaces=[*state.interfaces, iface])


def detach(state: DesiredState, name: str) -> DesiredState:
    if not any(i.name == name for i in state.interfaces):
        raise NotFound(f"interface {name} is not attached")
    users = [c.name for c in state.policy.chains for _, leg in c.legs() if name in leg.interfaces]
    if users:
        raise InUse(f"interface {name} is used by chains {', '.join(sorted(set(users)))}; delete them first")
    return _rebuild(state, interfaces=[i for i in state.interfaces if i.name != name])


@dataclass(frozen=True)
class _ListEdit:
    name: str  # the Policy list it edits
    key: Callable[[Any], Any]
    model: type[BaseModel]  # of the items (the argument of an add)
    add: bool


_ITEM = {"acl": "rule", "tunnels": "tunnel", "chains": "chain"}
_EDITS = {
    "add_rule": _ListEdit("acl", _RULE_ID, AclRule, True),
    "delete_rule": _ListEdit("acl", _RULE_ID, AclRule, False),
    "add_tunnel": _ListEdit("tunnels", _VNI, Tunnel, True),
    "delete_tunnel": _ListEdit("tunnels", _VNI, Tunnel, False),
    "add_chain": _ListEdit("chains", _NAME, ServiceChain, True),
    "delete_chain": _ListEdit("chains", _NAME, ServiceChain, False),
}
_FUNCTIONS: dict[str, Callable[[DesiredState, Any], DesiredState]] = {
    "add_rule": add_rule, "delete_rule": delete_rule, "add_tunnel": add_tunnel,
    "delete_tunnel": delete_tunnel, "add_chain": add_chain, "delete_chain": delete_chain,
}


@dataclass(frozen=True)
class Edit:
    """One list edit as data: `edit(state)` applies it; `record()` is its JSON form for the
    state store's journal, `Edit.from_record` reads that back (validating the argument), and
    `replay` applies many at once."""

    op: str
    arg: Any  # the item (an add) or its key (a delete)

    def __post_init__(self) -> None:
        if self.op not in _EDITS:
            raise ValueError(f"unknown edit {self.op!r}")

    def __call__(self, state: DesiredState) -> DesiredState:
        return _FUNCTIONS[self.op](state, self.arg)

    def record(self) -> dict[str, Any]:
        arg = self.arg.model_dump(mode="json") if isinstance(self.arg, BaseModel) else self.arg
        return {"op": self.op, "arg": arg}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Edit:
        """Raises ValueError (pydantic's ValidationError is one) for a record that is not an edit."""
        spec = _EDITS.get(data.get("op"))  # type: ignore[arg-type]
        if spec is None:
            raise ValueError(f"unknown edit {data.get('op')!r}")
        arg = data.get("arg")
        if spec.add:
            arg = spec.model.model_validate(arg)
        elif not isinstance(arg, int | str) or isinstance(arg, bool):
            raise ValueError(f"{data['op']}: the key must be a number or a name, got {arg!r}")
        return cls(str(data["op"]), arg)


def replay(state: DesiredState, edits: Sequence[Edit]) -> DesiredState:
    """The edits one after another, with the state validated once at the end: what applying
    them one by one gives (each add appends, each delete removes), or the first one's error.
    The ACL's are applied to its table at once: the rules deleted, then those added."""
    lists: dict[str, dict[Any, Any]] = {}
    acl_keys: set[int] | None = None
    acl_removed: set[int] = set()
    for edit in edits:
        spec = _EDITS[edit.op]
        items: Any
        if spec.name == "acl":
            if acl_keys is None:
                acl_keys = set(state.policy.acl.ids())
            items = acl_keys
            lists.setdefault("acl", {})
        else:
            items = lists.get(spec.name)
            if items is None:
                items = lists[spec.name] = {spec.key(x): x for x in getattr(state.policy, spec.name)}
        key = spec.key(edit.arg) if spec.add else edit.arg
        if spec.add and key in items:
            raise AlreadyExists(f"{edit.op} {key}: it exists already")
        if not spec.add and key not in items:
            raise NotFound(f"{edit.op} {key}: it does not exist")
        if spec.name == "acl":
            _replay_acl(items, lists["acl"], acl_removed, key, edit.arg if spec.add else None)
        elif spec.add:
            items[key] = edit.arg  # a dict keeps insertion order: appended, as the list edit does
        else:
            del items[key]
    if not lists:
        return state
    parts = _policy_parts(state.policy)
    edited: dict[str, Any] = {name: list(items.values()) for name, items in lists.items() if name != "acl"}
    if "acl" in lists:
        edited["acl"] = state.policy.acl.edited(acl_removed, list(lists["acl"].values()))
    return _rebuild(state, policy={**parts, **edited})


def _replay_acl(keys: set[int], added: dict[int, AclRule], removed: set[int], key: int,
                rule: AclRule | None) -> None:
    """One ACL edit of a replay: `keys` are the rule ids present, `added` the rules added (in
    order), `removed` the ids of the table's rules deleted."""
    if rule is not None:
        keys.add(key)
        added[key] = rule
        return
    keys.discard(key)
    if added.pop(key, None) is None:
        removed.add(key)


def check_generation(state: DesiredState, expected: int) -> None:
    """expected 0 means "do not check" (optimistic concurrency for orchestrators)."""
    if expected and expected != state.generation:
        raise GenerationMismatch(f"policy is at generation {state.generation}, not {expected}: "
                                 "read it again and retry")


@dataclass
class Diff:
    """Keys (rule ids, VNIs, chain names) in ascending order."""

    added: list[Any] = field(default_factory=list)
    removed: list[Any] = field(default_factory=list)
    changed: list[Any] = field(default_factory=list)


@dataclass
class PolicyDiff:
    acl: Diff
    tunnels: Diff
    chains: Diff
    settings_changed: bool

    @property
    def empty(self) -> bool:
        parts = (self.acl, self.tunnels, self.chains)
        return not self.settings_changed and not any(d.added or d.removed or d.changed for d in parts)


def _diff(old: Sequence[Any], new: Sequence[Any], key: Callable[[Any], Any]) -> Diff:
    a, b = {key(x): x for x in old}, {key(x): x for x in new}
    return Diff(added=sorted(b.keys() - a.keys()), removed=sorted(a.keys() - b.keys()),
                changed=sorted(k for k in a.keys() & b.keys() if a[k] is not b[k] and a[k] != b[k]))


def _acl_diff(old: AclTable, new: AclTable) -> Diff:
    """By column: ids in one table only, and ids in both whose rules differ."""
    a, b = old.whole(), new.whole()
    common, ia, ib = np.intersect1d(a.rules.rule_id, b.rules.rule_id, assume_unique=True, return_indices=True)
    changed = common[~a.take(ia).same_rows(b.take(ib))]
    return Diff(added=np.sort(np.setdiff1d(b.rules.rule_id, common, assume_unique=True)).tolist(),
                removed=np.sort(np.setdiff1d(a.rules.rule_id, common, assume_unique=True)).tolist(),
                changed=changed.tolist())  # intersect1d sorts


def diff(old: Policy, new: Policy) -> PolicyDiff:
    return PolicyDiff(acl=_acl_diff(old.acl, new.acl),
                      tunnels=_diff(old.tunnels, new.tunnels, _VNI),
                      chains=_diff(old.chains, new.chains, _NAME),
                      settings_changed=old.settings != new.settings)
