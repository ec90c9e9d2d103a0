"""`make install` and the service it makes, as far as this machine can run it.

systemd is not PID 1 here (and the tests must not boot one on the shared host), so each step a
systemd host would take is tested with a real equivalent:

- the staged install (`make install DESTDIR=...`): every file, mode and path the unit and the
  wrapper name; `make uninstall` takes them away and keeps config and state unless PURGE=1;
- an install into scratch directories whose installed `tidegate serve` runs as systemd would
  run it (Type=notify: $NOTIFY_SOCKET is a real unix datagram socket this test listens on), and
  whose unit `systemd-analyze verify` accepts;
- the restart semantics the unit relies on, with the checkout's daemon: READY=1 only once
  health is SERVING, WATCHDOG=1 pings, STOPPING=1 on SIGTERM, the data plane still attached and
  still dropping while no daemon runs, and READY=1 again from a restart that adopts it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from control.daemon_config import load_config
from control.rpc.api import pb2
from testbed import cleanup
from testbed.daemon import DaemonProcess
from testbed.netns import Namespace, linked_namespaces
from testbed.topology import remove_pin_root, unique_pin_root

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
INSTALL_TIMEOUT = 600.0  # a venv and the Python dependencies from the package index
START_TIMEOUT = 60.0
IFNAME, PEER_IFNAME = "tgs0", "tgs1"
ADDR, PEER_ADDR = "10.68.0.1", "10.68.0.2"
DROPPED_PORT, PASSED_PORT = 9, 7009
WAIT = 5.0


def make(target: str, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_SYSTEMCTL": "1"}  # never touch a real service of this host
    done = subprocess.run(["make", "-C", str(REPO), target, *(f"{k}={v}" for k, v in variables.items())],
                          env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False)
    assert done.returncode == 0, f"make {target}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def unit_settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


class NotifyListener:
    """The service manager's end of $NOTIFY_SOCKET: a unix datagram socket, read by a thread."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, list[str]]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._done.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode().split("\n")))

    def wait_for(self, line: str, after: int = 0, timeout: float = START_TIMEOUT) -> int:
        """Index of the first message from `after` on holding `line`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, (_, lines) in enumerate(self.messages[after:], after):
                if line in lines:
                    return index
            time.sleep(0.05)
        raise AssertionError(f"no {line} within {timeout:g} s; got {[m for _, m in self.messages]}")

    def close(self) -> None:
        self._done.set()
        self.sock.close()
        self._thread.join(2.0)


# --- the staged install ------------------------------------------------------------------------

def test_a_staged_install_puts_every_file_where_the_unit_says(tmp_path: Path) -> None:
    dest = tmp_path / "stage"
    make("install", DESTDIR=str(dest))
    lib, wrapper = dest / "usr/local/lib/tidegate", dest / "usr/local/bin/tidegate"
    unit, config = dest / "etc/systemd/system/tidegate.service", dest / "etc/tidegate/tidegate.yaml"

    settings = unit_settings(unit)
    assert re.search(r"@[A-Z]+@", unit.read_text()) is None  # every placeholder filled
    assert settings["Type"] == ["notify"] and settings["NotifyAccess"] == ["main"]
    assert settings["ExecStart"] == ["/usr/local/bin/tidegate serve -c /etc/tidegate/tidegate.yaml"]
    assert settings["Restart"] == ["on-failure"] and settings["KillMode"] == ["mixed"]
    assert settings["RuntimeDirectory"] == ["tidegate"] and settings["RuntimeDirectoryPreserve"] == ["yes"]
    assert settings["StateDirectory"] == ["tidegate"] and settings["ConfigurationDirectory"] == ["tidegate"]
    assert settings["StandardError"] == ["journal"]
    text = wrapper.read_text()
    assert stat.S_IMODE(wrapper.stat().st_mode) == 0o755
    assert "exec /usr/local/lib/tidegate/venv/bin/python -P -m control.cli" in text
    assert "PYTHONPATH=/usr/local/lib/tidegate" in text

    found = load_config(config)  # the shipped config is valid, and names the unit's directories
    assert str(found.listen.unix) == "/run/tidegate/tidegate.sock"
    assert str(found.state_dir) == "/var/lib/tidegate"
    assert not found.detach_on_exit  # restarts are hitless
    assert stat.S_IMODE((dest / "var/lib/tidegate").stat().st_mode) == 0o700
    for path in ("xdp/xdp_ingress.c", "xdp/include/tidegate_abi.h", "proto/tidegate/v1/tidegate.proto",
                 "control/rpc/gen/tidegate_pb2.py", "docs/operations.md", "venv/bin/python"):
        assert (lib / path).exists(), path
    gen = lib / "control/rpc/gen/tidegate_pb2.py"  # generated after the .proto was copied: not stale
    assert gen.stat().st_mtime >= (lib / "proto/tidegate/v1/tidegate.proto").stat().st_mtime
    compiled = list(lib.glob("control/**/__pycache__/*.pyc"))  # byte code naming installed paths
    assert compiled and not [p for p in compiled if str(dest).encode() in p.read_bytes()]

    config.write_text(config.read_text() + "# edited by the operator\n")
    make("install", DESTDIR=str(dest))  # a second install keeps the operator's config
    assert config.read_text().endswith("# edited by the operator\n")

    make("uninstall", DESTDIR=str(dest))
    assert not lib.exists() and not wrapper.exists() and not unit.exists()
    assert config.exists() and (dest / "var/lib/tidegate").is_dir()
    make("uninstall", DESTDIR=str(dest), PURGE="1")
    assert not config.exists() and not (dest / "var/lib/tidegate").exists()


# --- the installed daemon, under a notify socket -----------------------------------------------------

@pytest.fixture(scope="module")
def scratch_install() -> Iterator[Path]:
    """`make install` into scratch directories (no DESTDIR): a wrapper that runs from there."""
    root = Path(tempfile.mkdtemp(prefix="tgsvc-"))
    cleanup.install()
    cleanup.REGISTRY.add(f"dir:{root}", lambda: shutil.rmtree(root, ignore_errors=True))
    dirs = {"PREFIX": str(root / "usr"), "UNITDIR": str(root / "units"), "SYSCONFDIR": str(root / "etc"),
            "STATEDIR": str(root / "state")}
    try:
        make("install", **dirs)
        yield root
        make("uninstall", **dirs, PURGE="1")
        assert not (root / "usr/lib/tidegate").exists() and not (root / "units/tidegate.service").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        cleanup.REGISTRY.discard(f"dir:{root}")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is missing: install Debian's systemd package (scripts/setup.sh)")
def test_systemd_analyze_verify_accepts_the_installed_unit(scratch_install: Path) -> None:
    unit, root = scratch_install / "units/tidegate.service", scratch_install
    assert f"ExecStart={root}/usr/bin/tidegate serve -c {root}/etc/tidegate/tidegate.yaml" in unit.read_text()
    done = verify(unit)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
    broken = scratch_install / "units/broken.service"  # and it would say if the unit were wrong
    broken.write_text(unit.read_text().replace("Type=notify", "Type=notifyy"))
    assert "notifyy" in verify(broken).stderr


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.root
def test_the_installed_daemon_notifies_ready_then_stopping(scratch_install: Path, bpf_available: None,
                                                           tmp_path: Path) -> None:
    pin_root = unique_pin_root()
    cleanup.install()
    cleanup.REGISTRY.add(f"bpffs:{pin_root}", lambda: remove_pin_root(pin_root))
    sock = tmp_path / "tidegate.sock"
    config = tmp_path / "tidegate.yaml"
    config.write_text(yaml.safe_dump({"listen": {"unix": str(sock)}, "state_dir": str(tmp_path / "state"),
                                      "pin_root": str(pin_root), "detach_on_exit": True}))
    listener = NotifyListener(tmp_path)
    tidegate = str(scratch_install / "usr/bin/tidegate")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NOTIFY_SOCKET": listener.path}
    try:
        with Namespace(prefix="tgsvc") as ns:
            proc = subprocess.Popen([tidegate, "serve", "-c", str(config), "--netns", ns.name], env=env,
                                    cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                ready = listener.wait_for("READY=1")
                cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
                installed = f"{scratch_install}/usr/lib/tidegate/venv/bin/python"
                assert cmdline[0].decode() == installed  # the installed code runs, not the checkout
                status = subprocess.run([tidegate, "-s", str(sock), "-j", "status"], capture_output=True,
                                        text=True, timeout=60, check=False)
                assert status.returncode == 0 and '"health": "SERVING"' in status.stdout, status.stderr
                assert any(line.startswith("STATUS=serving: generation 0")
                           for line in listener.messages[ready][1])
                proc.terminate()
                assert proc.wait(START_TIMEOUT) == 0
                listener.wait_for("STOPPING=1", after=ready + 1, timeout=WAIT)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                stderr = proc.stderr.read() if proc.stderr else ""
            assert '"msg": "ready"' in stderr
    finally:
        listener.close()
        remove_pin_root(pin_root)
        cleanup.REGISTRY.discard(f"bpffs:{pin_root}")


# --- restart semantics with the checkout's daemon ---------------------------------------------------

def _udp_receiver(ns: Namespace, port: int) -> socket.socket:
    with ns.enter():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ADDR, port))
    s.settimeout(0.3)
    return s


def _delivered(peer: Namespace, receiver: socket.socket, port: int, count: int = 5) -> int:
    with peer.enter():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        for _ in range(count):
            s.sendto(b"tidegate", (ADDR, port))
    got = 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            receiver.recv(64)
            got += 1
        except TimeoutError:
            if got:
                break
    return got


def assert_enforced(peer: Namespace, dropped: socket.socket, passed: socket.socket) -> None:
    """The deny rule drops what goes to DROPPED_PORT; the rest arrives."""
    assert _delivered(peer, dropped, DROPPED_PORT) == 0, "the denied datagrams arrived"
    assert _delivered(peer, passed, PASSED_PORT) > 0, "the allowed datagrams did not arrive"


@pytest.mark.root
@pytest.mark.netns
def test_a_restart_keeps_enforcing_and_notifies_each_step(bpf_available: None, tmp_path: Path) -> None:
    listener = NotifyListener(tmp_path)
    env = {"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "400000"}
    try:
        with linked_namespaces("tgrst", IFNAME, PEER_IFNAME, ADDR, PEER_ADDR) as link:
            ns, peer = link.ns, link.peer
            dropped, passed = _udp_receiver(ns, DROPPED_PORT), _udp_receiver(ns, PASSED_PORT)
            with dropped, passed, DaemonProcess(ns, detach_on_exit=False, env=env) as d:
                first = listener.wait_for("READY=1")
                assert d.serving()
                ticks = listener.wait_for("WATCHDOG=1", after=first)
                listener.wait_for("WATCHDOG=1", after=ticks + 1, timeout=WAIT)
                d.interfaces.AttachInterface(pb2.AttachInterfaceRequest(
                    interface=pb2.Interface(name=IFNAME, mode=pb2.XDP_MODE_NATIVE)), timeout=START_TIMEOUT)
                rule = pb2.AclRule(id=1, action=pb2.ACTION_DENY, match=pb2.Match(
                    protocol=pb2.PROTOCOL_UDP, dport=pb2.PortRange(low=DROPPED_PORT, high=DROPPED_PORT)))
                generation = d.policy.ApplyPolicy(pb2.ApplyPolicyRequest(policy=pb2.Policy(acl=[rule])),
                                                  timeout=START_TIMEOUT).generation
                assert_enforced(peer, dropped, passed)

                stopped_at = len(listener.messages)
                assert d.stop(keep=True) == 0  # SIGTERM, as systemctl stop/restart sends it
                stopping = listener.wait_for("STOPPING=1", after=stopped_at, timeout=WAIT)
                assert any("data plane stays attached" in line for line in listener.messages[stopping][1])
                assert "prog/xdp" in ns.run(["ip", "-d", "link", "show", "dev", IFNAME]).stdout
                # no daemon runs: the kernel still judges by the policy
                assert_enforced(peer, dropped, passed)

                restarted_at = len(listener.messages)
                d.start()  # as Restart=on-failure or `systemctl restart` would
                listener.wait_for("READY=1", after=restarted_at)
                current = d.policy.GetPolicy(pb2.GetPolicyRequest(), timeout=START_TIMEOUT)
                assert current.generation == generation and [r.id for r in current.policy.acl] == [1]
                assert_enforced(peer, dropped, passed)
    finally:
        listener.close()
