"""The daemon as a fleet member: etcd's policy for this node, applied like ApplyPolicy.

    member = FleetMember(config.fleet, controller, on_health=...)
    member.start()   # returns at once: the data plane keeps what it enforces until etcd answers
    member.stop()

Three threads: the watcher (control.fleet.watcher) keeps a copy of the intent keys; each time
it changes, the target (the policy this node's key names, at its revision) goes to a slot the
applier reads, so a burst of pushes is applied once, at its last revision. The applier decodes
the value (tidegate.v1.Policy), validates it with the same conversion as ApplyPolicy
(control.rpc.convert) and applies it through Controller.apply_policy, the path ApplyPolicy takes:
all or nothing, persisted, and refused as a whole with the fields named when it is wrong. A
refused policy leaves the last good one enforced and is reported in the status key; a failure
that depends on this node (an interface a chain names is not attached, the kernel refused) is
tried again with backoff, a policy that is wrong everywhere waits for the next push.

A node no policy is assigned to, or whose policy was deleted, enforces the empty policy: what
etcd holds is the whole truth, so nothing deleted there survives here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from google.protobuf.message import DecodeError

from control.apply.controller import Controller
from control.apply.reconcile import InvalidState
from control.daemon_config import Fleet
from control.errors import InvalidArgument
from control.fleet.etcd import EtcdClient, EtcdTls, Kv
from control.fleet.keys import AppliedError, Layout, NodeStatus, decode_policy
from control.fleet.status import StatusWriter
from control.fleet.watcher import Backoff, Watcher
from control.policy.models import Policy

log = logging.getLogger(__name__)

RETRY_START_S, RETRY_MAX_S = 2.0, 60.0
HEALTH_SERVICE = "tidegate.fleet"  # gRPC health: SERVING while in sync with etcd


@dataclass(frozen=True)
class Target:
    """What this node should enforce, as of etcd revision `seen`."""

    assigned: str | None     # the policy name this node's key holds (None: no key)
    policy: Kv | None        # that policy's key-value (None: unassigned, or no such policy)
    seen: int

    @property
    def revision(self) -> int:
        return self.policy.mod_revision if self.policy is not None else 0


def target_of(view: Mapping[bytes, Kv], layout: Layout, node: str, seen: int) -> Target:
    """Pure: the target in a copy of the intent range."""
    key = view.get(layout.node(node))
    assigned = key.value.decode(errors="replace").strip() if key is not None else None
    if not assigned:
        return Target(None, None, seen)
    try:
        policy = view.get(layout.policy(assigned))
    except ValueError:  # not a valid policy name
        policy = None
    return Target(assigned, policy, seen)


class Refused(Exception):
    """A target that cannot be applied; `retry`: it may apply later on this node."""

    def __init__(self, error: AppliedError, retry: bool) -> None:
        super().__init__(error.message)
        self.error, self.retry = error, retry


def target_policy(target: Target) -> Policy:
    """The target's Policy, validated as ApplyPolicy validates its request (Refused if not)."""
    if target.policy is None:
        if target.assigned is not None:
            raise Refused(AppliedError(target.assigned, 0, f"policy {target.assigned!r} is assigned to this "
                                       "node but does not exist: push it (`tidegate fleet push`) or assign "
                                       "another; the empty policy is enforced meanwhile"), retry=False)
        return Policy()
    try:
        return decode_policy(target.policy.value)
    except DecodeError as exc:
        raise Refused(AppliedError(target.assigned, target.revision,
                                   f"not a tidegate.v1.Policy in protobuf wire format ({exc}): write "
                                   "policies with `tidegate fleet push`"), retry=False) from None
    except InvalidArgument as exc:
        error = AppliedError(target.assigned, target.revision, str(exc), exc.errors)
        raise Refused(error, retry=False) from None


class FleetMember:
    def __init__(self, config: Fleet, controller: Controller,
                 on_health: Callable[[bool], None] | None = None) -> None:
        self.config, self.controller = config, controller
        self.layout = Layout(config.prefix)
        self.source = config.describe()
        ca, cert, key = config.tls.files() if config.tls is not None else (None, None, None)
        tls = EtcdTls(ca, cert, key, config.tls.server_name) if config.tls is not None else None
        self.client = EtcdClient(config.endpoints, tls=tls, user=config.user, password=config.password(),
                                 timeout=config.timeout)
        self.watcher = Watcher(self.client, *self.layout.intent_range(), self._on_sync, self._on_state)
        self.status = StatusWriter(self.client, self.layout.status(config.node), config.status_ttl)
        self.on_health = on_health or (lambda ok: None)
        self.applied: Target | None = None   # what the data plane enforces (None: not yet from etcd)
        self.error: AppliedError | None = None
        self.lost_since: float | None = None               # etcd unreachable since (Unix time)
        self.last_outage: tuple[float, float] | None = None  # the last time it was, and until when
        self._last_target: Target | None = None
        self.applies = {"ok": 0, "refused": 0, "unchanged": 0}
        self._pending: Target | None = None
        self._cond = threading.Condition()
        # The watcher's thread and the applier both publish: a status must be computed and handed
        # to the writer in one step, or an older snapshot can overwrite a newer one.
        self._publish_lock = threading.Lock()
        self._stop = False
        self._thread: threading.Thread | None = None

    # --- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.controller.policy_source = self.source
        self.on_health(False)  # until the first list
        self._publish()
        self.status.start()
        self._thread = threading.Thread(target=self._apply_loop, name="fleet-apply", daemon=True)
        self._thread.start()
        self.watcher.start()
        log.info("fleet member started", extra={"node": self.config.node, "endpoints": self.config.endpoints,
                                                "prefix": self.config.prefix})

    def stop(self) -> None:
        self.watcher.stop()
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(30.0)
        self.status.stop(revoke=True)
        self.client.close()

    # --- watcher callbacks (the watcher's thread) -----------------------------------------------
    def _on_sync(self, view: Mapping[bytes, Kv], revision: int, why: str) -> None:
        target = target_of(view, self.layout, self.config.node, revision)
        with self._cond:
            self._pending = target
            self._cond.notify_all()

    def _on_state(self, connected: bool, error: str | None) -> None:
        if not connected and self.lost_since is None:
            self.lost_since = time.time()
        if connected and self.lost_since is not None:
            self.last_outage, self.lost_since = (self.lost_since, time.time()), None
        self.on_health(connected)
        if connected:
            self._publish()

    # --- the applier ----------------------------------------------------------------------------
    def _apply_loop(self) -> None:
        retry = Backoff(RETRY_START_S, RETRY_MAX_S)
        retry_at: float | None = None
        while True:
            with self._cond:
                while not self._stop and self._pending is None and retry_at is None:
                    self._cond.wait()
                if not self._stop and self._pending is None and retry_at is not None:
                    self._cond.wait(max(0.0, retry_at - time.monotonic()))
                if self._stop:
                    return
                target = self._pending or self._last_target
                self._pending = None
            if target is None:
                continue
            try:
                self.apply(target)
                retry.reset()
                retry_at = None
            except Refused as exc:
                retry_at = time.monotonic() + retry.next() if exc.retry else None
                if not exc.retry:
                    retry.reset()

    def apply(self, target: Target) -> None:
        """Brings the data plane to `target` (Refused: it was not; the last good policy stays)."""
        self._last_target = target
        try:
            policy = target_policy(target)
            self._apply_policy(target, policy)
        except Refused as exc:
            self.applies["refused"] += 1
            self.error = exc.error
            log.warning("fleet policy refused", extra={"policy": target.assigned, "revision": target.revision,
                                                       "error": exc.error.message, "retry": exc.retry})
            if target.policy is None and target.assigned is not None:
                self._apply_policy(replace(target, assigned=None), Policy(), keep_error=True)
            self._publish()
            raise
        self._publish()

    def _apply_policy(self, target: Target, policy: Policy, keep_error: bool = False) -> None:
        if self.controller.read().policy == policy:
            self.applies["unchanged"] += 1   # already enforced (a restart, the same bytes again)
        else:
            started = time.monotonic()
            try:
                self.controller.apply_policy(policy, source=self.source)
            except (InvalidArgument, InvalidState) as exc:
                raise Refused(AppliedError(target.assigned, target.revision, str(exc), exc.errors),
                              retry=True) from None
            except Exception as exc:  # noqa: BLE001 - the kernel refused (restored) or the disk
                raise Refused(AppliedError(target.assigned, target.revision, f"{type(exc).__name__}: {exc}"),
                              retry=True) from None
            self.applies["ok"] += 1
            log.info("fleet policy applied", extra={"policy": target.assigned, "revision": target.revision,
                                                    "seconds": round(time.monotonic() - started, 3)})
        self.applied = target
        if not keep_error:
            self.error = None

    # --- status ---------------------------------------------------------------------------------
    def node_status(self) -> NodeStatus:
        applied = self.applied
        stats = self.watcher.stats
        return NodeStatus(
            node=self.config.node,
            policy=applied.assigned if applied is not None and applied.policy is not None else None,
            revision=applied.revision if applied is not None else 0,
            assigned=self._last_target.assigned if self._last_target is not None else None,
            generation=self.controller.read().generation,
            health="error" if self.error is not None else "ok", time=time.time(),
            seen_revision=self.watcher.mirror.revision, error=self.error, resyncs=stats.lists,
            reconnects=stats.reconnects, last_outage=self.last_outage)

    def _publish(self) -> None:
        with self._publish_lock:
            self.status.publish(self.node_status())

