"""Real etcd members (Debian's etcd-server) for tests and benchmarks, and etcdctl against them.

    with EtcdCluster(3, ns=hub) as cluster:       # 3 members inside namespace `hub`, started
        cluster.endpoints("10.77.0.1")            # ["10.77.0.1:2379", "10.77.0.1:12379", ...]
        cluster.leader().kill()                   # lose the leader; .start() brings it back
        cluster.etcdctl("compact", "42")

Each member has its own data directory (under /dev/shm: etcd fsyncs every write) and ports:
inside a namespace this process owns, fixed ports (2379 + 10000 * i for clients, 2380 + ...
for peers) cannot collide with anyone; on the host (`ns=None`) free ports are picked. Every
member is registered with testbed.cleanup, so it is killed and its data removed even when a
test fails or the run is stopped; `close()` (leaving the `with`) does the same.

With `tls` (a ServerTls) clients must use https and show a certificate the CA signed
(--client-cert-auth); members talk to each other in plain HTTP on loopback.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from testbed import cleanup
from testbed.netns import Namespace

log = logging.getLogger(__name__)

ETCD, ETCDCTL = "etcd", "etcdctl"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
DATA_ROOT = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
CLIENT_PORT, PEER_PORT, PORT_STEP = 2379, 2380, 10000


def etcd_available() -> str | None:
    """None, or why etcd cannot run here (for a skip reason)."""
    missing = [tool for tool in (ETCD, ETCDCTL) if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (Debian etcd-server, etcd-client: scripts/setup.sh)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ServerTls:
    """Files for etcd's client TLS: its certificate and key, and the CA of client certificates;
    `client` is a certificate and key etcdctl uses."""

    cert: Path
    key: Path
    ca: Path
    client: tuple[Path, Path]


class EtcdMember:
    def __init__(self, cluster: EtcdCluster, index: int, client_port: int, peer_port: int) -> None:
        self.cluster, self.index = cluster, index
        self.name = f"m{index}"
        self.client_port, self.peer_port = client_port, peer_port
        self.data_dir = cluster.workdir / self.name
        self.log_path = cluster.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def endpoint(self, host: str | None = None) -> str:
        return f"{host or self.cluster.host}:{self.client_port}"

    def _command(self, state: str) -> list[str]:
        c = self.cluster
        scheme = "https" if c.tls else "http"
        listen = "0.0.0.0" if c.ns is not None else c.host
        cmd = [ETCD, "--name", self.name, "--data-dir", str(self.data_dir),
               "--listen-client-urls", f"{scheme}://{listen}:{self.client_port}",
               "--advertise-client-urls", f"{scheme}://{c.host}:{self.client_port}",
               "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
               "--initial-cluster", ",".join(f"{m.name}={m.peer_url}" for m in c.members),
               "--initial-cluster-state", state, "--initial-cluster-token", c.token,
               # elections in well under a second: a lost leader is replaced quickly
               "--heartbeat-interval", "50", "--election-timeout", "500",
               "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
               *c.extra_args]
        if c.tls is not None:
            cmd += ["--cert-file", str(c.tls.cert), "--key-file", str(c.tls.key),
                    "--trusted-ca-file", str(c.tls.ca), "--client-cert-auth"]
        return cmd

    def start(self) -> None:
        if self.running:
            return
        state = "existing" if (self.data_dir / "member").exists() else "new"
        with open(self.log_path, "ab") as logf:
            cmd = self._command(state)
            if self.cluster.ns is not None:
                cmd = ["ip", "netns", "exec", self.cluster.ns.name, *cmd]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        log.info("etcd member started", extra={"member": self.name, "pid": self.proc.pid})

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop (SIGTERM) or crash (SIGKILL); the data directory stays for a restart."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def status(self) -> dict[str, object] | None:
        """`etcdctl endpoint status` of this member (None if it does not answer)."""
        done = self.cluster.etcdctl("endpoint", "status", "-w", "json", endpoints=[self.endpoint()],
                                    check=False, timeout=5.0)
        if done.returncode != 0:
            return None
        rows = json.loads(done.stdout)
        return rows[0]["Status"] if rows else None  # type: ignore[no-any-return]

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class EtcdCluster:
    def __init__(self, size: int = 1, *, ns: Namespace | None = None, host: str = "127.0.0.1",
                 tls: ServerTls | None = None, extra_args: Sequence[str] = (), base_port: int = 0) -> None:
        """`host`: the address clients use (inside `ns`, any address of it); `base_port`: a
        fixed client port for member 0 inside a namespace (default 2379)."""
        self.ns, self.host, self.tls = ns, host, tls
        self.extra_args = list(extra_args)
        self.workdir = Path(tempfile.mkdtemp(prefix="tidegate-etcd-", dir=DATA_ROOT))
        self.token = self.workdir.name
        self.members: list[EtcdMember] = []
        for i in range(size):
            if ns is not None:
                base = base_port or CLIENT_PORT
                client, peer = base + PORT_STEP * i, base + 1 + PORT_STEP * i
            else:
                client, peer = free_port(), free_port()
            self.members.append(EtcdMember(self, i, client, peer))
        self._key = f"etcd:{self.workdir}"
        cleanup.install()
        cleanup.REGISTRY.add(self._key, self.close)

    def __enter__(self) -> EtcdCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def endpoints(self, host: str | None = None) -> list[str]:
        scheme = "https://" if self.tls else ""
        return [scheme + m.endpoint(host) for m in self.members]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Starts every member that is not running and waits until the cluster answers."""
        for member in self.members:
            member.start()
        self.wait_ready(timeout)

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def close(self) -> None:
        """Kill every member and remove the data (idempotent)."""
        try:
            for member in self.members:
                member.kill()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
            cleanup.REGISTRY.discard(self._key)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        running = [m for m in self.members if m.running]
        while time.monotonic() < deadline:
            dead = [m for m in self.members if m.proc is not None and m.proc.poll() is not None
                    and m in running]
            if dead:
                raise RuntimeError(f"etcd member {dead[0].name} exited:\n{dead[0].log_tail()}")
            done = self.etcdctl("endpoint", "health", endpoints=[m.endpoint() for m in running],
                                check=False, timeout=5.0)
            if done.returncode == 0:
                return
            time.sleep(0.2)
        tails = "\n".join(f"--- {m.name}\n{m.log_tail()}" for m in self.members)
        raise RuntimeError(f"etcd did not become healthy within {timeout:.0f} s\n{tails}")

    def leader(self) -> EtcdMember:
        """The member that leads now (asks each running member)."""
        ids: dict[int, EtcdMember] = {}
        leader_id = None
        for member in self.members:
            if not member.running:
                continue
            status = member.status()
            if status is None:
                continue
            ids[int(status["header"]["member_id"])] = member  # type: ignore[index]
            leader_id = int(status["leader"])  # type: ignore[call-overload]
        if leader_id is None or leader_id not in ids:
            raise RuntimeError("no etcd member reports a running leader")
        return ids[leader_id]

    def etcdctl(self, *args: str, endpoints: Sequence[str] | None = None, check: bool = True,
                timeout: float = 30.0, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """etcdctl (API v3) against the cluster, run where its members are."""
        scheme = "https://" if self.tls else "http://"
        eps = [e if "://" in e else scheme + e for e in (endpoints or [m.endpoint() for m in self.members])]
        cmd = [ETCDCTL, f"--endpoints={','.join(eps)}", "--dial-timeout=3s", "--command-timeout=10s"]
        if self.tls is not None:
            cert, key = self.tls.client
            cmd += [f"--cacert={self.tls.ca}", f"--cert={cert}", f"--key={key}"]
        if self.ns is not None:
            cmd = ["ip", "netns", "exec", self.ns.name, *cmd]
        done = subprocess.run([*cmd, *args], input=input, capture_output=True, timeout=timeout,
                              check=False, env=dict(os.environ, ETCDCTL_API="3"))
        out = subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(errors="replace"),
                                          done.stderr.decode(errors="replace"))
        if check and out.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
        return out

    def revision(self) -> int:
        """The store's current revision."""
        done = self.etcdctl("get", "--prefix", "/", "--limit=1", "-w", "json")
        return int(json.loads(done.stdout)["header"]["revision"])

    def compact(self, revision: int | None = None) -> int:
        """Compacts the history up to `revision` (default: now); returns it."""
        revision = revision or self.revision()
        self.etcdctl("compact", str(revision), "--physical")
        return revision
