"""The control daemon as a real process in a namespace, for tests and the demo.

    with DaemonProcess(topo.appliance) as daemon:           # config generated, SERVING awaited
        daemon.interfaces.AttachInterface(...)               # gRPC stubs over the unix socket
        daemon.cli("policy", "apply", "-f", "policy.yaml")  # the `tidegate` CLI, same socket
        daemon.kill(signal.SIGKILL)                          # a crash: files and pins stay
        daemon.start(detach_on_exit=False)                   # same state dir and pin root

The daemon is started as `python -m control.cli serve -c CFG --netns NAME` (or through
`control.daemon.serve` while the CLI module does not exist) and setns()s itself into the
namespace: `ip netns exec` would remount /sys and hide bpffs, where the pins live.

Everything it uses is its own: a work directory (config, socket, log, state dir) under /tmp and a
unique pin root under /sys/fs/bpf. `close()` (and leaving the `with`) stops the process (SIGTERM,
then SIGKILL) and removes all of that, and whatever a daemon that did not detach left in the
kernel: programs on the interfaces it managed, its policy routing, its pins. The same undo is
registered with testbed.cleanup, so a SIGTERM of the test run stops it too. `stop(keep=True)`
and `kill()` keep state dir and pin root for a restart.

Several daemons may share a pin root (as daemons with the default one do): pass the same
`pin_root` to each. The root is then the caller's (testbed.topology.pin_root_owned): each daemon
removes only the pin directories whose owner record names its state directory.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control.rpc.api import pb2_grpc
from dataplane.kernel.build_settings import DEFAULT_RUN_ROOT, DataplaneSettings
from dataplane.kernel.owner import owned_dirs
from testbed import cleanup
from testbed.netns import Namespace
from testbed.topology import remove_pin_root, unique_pin_root

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0  # a restart compiles the data plane once before SERVING (seconds; more under load)
STOP_TIMEOUT = 10.0   # the daemon's own grace for in-flight calls is 5 s
RPC_TIMEOUT = 60.0    # AttachInterface compiles a data plane
CLI_TIMEOUT = 120.0
HEALTH_POLL = 0.1
LOG_TAIL_LINES = 30
STATE_FILE = "desired-state.json"  # control.apply.state.STATE_FILE: read only to clean up after a crash


class DaemonError(RuntimeError):
    """The daemon did not start, or died; the message ends with the tail of its log."""


def cli_available() -> bool:
    """Whether `python -m control.cli` exists in this checkout."""
    return importlib.util.find_spec("control.cli") is not None


class DaemonProcess:
    """One daemon process managing `ns`; a context manager that starts and fully removes it."""

    def __init__(self, ns: Namespace, *, detach_on_exit: bool = True, pin_root: Path | None = None,
                 capacities: Mapping[str, int] | None = None, log_level: str = "info",
                 metrics_listen: str | None = None, events_export: str | Path | None = None,
                 listen_tcp: Mapping[str, Any] | None = None, fleet: Mapping[str, Any] | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        """`metrics_listen`: the config's metrics.listen (HOST:PORT, in the daemon's namespace);
        `listen_tcp`: listen.tcp ({address, tls: {cert, key, client_ca, ...}}, in its namespace);
        `events_export`: events.export.path (a file, or "-" for the daemon's log);
        `fleet`: the fleet: section ({endpoints, node, prefix, tls, ...}); the attribute of the
        same name may be changed between a stop and a start; `env`: more environment for the
        daemon process (e.g. NOTIFY_SOCKET, as systemd would set it)."""
        self.ns = ns
        self.detach_on_exit = detach_on_exit
        self.capacities = dict(capacities or {})
        self.log_level = log_level
        self.metrics_listen = metrics_listen
        self.listen_tcp = None if listen_tcp is None else dict(listen_tcp)
        self.events_export = None if events_export is None else str(events_export)
        self.fleet = None if fleet is None else dict(fleet)
        self.extra_env = dict(env or {})
        self.workdir = Path(tempfile.mkdtemp(prefix="tidegate-daemon-"))
        self.owns_pin_root = pin_root is None
        self.pin_root = pin_root or unique_pin_root()
        self.socket = self.workdir / "tidegate.sock"
        self.state_dir = self.workdir / "state"
        self.config_path = self.workdir / "tidegate.yaml"
        self.log_path = self.workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None
        self.health_poll = HEALTH_POLL  # how often start() asks whether the daemon is SERVING
        # stubs of the current connection (set by start)
        self.health: Any = None
        self.interfaces: Any = None
        self.policy: Any = None
        self.stats: Any = None
        self.events: Any = None
        self.trace: Any = None
        self._key = f"daemon:{self.workdir}"
        self._register()

    def _register(self) -> None:
        """The safety net: the registry stops the daemon and removes its pins if nothing else does."""
        cleanup.install()
        if self.owns_pin_root:
            cleanup.REGISTRY.add(f"bpffs:{self.pin_root}", lambda: remove_pin_root(self.pin_root))
        cleanup.REGISTRY.add(self._key, self._emergency_stop)

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"DaemonProcess(netns={self.ns.name!r}, pid={pid}, workdir={str(self.workdir)!r})"

    def __enter__(self) -> DaemonProcess:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- life cycle ------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, detach_on_exit: bool | None = None, timeout: float = START_TIMEOUT,
              expect: str = "SERVING") -> None:
        """Start (again, with the same state dir and pin root) and wait for health `expect`
        ("NOT_SERVING": a daemon that started but found the kernel not running what it writes)."""
        if self.running:
            raise DaemonError(f"{self!r} is already running")
        if detach_on_exit is not None:
            self.detach_on_exit = detach_on_exit
        self._register()  # again, in case close() ran before this start
        self.workdir.mkdir(mode=0o700, exist_ok=True)
        self._write_config()
        env = {**self._env(), **self.extra_env}
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self._command(), cwd=REPO_ROOT, env=env,
                                         stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
        log.info("daemon started", extra={"pid": self.proc.pid, "netns": self.ns.name,
                                          "detach_on_exit": self.detach_on_exit})
        self._connect()
        self._await_serving(timeout, expect)

    def stop(self, *, keep: bool = False, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`. Without `keep`, everything is removed after."""
        code = self._terminate(timeout)
        if not keep:
            self._remove_all()
        return code

    def kill(self, sig: int = signal.SIGKILL, timeout: float = STOP_TIMEOUT) -> int | None:
        """Deliver `sig` (a crash, by default) and wait for the exit; state and pins stay."""
        self._close_channel()
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode if self.proc else None

    def restart(self, *, detach_on_exit: bool | None = None) -> None:
        """A graceful stop keeping state dir and pin root, then a start."""
        self.stop(keep=True)
        self.start(detach_on_exit=detach_on_exit)

    def close(self) -> None:
        """Stop if running, then remove everything (idempotent)."""
        try:
            self.stop(keep=False)
        finally:
            cleanup.REGISTRY.discard(self._key)
            if self.owns_pin_root:
                cleanup.REGISTRY.discard(f"bpffs:{self.pin_root}")

    def _terminate(self, timeout: float) -> int | None:
        self._close_channel()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("daemon ignored SIGTERM for %.0f s: killing it", timeout)
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def _emergency_stop(self) -> None:
        """The cleanup registry's undo: a short grace, then everything removed."""
        self.stop(keep=False, timeout=2.0)

    # --- config and process ---------------------------------------------------------------------
    def _write_config(self) -> None:
        listen: dict[str, Any] = {"unix": str(self.socket)}
        if self.listen_tcp is not None:
            listen["tcp"] = self.listen_tcp
        config: dict[str, Any] = {
            "listen": listen,
            "state_dir": str(self.state_dir),
            "pin_root": str(self.pin_root),
            "detach_on_exit": self.detach_on_exit,
            "log_level": self.log_level,
        }
        if self.capacities:
            config["capacities"] = self.capacities
        if self.metrics_listen is not None:
            config["metrics"] = {"listen": self.metrics_listen}
        if self.events_export is not None:
            config["events"] = {"export": {"path": self.events_export}}
        if self.fleet is not None:
            config["fleet"] = self.fleet
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def _command(self) -> list[str]:
        if cli_available():
            return [sys.executable, "-m", "control.cli", "serve", "-c", str(self.config_path),
                    "--netns", self.ns.name]
        code = ("import sys; from pathlib import Path; from control.daemon import serve; "
                "sys.exit(serve(Path(sys.argv[1]), sys.argv[2]))")
        return [sys.executable, "-c", code, str(self.config_path), self.ns.name]

    @staticmethod
    def _env() -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _connect(self) -> None:
        self._close_channel()
        # A new channel per start: an old one may sit in reconnect back-off after a crash.
        self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.interfaces = pb2_grpc.InterfaceServiceStub(self.channel)
        self.policy = pb2_grpc.PolicyServiceStub(self.channel)
        self.stats = pb2_grpc.StatsServiceStub(self.channel)
        self.events = pb2_grpc.EventServiceStub(self.channel)
        self.trace = pb2_grpc.TraceServiceStub(self.channel)

    def _close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def _await_serving(self, timeout: float, expect: str = "SERVING") -> None:
        want = health_pb2.HealthCheckResponse.ServingStatus.Value(expect)
        deadline = time.monotonic() + timeout
        request = health_pb2.HealthCheckRequest(service="")
        while time.monotonic() < deadline:
            if not self.running:
                code = self.proc.returncode if self.proc else "?"
                raise DaemonError(f"the daemon exited with status {code} before serving\n{self.log_tail()}")
            try:
                status = self.health.Check(request, timeout=1.0).status
            except grpc.RpcError:
                status = None
                # a channel that failed waits out its reconnect back-off (a second and more)
                # before it tries again: a fresh one sees the daemon as soon as it listens
                self._connect()
            if status == want:
                log.info("daemon started", extra={"socket": str(self.socket), "health": expect})
                return
            time.sleep(self.health_poll)
        raise DaemonError(f"the daemon was not {expect} after {timeout:.0f} s\n{self.log_tail()}")

    # --- clients ----------------------------------------------------------------------------------
    def serving(self) -> bool:
        """Health says SERVING right now."""
        if self.channel is None:
            return False
        try:
            status = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5.0).status
        except grpc.RpcError:
            return False
        return bool(status == health_pb2.HealthCheckResponse.SERVING)

    def cli(self, *args: str, as_json: bool = False, stdin: str | None = None,
            timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """`tidegate -s SOCKET [-j] ARGS...` (`stdin`: its input, for `-f -`); the exit status is
        the caller's to judge."""
        if not cli_available():
            raise DaemonError("control/cli/main.py does not exist in this checkout: use the gRPC stubs")
        flags = ["-s", str(self.socket), *(["-j"] if as_json else [])]
        cmd = [sys.executable, "-m", "control.cli", *flags, *args]
        return subprocess.run(cmd, cwd=REPO_ROOT, env=self._env(), input=stdin, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def cli_popen(self, *args: str, as_json: bool = False) -> subprocess.Popen[str]:
        """`tidegate -s SOCKET [-j] ARGS...` left running (events, top, trace), stdout and stderr
        piped as text; the caller stops it (SIGINT is how a user would)."""
        if not cli_available():
            raise DaemonError("control/cli/main.py does not exist in this checkout: use the gRPC stubs")
        flags = ["-s", str(self.socket), *(["-j"] if as_json else [])]
        return subprocess.Popen([sys.executable, "-m", "control.cli", *flags, *args], cwd=REPO_ROOT,
                                env=self._env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no daemon log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- removal ----------------------------------------------------------------------------------
    def _remove_all(self) -> None:
        """Whatever the daemon left (it may have been killed or told not to detach), then files."""
        try:
            if self._left_something():
                self._scrub_kernel()
        finally:
            run_dir = DataplaneSettings(pin_root=self.pin_root).run_root / self.pin_root.name
            if self.owns_pin_root:
                remove_pin_root(self.pin_root)
                shutil.rmtree(run_dir, ignore_errors=True)
            else:  # a shared root: only this daemon's directories (their namespace may be gone)
                for pin_dir in self._own_pin_dirs():
                    shutil.rmtree(pin_dir, ignore_errors=True)
                    shutil.rmtree(run_dir / pin_dir.relative_to(self.pin_root), ignore_errors=True)
            for parent in (DEFAULT_RUN_ROOT,):
                try:
                    parent.rmdir()  # only if no other pin root has markers there
                except OSError:
                    pass
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _own_pin_dirs(self) -> list[Path]:
        return [d for d, record in owned_dirs(self.pin_root)
                if record is not None and record.state_dir == str(self.state_dir)]

    def _left_something(self) -> bool:
        """False only after a clean exit of a daemon that detached on exit (and removed its pins)."""
        clean = self.proc is None or (self.detach_on_exit and self.proc.returncode == 0)
        return not clean or bool(self._own_pin_dirs())

    def managed_interfaces(self) -> list[str]:
        """Interfaces the daemon had loaded: its persisted state and its pin directories."""
        names: set[str] = set()
        try:
            data = json.loads((self.state_dir / STATE_FILE).read_text())
            names |= {i["name"] for i in data.get("interfaces", [])}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            pass
        names |= {record.ifname for _, record in owned_dirs(self.pin_root)
                  if record is not None and record.state_dir == str(self.state_dir)}
        return sorted(names)

    def pin_dir(self, ifname: str) -> Path | None:
        """The pin directory of its interface `ifname` (keyed by namespace and ifindex), if any."""
        found = [d for d, record in owned_dirs(self.pin_root) if record is not None
                 and record.state_dir == str(self.state_dir) and record.ifname == ifname]
        return found[0] if len(found) == 1 else None

    def _scrub_kernel(self) -> None:
        """Detach programs and remove Tidegate's routing in the namespace (idempotent)."""
        names = self.managed_interfaces()
        if not self.ns.exists:
            return  # its interfaces, programs and rules went with it
        from control.apply.netlink import NetlinkRouting
        from dataplane.kernel.interface import detach_interface

        settings = DataplaneSettings(pin_root=self.pin_root)
        with self.ns.enter():
            for name in names:
                detach_interface(name, settings)
            NetlinkRouting().remove_all()
