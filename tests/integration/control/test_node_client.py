"""A client in another language against a real daemon: Node.js with @grpc/grpc-js, stubs loaded
from proto/ by @grpc/proto-loader (tests/node/client.js).

- a bad AddAclRule: grpc-js sees INVALID_ARGUMENT with the usual message, and protobufjs decodes
  the google.rpc.Status of the grpc-status-details-bin trailer (with the googleapis protos that
  googleapis-common-protos ships) into a BadRequest naming the field;
- grpc-js-reflection-client, told to speak grpc.reflection.v1 only, lists the services and the
  methods of PolicyService and of the v1 reflection service itself.

Skipped, saying why, when node or tests/node/node_modules (scripts/setup.sh runs `npm ci`) is
missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.rpc import status_pb2

from testbed.daemon import DaemonProcess
from testbed.netns import Namespace

pytestmark = [pytest.mark.root, pytest.mark.slow]

NODE_DIR = Path(__file__).resolve().parents[2] / "node"
NODE_DEPS = ("@grpc/grpc-js", "@grpc/proto-loader", "grpc-js-reflection-client", "protobufjs")
# the directory holding google/rpc/status.proto: googleapis-common-protos ships the .proto files
RPC_PROTOS = Path(status_pb2.__file__).resolve().parents[2]
NODE_TIMEOUT = 60.0


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (scripts/setup.sh installs Debian's nodejs and npm)"
    absent = [d for d in NODE_DEPS if not (NODE_DIR / "node_modules" / d / "package.json").exists()]
    if absent:
        return f"{', '.join(absent)} missing under {NODE_DIR}/node_modules: run `npm ci --prefix {NODE_DIR}`"
    if not (RPC_PROTOS / "google" / "rpc" / "error_details.proto").exists():
        return f"no google/rpc/*.proto under {RPC_PROTOS} (googleapis-common-protos)"
    return None


@pytest.fixture(scope="module")
def daemon(bpf_available: None) -> Iterator[DaemonProcess]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    with Namespace(prefix="tgnode") as ns, DaemonProcess(ns, detach_on_exit=True) as d:
        yield d


def node(*args: str) -> Any:
    done = subprocess.run(["node", str(NODE_DIR / "client.js"), *args], capture_output=True, text=True,
                          timeout=NODE_TIMEOUT, check=False)
    assert done.stdout.strip(), f"node client.js {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
    return done.returncode, json.loads(done.stdout)


def test_grpc_js_decodes_the_bad_request_of_an_invalid_argument(daemon: DaemonProcess) -> None:
    code, out = node("bad-request", str(daemon.socket), str(RPC_PROTOS))
    assert code == 0, out
    assert out["codeName"] == "INVALID_ARGUMENT" and out["code"] == 3
    assert out["details"].startswith("rule.match.dport.low: Input should be less than or equal to 65535")
    status = out["status"]
    assert status is not None, "no grpc-status-details-bin trailer"
    assert status["code"] == 3 and status["message"] == out["details"]
    [detail] = status["details"]
    assert detail["type"] == "google.rpc.BadRequest"
    fields = [v["field"] for v in detail["field_violations"]]
    assert fields[0] == "rule.match.dport.low"
    assert detail["field_violations"][0]["description"].startswith("Input should be less than or equal to")


def test_a_v1_reflection_client_lists_and_describes_the_services(daemon: DaemonProcess) -> None:
    code, out = node("reflect", str(daemon.socket))
    assert code == 0, out
    assert {"tidegate.v1.PolicyService", "tidegate.v1.InterfaceService", "tidegate.v1.StatsService",
            "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= set(out["services"])
    assert {"ApplyPolicy", "GetPolicy", "AddAclRule", "ListAclRules"} <= set(out["methods"])
    assert out["reflection"] == ["ServerReflectionInfo"]
