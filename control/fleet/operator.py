"""The operator's side of a fleet: push named policies, assign them to nodes, read who runs what.

    push(client, layout, "web", policy, expected_revision=41)   # -> 57, the key's new revision
    assign(client, layout, ["edge-1", "edge-2"], "web")          # one transaction
    view = read_fleet(client, layout)                            # view.converged, view.nodes

Every write is one etcd transaction. `push` with an expected revision compares the policy key's
mod revision first, so a push built on a stale read is refused (StaleRevision) instead of
overwriting a change made since; 0 means "the policy must not exist yet". `assign` refuses a
policy that does not exist (NoSuchPolicy), in the same transaction as its writes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from control.fleet.etcd import EtcdClient, EtcdError, epb, prefix_end
from control.fleet.keys import NODES, POLICIES, STATUS, Layout, NodeStatus, decode_policy, encode_policy
from control.policy.models import Policy


class StaleRevision(EtcdError):
    def __init__(self, name: str, expected: int, actual: int) -> None:
        now = f"is at revision {actual}" if actual else "does not exist"
        super().__init__(f"policy {name} {now}, not {expected}: someone changed it since it was read; "
                         f"read it again (`tidegate fleet show --policy {name}`) and push with "
                         "--expected-revision set to what it shows")
        self.expected, self.actual = expected, actual


class NoSuchPolicy(EtcdError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no policy {name} in etcd: push it first (`tidegate fleet push -f FILE "
                         f"--policy {name}`)")


def _compare(key: bytes, target: str, value: int, result: str = "EQUAL") -> epb.Compare:
    """mod_revision (target MOD) or version (VERSION) of `key` compared with `value`."""
    compare = epb.Compare(key=key, result=getattr(epb.Compare, result), target=getattr(epb.Compare, target))
    setattr(compare, "mod_revision" if target == "MOD" else "version", value)
    return compare


def _put(key: bytes, value: bytes) -> epb.RequestOp:
    return epb.RequestOp(request_put=epb.PutRequest(key=key, value=value))


def _get(key: bytes) -> epb.RequestOp:
    return epb.RequestOp(request_range=epb.RangeRequest(key=key, keys_only=True))


def push(client: EtcdClient, layout: Layout, name: str, value: bytes | Policy,
         expected_revision: int | None = None) -> int:
    """Writes the policy (a Policy, or its encoding); returns the key's new mod revision."""
    key = layout.policy(name)
    data = encode_policy(value) if isinstance(value, Policy) else value
    compares = [] if expected_revision is None else [_compare(key, "MOD", expected_revision)]
    answer = client.txn(epb.TxnRequest(compare=compares, success=[_put(key, data)], failure=[_get(key)]))
    if not answer.succeeded:
        kvs = answer.responses[0].response_range.kvs
        raise StaleRevision(name, expected_revision or 0, kvs[0].mod_revision if kvs else 0)
    return int(answer.header.revision)


def assign(client: EtcdClient, layout: Layout, nodes: Sequence[str], name: str) -> int:
    """Points every node at policy `name` (which must exist), in one transaction."""
    keys = [layout.node(n) for n in nodes]
    policy_key = layout.policy(name)
    answer = client.txn(epb.TxnRequest(compare=[_compare(policy_key, "VERSION", 0, "GREATER")],
                                       success=[_put(k, name.encode()) for k in keys]))
    if not answer.succeeded:
        raise NoSuchPolicy(name)
    return int(answer.header.revision)


def unassign(client: EtcdClient, layout: Layout, nodes: Sequence[str]) -> int:
    """Removes the nodes' assignments (they then enforce the empty policy)."""
    ops = [epb.RequestOp(request_delete_range=epb.DeleteRangeRequest(key=layout.node(n))) for n in nodes]
    return int(client.txn(epb.TxnRequest(success=ops)).header.revision)


def read_policy(client: EtcdClient, layout: Layout, name: str) -> tuple[Policy, int]:
    kv = client.get(layout.policy(name))
    if kv is None:
        raise NoSuchPolicy(name)
    return decode_policy(kv.value), kv.mod_revision


@dataclass(frozen=True)
class NodeView:
    node: str
    assigned: str | None           # what its key says (None: unassigned)
    latest: int                    # the assigned policy's mod revision now (0: none / missing)
    status: NodeStatus | None      # None: no status key (down for longer than its TTL, never up)

    @property
    def converged(self) -> bool:
        """The node enforces exactly what etcd assigns it now, without error."""
        s = self.status
        if s is None or s.health != "ok":
            return False
        return s.assigned == self.assigned and s.revision == self.latest

    @property
    def problem(self) -> str | None:
        s = self.status
        if s is None:
            return "no status: the node is down, cut off from etcd, or not a fleet member"
        if s.error is not None:
            where = f"revision {s.error.revision}: " if s.error.revision else ""
            return where + s.error.message
        if not self.converged:
            return f"applying (enforces revision {s.revision}, etcd has {self.latest})"
        return None


@dataclass(frozen=True)
class FleetView:
    revision: int                                   # etcd revision of this reading
    policies: dict[str, int] = field(default_factory=dict)  # name -> mod revision
    nodes: list[NodeView] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return all(n.converged for n in self.nodes)


def read_fleet(client: EtcdClient, layout: Layout) -> FleetView:
    """Policies, assignments and statuses at one revision (one transaction of three ranges)."""
    ranges = [epb.RequestOp(request_range=epb.RangeRequest(key=k, range_end=prefix_end(k), keys_only=ko))
              for k, ko in ((layout.policies, True), (layout.nodes, False), (layout.statuses, False))]
    answer = client.txn(epb.TxnRequest(success=ranges))
    policies_kvs, nodes_kvs, status_kvs = (r.response_range.kvs for r in answer.responses)
    policies = {_name(layout, kv.key, POLICIES): kv.mod_revision for kv in policies_kvs}
    assigned = {_name(layout, kv.key, NODES): bytes(kv.value).decode(errors="replace").strip() or None
                for kv in nodes_kvs}
    statuses: dict[str | None, NodeStatus | None] = {}
    for kv in status_kvs:
        node = _name(layout, kv.key, STATUS)
        try:
            statuses[node] = NodeStatus.decode(bytes(kv.value))
        except (ValueError, KeyError, TypeError):
            statuses[node] = None
    names = sorted(n for n in set(assigned) | set(statuses) if n is not None)
    nodes = [NodeView(n, assigned.get(n), policies.get(assigned.get(n) or "", 0), statuses.get(n))
             for n in names]
    return FleetView(int(answer.header.revision), {k: v for k, v in policies.items() if k}, nodes)


def wait_converged(client: EtcdClient, layout: Layout, timeout: float, poll: float = 0.1) -> FleetView:
    """Reads the fleet until it has converged or `timeout` passed; returns the last reading."""
    deadline = time.monotonic() + timeout
    while True:
        view = read_fleet(client, layout)
        if view.converged or time.monotonic() >= deadline:
            return view
        time.sleep(poll)


def _name(layout: Layout, key: bytes, family: str) -> str | None:
    parsed = layout.parse(bytes(key))
    return parsed[1] if parsed is not None and parsed[0] == family else None
