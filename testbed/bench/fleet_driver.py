"""The operator's half of the fleet benchmark, run inside the namespace where etcd listens.

    python -m testbed.bench.fleet_driver --endpoints 127.0.0.1:2379 --nodes n0,n1 --rules 10 --runs 20

Pushes `--runs` different policies of `--rules` rules (testbed.bench.rules, a new seed each
time) to the named policy the nodes follow, and for each push measures the time from the push
(just before the etcd transaction) until every node's status key reports the pushed revision,
read from a watch on the status keys opened before the push. Prints one JSON object:
{"samples": [seconds, ...], "bytes": [policy size, ...]}.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from control.fleet.etcd import EtcdClient, prefix_end
from control.fleet.keys import Layout, NodeStatus
from control.fleet.operator import assign, push, wait_converged
from testbed.bench import rules

POLICY = "bench"
PUSH_DEADLINE_S = 300.0


def _policy(n: int, seed: int) -> bytes:
    return bytes(rules.proto_policy(rules.ruleset(n, seed=seed)).SerializeToString())


def _converge(client: EtcdClient, layout: Layout, nodes: set[str], data: bytes) -> float:
    _, now = client.range_prefix(layout.statuses, keys_only=True)
    stream = client.watch(layout.statuses, prefix_end(layout.statuses), now + 1)
    timer = threading.Timer(PUSH_DEADLINE_S, stream.cancel)
    timer.start()
    try:
        started = time.perf_counter()
        revision = push(client, layout, POLICY, data)
        pending = set(nodes)
        for answer in stream:
            for event in answer.events:
                if event.type != 0:  # a DELETE: a node's lease ran out
                    continue
                status = NodeStatus.decode(bytes(event.kv.value))
                if status.error is not None and status.error.revision == revision:
                    raise RuntimeError(f"node {status.node} refused the policy: {status.error.message}")
                if status.revision >= revision:
                    pending.discard(status.node)
            if not pending:
                return time.perf_counter() - started
        raise RuntimeError(f"no convergence within {PUSH_DEADLINE_S:g} s: {sorted(pending)} did not report")
    finally:
        timer.cancel()
        stream.cancel()


def run(endpoints: list[str], nodes: list[str], n: int, runs: int) -> dict[str, Any]:
    client = EtcdClient(endpoints, timeout=30.0)
    layout = Layout()
    try:
        push(client, layout, POLICY, _policy(n, rules.SEED))
        assign(client, layout, nodes, POLICY)
        view = wait_converged(client, layout, PUSH_DEADLINE_S)
        if not view.converged:
            raise RuntimeError(f"the nodes did not converge on the first push: {view}")
        samples, sizes = [], []
        for rep in range(runs):
            data = _policy(n, rules.SEED + 1 + rep)
            sizes.append(len(data))
            samples.append(_converge(client, layout, set(nodes), data))
        return {"samples": samples, "bytes": sizes}
    finally:
        client.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoints", required=True)
    p.add_argument("--nodes", required=True)
    p.add_argument("--rules", type=int, required=True)
    p.add_argument("--runs", type=int, required=True)
    args = p.parse_args()
    print(json.dumps(run(args.endpoints.split(","), args.nodes.split(","), args.rules, args.runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
