"""Edits of a desired state and the diff between two (pure: no I/O, no kernel).

Every edit returns a whole new DesiredState, validated as a whole by the models, so an
incremental change can never produce a state a full apply would refuse.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from control.errors import AlreadyExists, GenerationMismatch, InUse, InvalidArgument, NotFound
from control.models import AclRule, DesiredState, Interface, Policy, ServiceChain, Tunnel, describe_errors


def validated_state(**fields: Any) -> DesiredState:
    try:
        return DesiredState.model_validate(fields)
    except ValidationError as exc:
        raise InvalidArgument(describe_errors(exc)) from None


def _rebuild(state: DesiredState, policy: dict[str, Any] | None = None,
             interfaces: Sequence[Interface] | None = None) -> DesiredState:
    """A copy with some parts replaced, validated from scratch (model_copy would not validate)."""
    pol = state.policy.model_dump() if policy is None else policy
    ifs = [i.model_dump() for i in (state.interfaces if interfaces is None else interfaces)]
    return validated_state(generation=state.generation, interfaces=ifs, policy=pol)


def with_policy(state: DesiredState, policy: Policy) -> DesiredState:
    return _rebuild(state, policy=policy.model_dump())


def _edit_list(state: DesiredState, name: str, edit: Callable[[list[Any]], list[Any]]) -> DesiredState:
    policy = state.policy.model_dump()
    policy[name] = edit(list(getattr(state.policy, name)))
    policy[name] = [x.model_dump() if hasattr(x, "model_dump") else x for x in policy[name]]
    return _rebuild(state, policy=policy)


def _add(state: DesiredState, name: str, item: Any, key: Callable[[Any], Any], what: str) -> DesiredState:
    if any(key(x) == key(item) for x in getattr(state.policy, name)):
        raise AlreadyExists(f"{what} {key(item)} already exists; delete it first or apply a whole policy")
    return _edit_list(state, name, lambda items: [*items, item])


def _delete(state: DesiredState, name: str, value: Any, key: Callable[[Any], Any], what: str) -> DesiredState:
    if not any(key(x) == value for x in getattr(state.policy, name)):
        raise NotFound(f"{what} {value} does not exist")
    return _edit_list(state, name, lambda items: [x for x in items if key(x) != value])


def add_rule(state: DesiredState, rule: AclRule) -> DesiredState:
    return _add(state, "acl", rule, lambda r: r.id, "ACL rule")


def delete_rule(state: DesiredState, rule_id: int) -> DesiredState:
    return _delete(state, "acl", rule_id, lambda r: r.id, "ACL rule")


def add_tunnel(state: DesiredState, tunnel: Tunnel) -> DesiredState:
    return _add(state, "tunnels", tunnel, lambda t: t.vni, "tunnel VNI")


def delete_tunnel(state: DesiredState, vni: int) -> DesiredState:
    return _delete(state, "tunnels", vni, lambda t: t.vni, "tunnel VNI")


def add_chain(state: DesiredState, chain: ServiceChain) -> DesiredState:
    return _add(state, "chains", chain, lambda c: c.name, "chain")


def delete_chain(state: DesiredState, name: str) -> DesiredState:
    return _delete(state, "chains", name, lambda c: c.name, "chain")


def attach(state: DesiredState, iface: Interface) -> DesiredState:
    if any(i.name == iface.name for i in state.interfaces):
        raise AlreadyExists(f"interface {iface.name} is attached already; detach it first to change the mode")
    return _rebuild(state, interfaces=[*state.interfaces, iface])


def detach(state: DesiredState, name: str) -> DesiredState:
    if not any(i.name == name for i in state.interfaces):
        raise NotFound(f"interface {name} is not attached")
    users = [c.name for c in state.policy.chains for _, leg in c.legs() if name in leg.interfaces]
    if users:
        raise InUse(f"interface {name} is used by chains {', '.join(sorted(set(users)))}; delete them first")
    return _rebuild(state, interfaces=[i for i in state.interfaces if i.name != name])


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
                changed=sorted(k for k in a.keys() & b.keys() if a[k] != b[k]))


def diff(old: Policy, new: Policy) -> PolicyDiff:
    return PolicyDiff(acl=_diff(old.acl, new.acl, lambda r: r.id),
                      tunnels=_diff(old.tunnels, new.tunnels, lambda t: t.vni),
                      chains=_diff(old.chains, new.chains, lambda c: c.name),
                      settings_changed=old.settings != new.settings)
