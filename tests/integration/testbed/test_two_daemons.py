"""Two daemons on one host never touch each other's data plane (issue 10).

Each daemon runs as a real `tidegate serve` process (testbed.daemon) in a namespace of its own,
with the default settings except its own state directory and socket, and both with the same pin
root (as two daemons with the default pin_root share /sys/fs/bpf/tidegate). Both attach an
interface of the same name (flow_topology's fr0, the same ifindex too). Traffic is
sequence-numbered UDP (testbed.flows) counted at the receivers, and each daemon's own counters
must count exactly its own traffic.

Before pins were keyed by namespace and ifindex, the second attach adopted the first daemon's
maps and wrote its own policy into them: the first stopped denying, its counters took the
second's traffic, and the second's detach deleted the first's pins.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from control.policy.models import Policy
from control.rpc.api import pb2
from dataplane.kernel import bpf_info, warm
from dataplane.kernel.build_settings import DataplaneSettings
from dataplane.kernel.libbpf import errno_of, libbpf
from dataplane.kernel.owner import OWNER, read_owner
from dataplane.kernel.program import TC_EGRESS_FUNC, TC_EGRESS_PIN, TC_FUNC, TC_PIN, XDP_PIN
from testbed import flow_topology
from testbed.daemon import REPO_ROOT, RPC_TIMEOUT, DaemonProcess
from testbed.flow_checks import apply, attach, describe, stats, verdicts
from testbed.flows import Flow, FlowCount
from testbed.kernel_maps import policy_maps_digest
from testbed.netns import Namespace
from testbed.topology import pin_root_owned

pytestmark = [pytest.mark.root, pytest.mark.netns, pytest.mark.slow]

IFNAME = flow_topology.RECV_IF
DST = "10.61.0.1"
PORT_1, PORT_2 = 6001, 6002
DENY_A, DENY_B = 10, 20  # rule ids: A denies PORT_1, B denies PORT_2
RATE = 2000  # frames/s per topology
SETTLE = 0.4
SERVE_TIMEOUT = 60.0


def deny(rule_id: int, port: int) -> Policy:
    return Policy.model_validate({"acl": [{"id": rule_id, "action": "deny", "priority": 100,
                                           "match": {"protocol": "udp", "dport": port}}]})


POLICY_A, POLICY_B = deny(DENY_A, PORT_1), deny(DENY_B, PORT_2)
FLOWS_A = [Flow("a-denied", "10.62.0.7", DST, PORT_1, expect=False),
           Flow("a-allowed", "10.62.0.8", DST, PORT_2, expect=True)]
FLOWS_B = [Flow("b-denied", "10.63.0.7", DST, PORT_2, expect=False),
           Flow("b-allowed", "10.63.0.8", DST, PORT_1, expect=True)]


@pytest.fixture
def pin_root() -> Iterator[Path]:
    with pin_root_owned() as root:
        yield root


@pytest.fixture
def two(bpf_available: None) -> Iterator[tuple[flow_topology.FlowTopology, flow_topology.FlowTopology]]:
    with flow_topology.build([DST]) as first, flow_topology.build([DST]) as second:
        yield first, second


def attach_or_skip(daemon: DaemonProcess) -> None:
    try:
        attach(daemon, IFNAME)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "XDP" in (exc.details() or ""):
            pytest.skip(f"this kernel refuses native XDP on veth: {exc.details()}")
        raise


def detach(daemon: DaemonProcess) -> None:
    daemon.interfaces.DetachInterface(pb2.DetachInterfaceRequest(name=IFNAME), timeout=RPC_TIMEOUT)


def netns_inode(ns: Namespace) -> int:
    return os.stat(ns.path).st_ino


def assert_held(report: dict[str, FlowCount]) -> None:
    v = verdicts(report)
    assert v.allowed_sent > 0 and v.denied_sent > 0, describe(report)
    assert (v.allowed_lost, v.denied_arrived, v.duplicates) == (0, 0, 0), describe(report)


def sent(report: dict[str, FlowCount], name: str) -> int:
    return report[name].sent


def xdp_prog_id(ns: Namespace) -> int | None:
    with ns.enter():
        return bpf_info.xdp_prog_id(socket.if_nametoindex(IFNAME))


# --- 1. two daemons, same interface name, same pin root --------------------------------------------


def test_two_daemons_enforce_their_own_policies_and_detach_without_disturbing_each_other(two, pin_root):
    topo_a, topo_b = two
    with DaemonProcess(topo_a.receiver, pin_root=pin_root) as a, \
            DaemonProcess(topo_b.receiver, pin_root=pin_root) as b:
        attach_or_skip(a)
        apply(a, POLICY_A)
        before_a = stats(a)
        with topo_a.traffic(FLOWS_A, RATE) as traffic_a:
            time.sleep(SETTLE)
            attach_or_skip(b)  # the same name, the same pin root: its own directory
            apply(b, POLICY_B)
            dir_a, dir_b = a.pin_dir(IFNAME), b.pin_dir(IFNAME)
            assert dir_a is not None and dir_b is not None and dir_a != dir_b
            for d, daemon in ((dir_a, a), (dir_b, b)):
                owner = read_owner(d)
                assert owner is not None and owner.ifname == IFNAME
                assert (owner.netns_inode, owner.state_dir) == (netns_inode(daemon.ns), str(daemon.state_dir))
                assert owner.pid == daemon.proc.pid  # type: ignore[union-attr]
            before_b = stats(b)
            with topo_b.traffic(FLOWS_B, RATE) as traffic_b:
                time.sleep(SETTLE)
                # the same policy again: no change (the generation stays), but only once verified
                # that A's programs use A's maps (else FAILED_PRECONDITION, never "unchanged")
                assert apply(a, POLICY_A) == before_a.generation
                time.sleep(SETTLE)
                report_b = traffic_b.stop()
            moved_b = stats(b) - before_b
            detach(b)  # while A's traffic flows
            time.sleep(SETTLE)
            assert b.stop() == 0, b.log_tail()  # detach_on_exit: nothing of B remains
            assert not dir_b.exists() and dir_a.exists()
            time.sleep(SETTLE)
            report_a = traffic_a.stop()
        moved_a = stats(a) - before_a
        assert_held(report_a)
        assert_held(report_b)
        # each daemon's counters hold exactly its own traffic, not one packet of the other's
        assert moved_a.acl_rule(DENY_A) == sent(report_a, "a-denied")
        assert moved_a.interface(IFNAME) == sent(report_a, "a-denied") + sent(report_a, "a-allowed")
        assert moved_b.acl_rule(DENY_B) == sent(report_b, "b-denied")
        assert moved_b.interface(IFNAME) == sent(report_b, "b-denied") + sent(report_b, "b-allowed")
        assert a.serving()
        assert a.cli("status").returncode == 0
        detach(a)
        assert not dir_a.exists()
    assert not pin_root.exists()  # both removed their own, and the empty root went with the last


# --- 2. one daemon per state directory ----------------------------------------------------------


def serve(config: Path, ns: Namespace) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "control.cli", "serve", "-c", str(config), "--netns", ns.name]
    return subprocess.run(command, cwd=REPO_ROOT, env=DaemonProcess._env(), capture_output=True, text=True,
                          timeout=SERVE_TIMEOUT, check=False)


def test_a_second_serve_on_the_same_config_is_refused_and_removes_nothing(two, pin_root):
    topo, _ = two
    with DaemonProcess(topo.receiver, pin_root=pin_root, metrics_listen="127.0.0.1:9150") as a:
        attach_or_skip(a)
        apply(a, POLICY_A)
        pin_dir = a.pin_dir(IFNAME)
        assert pin_dir is not None
        pins, socket_inode = sorted(os.listdir(pin_dir)), a.socket.stat().st_ino
        owner = read_owner(pin_dir)

        done = serve(a.config_path, a.ns)
        assert done.returncode == 2, done.stderr
        assert f"the daemon with pid {a.proc.pid} is running with it" in done.stderr  # type: ignore[union-attr]
        assert str(a.state_dir) in done.stderr
        assert a.socket.stat().st_ino == socket_inode and a.serving()
        assert sorted(os.listdir(pin_dir)) == pins and read_owner(pin_dir) == owner
        assert a.cli("status").returncode == 0

        # another state directory but the same socket: refused too, the live socket kept
        config = yaml.safe_load(a.config_path.read_text())
        config["state_dir"] = str(a.workdir / "state-2")
        config.pop("metrics", None)
        second = a.workdir / "second.yaml"
        second.write_text(yaml.safe_dump(config))
        done = serve(second, a.ns)
        assert done.returncode == 1 and f"listen.unix {a.socket}: a daemon is listening there" in done.stderr
        assert a.socket.stat().st_ino == socket_inode and a.serving()
        assert sorted(os.listdir(pin_dir)) == pins
    assert not pin_root.exists()


# --- 3. foreign pins are never adopted ----------------------------------------------------------


def pin_again(src: Path, dst: Path) -> None:
    """A second pin of the object pinned at `src` (what a copied or left-over directory holds)."""
    lib = libbpf()
    fd = lib.bpf_obj_get(str(src).encode())
    if fd < 0:
        raise OSError(errno_of(fd), f"{src}")
    try:
        rc = lib.bpf_obj_pin(fd, str(dst).encode())
        if rc < 0:
            raise OSError(errno_of(rc), f"{dst}")
    finally:
        os.close(fd)


def refused_attach(daemon: DaemonProcess) -> str:
    with pytest.raises(grpc.RpcError) as info:
        attach(daemon, IFNAME)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
    return info.value.details() or ""


def test_pins_of_another_namespace_are_refused_also_when_their_daemon_is_gone(two, pin_root):
    topo_a, topo_b = two
    with DaemonProcess(topo_a.receiver, pin_root=pin_root, detach_on_exit=False) as a, \
            DaemonProcess(topo_b.receiver, pin_root=pin_root) as b:
        attach_or_skip(a)
        apply(a, POLICY_A)
        dir_a = a.pin_dir(IFNAME)
        assert dir_a is not None
        # A's pins, pinned again where B's fr0 (same name, same ifindex) would find its own
        ino_a, ino_b = netns_inode(a.ns), netns_inode(b.ns)
        assert dir_a.parent.name == f"netns-{ino_a}"
        foreign = pin_root / f"netns-{ino_b}" / dir_a.name
        foreign.mkdir(parents=True)
        os.symlink(os.readlink(dir_a / "owner"), foreign / "owner")
        for pin in dir_a.iterdir():
            if pin.name != "owner":
                pin_again(pin, foreign / pin.name)
        kernel_a = policy_maps_digest(dir_a)
        index = dir_a.name.split("-")[0].removeprefix("if")
        both = (f"belongs to {IFNAME} (ifindex {index}) of network namespace {ino_a}, "
                f"not to {IFNAME} (ifindex {index}) of network namespace {ino_b}")

        assert both in refused_attach(b)  # its daemon is alive
        a.kill()  # now its daemon is gone: the pins are left over, and still A's
        assert both in refused_attach(b)
        assert xdp_prog_id(b.ns) is None  # nothing attached on B's fr0
        assert policy_maps_digest(dir_a) == kernel_a  # not one entry of B's reached A's maps
        assert read_owner(foreign) == read_owner(dir_a)  # refused and left as it was
        assert b.serving()

        # A restarts and adopts its own pins, but the copy holds programs that use its maps:
        # the start says so (health NOT_SERVING), and so does every change until the copy is gone.
        # (Its build record removed, A compiles and attaches a program of its own: the copy's are
        # then another program. With the record A would take the pinned program itself, which
        # the copy pins too, and there would be no other program to find.)
        run_dir = DataplaneSettings(pin_root=pin_root).run_root / pin_root.name / dir_a.relative_to(pin_root)
        (run_dir / warm.RECORD).unlink()
        a.start(detach_on_exit=True, expect="NOT_SERVING")
        assert "NOT_SERVING" in a.cli("status").stdout
        with pytest.raises(grpc.RpcError) as info:
            apply(a, POLICY_A)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "also uses maps" in (info.value.details() or "")
        assert "nothing was written" in (info.value.details() or "")
        shutil.rmtree(foreign)  # the operator removes the copy
        assert apply(a, POLICY_A) > 0
        assert a.serving()
        attach(b, IFNAME)  # with the copy gone, B gets a directory of its own
        assert b.pin_dir(IFNAME) == foreign
        assert a.serving() and b.serving()


def test_a_second_daemon_in_the_same_namespace_cannot_take_the_interface(two, pin_root):
    topo, _ = two
    with DaemonProcess(topo.receiver, pin_root=pin_root) as a, \
            DaemonProcess(topo.receiver, pin_root=pin_root) as second:
        attach_or_skip(a)
        apply(a, POLICY_A)
        dir_a = a.pin_dir(IFNAME)
        assert dir_a is not None
        kernel_a = policy_maps_digest(dir_a)
        details = refused_attach(second)
        assert f"the process {a.proc.pid} (state directory {a.state_dir}) uses it" in details  # type: ignore[union-attr]
        assert policy_maps_digest(dir_a) == kernel_a
        assert read_owner(dir_a).pid == a.proc.pid  # type: ignore[union-attr]
        assert apply(a, POLICY_A) > 0 and a.serving()  # A's programs still use A's maps


# --- 4. what docs/multiple-daemons.md tells operators to run ------------------------------------


def bpftool(ns: Namespace, *args: str) -> object:
    """`nsenter --net=/run/netns/NS bpftool -j ARGS` (as the docs say), its JSON."""
    done = subprocess.run(["nsenter", f"--net={ns.path}", "bpftool", "-j", *args], capture_output=True,
                          text=True, timeout=30, check=True)
    return json.loads(done.stdout)


def test_bpftool_in_the_namespace_shows_the_pinned_programs_attached_over_the_pinned_maps(two, pin_root):
    if shutil.which("bpftool") is None or shutil.which("nsenter") is None:
        pytest.skip("bpftool (Debian: bpftool) or nsenter is not installed")
    topo, _ = two
    with DaemonProcess(topo.receiver, pin_root=pin_root) as a:
        attach_or_skip(a)
        pin_dir = a.pin_dir(IFNAME)
        assert pin_dir is not None
        net = bpftool(a.ns, "net", "show", "dev", IFNAME)
        assert isinstance(net, list)
        xdp = [p["id"] for entry in net for p in entry.get("xdp", [])]
        tc = {name: [p["id"] for entry in net for p in entry.get("tc", []) if p.get("name") == name]
              for name in (TC_FUNC, TC_EGRESS_FUNC)}
        programs = {XDP_PIN: xdp, TC_PIN: tc[TC_FUNC], TC_EGRESS_PIN: tc[TC_EGRESS_FUNC]}
        maps = {bpftool(a.ns, "map", "show", "pinned", str(p))["id"]  # type: ignore[index]
                for p in pin_dir.iterdir() if p.name != OWNER and p.name not in programs}
        for pin, attached in programs.items():
            prog = bpftool(a.ns, "prog", "show", "pinned", str(pin_dir / pin))
            assert isinstance(prog, dict)
            assert attached == [prog["id"]]
            assert set(prog["map_ids"]) <= maps
        # `ip netns exec` remounts /sys for the namespace: the pins cannot be seen from there
        hidden = a.ns.run(["ls", str(pin_dir)], check=False)  # Namespace.run is `ip netns exec`
        assert hidden.returncode != 0
