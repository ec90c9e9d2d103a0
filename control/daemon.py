"""`tidegate serve`: the control daemon.

Start-up: config -> the state directory's lock (control.daemon_lock: one daemon per state
directory; a second `serve` exits 2 naming the first's pid, having touched nothing) -> the
events exporter's file (if configured) -> restore the persisted state
(adopting pinned maps, so enforcement never stops across a restart; a policy event reader starts
per interface) -> listen (Unix socket 0600 by default; TCP only when configured, and then only
with TLS, mutual by default: control.daemon_config.Tls) -> the metrics endpoint (if configured)
-> health SERVING (NOT_SERVING instead while what the kernel runs is not what this daemon writes:
control.apply.reconcile verifies that on start and on every change, and health follows until a
change verifies again) -> READY=1 to a service manager ($NOTIFY_SOCKET: control.sd_notify; and
WATCHDOG=1 pings when it asks). A fleet member (config `fleet:`) starts watching etcd right after
the restore, before the socket opens (so no local policy write gets in first); it does not wait
for etcd: health "tidegate.fleet" says whether it is in sync (control.fleet.member).
SIGTERM/SIGINT: STOPPING=1, health NOT_SERVING, the fleet member stops (its status key goes),
event streams and traces end (traces unload their tracers), finish in-flight calls, stop; the
data plane stays attached unless `detach_on_exit` (a restarted daemon takes it over where it was).
A socket path where a daemon answers is refused, never taken over; on the way out only the socket
this process created is removed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import stat
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from control import daemon_lock
from control.apply.controller import Controller
from control.apply.netlink import NetlinkRouting
from control.apply.reconcile import Reconciler
from control.apply.state import StateStore
from control.daemon_config import DaemonConfig, TcpListen, load_config
from control.observe import logs, tracing
from control.observe.event_readers import EventExporter, EventPump, default_reader_factory
from control.observe.fanout import Fanout
from control.rpc import stream_service
from control.rpc.edit_priority import EditPriority
from control.rpc.reflection import enable_reflection
from control.rpc.request_guard import RequestGuard
from control.rpc.service import add_services
from control.sd_notify import Watchdog, notify

log = logging.getLogger(__name__)

WORKERS = 8  # unary calls; streams get threads of their own on top (see _create_server)
MAX_MESSAGE_BYTES = 256 << 20  # a 100k-rule policy is tens of MiB of protobuf
STOP_GRACE_SECONDS = 5.0
SOCKET_MODE = 0o600
SOCKET_DIR_MODE = 0o700
SOCKET_PROBE_SECONDS = 1.0
NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.reconciler = Reconciler(config.dataplane_settings(), NetlinkRouting())
        self.controller = Controller(StateStore(config.state_dir), self.reconciler)
        self.health = health.HealthServicer()
        self.server: grpc.Server | None = None
        self.tcp_port: int | None = None
        self.stopping = threading.Event()
        self.fanout = Fanout()
        self.pump = EventPump(self.fanout, default_reader_factory())
        self.reconciler.observers.append(self.pump)
        self.traces = tracing.TraceManager(tracing.default_backend())
        export = config.events.export
        self.exporter = EventExporter(export.path, self.fanout) if export is not None else None
        self.metrics: Any = None
        self.watchdog: Watchdog | None = None
        self.fleet: Any = None
        if config.fleet is not None:
            from control.fleet.member import FleetMember

            self.fleet = FleetMember(config.fleet, self.controller, on_health=self._fleet_health)
        self._socket_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we created
        self._health_names: list[str] = [""]
        self._serving = False
        self.controller.on_verified = self._verified

    def _fleet_health(self, in_sync: bool) -> None:
        from control.fleet.member import HEALTH_SERVICE

        serving = health_pb2.HealthCheckResponse
        self.health.set(HEALTH_SERVICE, serving.SERVING if in_sync else serving.NOT_SERVING)

    def start(self) -> None:
        if self.exporter is not None:
            try:  # a path it cannot open stops the start before the kernel is touched
                self.exporter.start()
            except OSError as exc:
                raise RuntimeError(f"events.export.path {self.exporter.path}: {exc.strerror or exc}: "
                                   "choose a writable file, or '-' for stdout") from exc
        notify("STATUS=restoring the persisted state (a data plane compile per interface)")
        self.controller.start()
        if self.fleet is not None:
            self.fleet.start()
        self.server, self.tcp_port = self._create_server()
        old_umask = os.umask(0o177)  # the socket is born 0600: no window for other users
        try:
            self.server.start()
        finally:
            os.umask(old_umask)
        self._check_socket()
        self._start_metrics()
        self._serving = True
        self._verified(dict(self.reconciler.mismatches))
        state = self.controller.read()
        log.info("ready", extra={"unix": str(self.config.listen.unix), "tcp_port": self.tcp_port,
                                 "generation": state.generation,
                                 "mismatches": sorted(self.reconciler.mismatches)})
        serving = "serving" if not self.reconciler.mismatches else (
            "NOT_SERVING: the kernel does not run what this daemon writes on "
            + ", ".join(sorted(self.reconciler.mismatches)))
        notify("READY=1", f"STATUS={serving}: generation {state.generation}, "
                          f"{len(state.interfaces)} interfaces")
        self.watchdog = Watchdog.from_env()
        if self.watchdog is not None:
            self.watchdog.start()

    def _verified(self, mismatches: dict[str, str]) -> None:
        """Health follows verification: NOT_SERVING while an interface's programs do not use
        the maps this daemon writes (the reasons are in the log and in the failing calls)."""
        if not self._serving or self.stopping.is_set():
            return
        status = (health_pb2.HealthCheckResponse.NOT_SERVING if mismatches
                  else health_pb2.HealthCheckResponse.SERVING)
        for name in self._health_names:
            self.health.set(name, status)

    def _start_metrics(self) -> None:
        listen = self.config.metrics.listen
        if listen is None:
            return
        from control.observe.metrics import MetricsServer, TidegateCollector

        collector = TidegateCollector(self.controller, self.pump, self.fanout, self.traces,
                                      top_rules=self.config.metrics.top_rules)
        self.metrics = MetricsServer(listen, collector)
        if self.fleet is not None:
            from control.fleet.metrics import FleetCollector

            self.metrics.registry.register(FleetCollector(self.fleet))
        try:
            self.metrics.start()
        except OSError as exc:
            self.metrics = None
            raise RuntimeError(f"metrics.listen {listen}: {exc.strerror or exc}: choose another "
                               "address or port, or set metrics.listen to null") from exc

    def _create_server(self) -> tuple[grpc.Server, int | None]:
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        # every open stream holds a worker: room for the most of them, and the unary calls beside
        workers = WORKERS + stream_service.MAX_WATCHERS + self.traces.max_active
        # RequestGuard: undecodable requests and impossible keys are INVALID_ARGUMENT, not INTERNAL
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options,
                             interceptors=[RequestGuard()])
        names = add_services(server, self.controller,
                             lambda names: stream_service.delivery(self.fanout, self.pump, names),
                             EditPriority(self.config.edit_priority))
        names += stream_service.add_stream_services(server, self.fanout, self.pump, self.traces,
                                                    self.stopping)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self._health_names = ["", *names]
        for name in self._health_names:  # SERVING once the whole start is done (_verified)
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        enable_reflection([*names, health.SERVICE_NAME], server)
        listen = self.config.listen
        if listen.unix is not None:
            listen.unix.parent.mkdir(parents=True, exist_ok=True, mode=SOCKET_DIR_MODE)
            remove_stale_socket(listen.unix)
            server.add_insecure_port(f"unix:{listen.unix}")
        port = add_tcp_listener(server, listen.tcp) if listen.tcp is not None else None
        return server, port

    def _check_socket(self) -> None:
        path = self.config.listen.unix
        if path is None:
            return
        st = path.stat()
        self._socket_id = (st.st_dev, st.st_ino)
        if stat.S_IMODE(st.st_mode) != SOCKET_MODE:
            os.chmod(path, SOCKET_MODE)

    def stop(self) -> None:
        """Safe after a failed or partial start."""
        keeps = "detaching the data plane" if self.config.detach_on_exit else "the data plane stays attached"
        notify("STOPPING=1", f"STATUS=stopping: {keeps}")
        self.stopping.set()
        self.health.enter_graceful_shutdown()
        if self.fleet is not None:
            self.fleet.stop()               # no apply after this; the status key is revoked
        self.traces.stop_all()              # their streams send TraceEnded and end
        self.fanout.close(kind="watch")     # event streams end with OK
        if self.server is not None:
            self.server.stop(STOP_GRACE_SECONDS).wait()
        self.traces.join_all()              # every tracer unloaded
        if self.metrics is not None:
            self.metrics.stop()
        self.reconciler.close(detach=self.config.detach_on_exit)  # stops the event readers first
        self.pump.close()
        if self.exporter is not None:
            self.exporter.close()           # after the readers: what they read is written
        self._remove_own_socket()
        if self.watchdog is not None:
            self.watchdog.stop()  # pinging until here: a stop that hangs is the manager's to end
        log.info("stopped", extra={"detached": self.config.detach_on_exit})

    def _remove_own_socket(self) -> None:
        """Only the socket this process created, and only while the path still is that socket."""
        path = self.config.listen.unix
        if path is None or self._socket_id is None:
            return
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._socket_id:
            path.unlink(missing_ok=True)


def remove_stale_socket(path: Path) -> None:
    """Removes the socket a daemon that died left at `path`; RuntimeError when a daemon answers
    there, or when the path is something other than a socket (neither is ours to remove)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise RuntimeError(f"listen.unix {path}: exists and is not a socket; remove it or choose "
                           "another path")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(SOCKET_PROBE_SECONDS)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # nobody listens: a socket of a daemon that died
            return
        except OSError:
            pass  # it exists and did not refuse: treat it as in use
    raise RuntimeError(f"listen.unix {path}: a daemon is listening there; give this one a socket of its "
                       "own (listen.unix), or stop that one first")


def add_tcp_listener(server: grpc.Server, tcp: TcpListen) -> int:
    """Adds the TLS listener (config validation has refused TCP without TLS); returns its port.

    With require_client_cert, a client without a certificate that client_ca signed (none, self
    signed, another CA's, expired) fails the TLS handshake: no request of it reaches a servicer."""
    tls = tcp.tls
    if tls is None:  # DaemonConfig refuses this; never fall back to plaintext
        raise RuntimeError("listen.tcp.tls: TCP is served only with TLS")
    try:
        key, chain, client_ca = tls.credentials_files()
    except OSError as exc:
        raise RuntimeError(f"listen.tcp.tls: {exc.filename}: {exc.strerror or exc}") from exc
    credentials = grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca,
                                              require_client_auth=tls.require_client_cert)
    if not tls.require_client_cert:
        log.warning("TLS without client certificates: anyone who reaches the port controls the data plane",
                    extra={"tcp": tcp.address})
    try:
        port = server.add_secure_port(tcp.address, credentials)
    except RuntimeError as exc:  # grpc raises when it cannot bind
        raise RuntimeError(f"listen.tcp.address {tcp.address}: cannot listen there ({exc}): choose "
                           "an address of this host (namespace) and a free port") from exc
    if port == 0:
        raise RuntimeError(f"listen.tcp.address {tcp.address}: cannot listen there: choose an address "
                           "of this host (namespace) and a free port")
    return int(port)


def enter_netns(name: str) -> None:
    """Moves the process into a named network namespace before any thread exists.

    Only the network namespace changes (unlike `ip netns exec`, which also remounts /sys and so
    hides bpffs, where the pins that make restarts hitless live). Threads started later inherit it.
    """
    path = Path(NETNS_DIR) / name
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:  # os.setns needs 3.12
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def serve(config_path: Path | None, netns: str | None = None) -> int:
    """Runs the daemon until SIGTERM/SIGINT/SIGHUP. AlreadyRunning (before anything is touched)
    when another daemon holds the state directory."""
    config = load_config(config_path)
    lock_fd = daemon_lock.acquire(config.state_dir)  # first: a second daemon stops here, having done nothing
    logs.setup(config.log_level)
    if netns or config.netns:
        enter_netns(netns or config.netns)  # type: ignore[arg-type]
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    daemon = Daemon(config)
    try:
        daemon.start()
        stop.wait()
    except BaseException as exc:
        notify(f"STATUS=failed: {exc}"[:1024])  # what `systemctl status` shows beside the exit
        raise
    finally:
        daemon.stop()
        os.close(lock_fd)  # the lock goes with it
    return 0
