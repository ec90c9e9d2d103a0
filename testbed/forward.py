"""A byte relay from the test process's namespace to a TCP port inside a namespace.

A daemon under test listens on TCP inside its own network namespace, which the test process
(and the gRPC channels it makes, whose sockets are opened by gRPC's own threads) cannot reach.
`TcpForwarder` listens on 127.0.0.1 here and, for each connection, opens one inside the
namespace and copies bytes both ways untouched, so TLS runs end to end between the client and
the daemon: what the client sees of a handshake is exactly what the daemon sent.

    with TcpForwarder(ns, "127.0.0.1", 50051) as fwd:
        channel = grpc.secure_channel(f"127.0.0.1:{fwd.port}", credentials)
"""

from __future__ import annotations

import contextlib
import socket
import threading

from testbed.netns import Namespace

ACCEPT_POLL = 0.2
CONNECT_TIMEOUT = 5.0
CHUNK = 1 << 16


class TcpForwarder:
    def __init__(self, ns: Namespace, host: str, port: int) -> None:
        self.ns, self.host, self.target_port = ns, host, port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(ACCEPT_POLL)
        self.port: int = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-forwarder", daemon=True)

    def __enter__(self) -> TcpForwarder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                with self.ns.enter():  # this thread only: the upstream socket is born in the namespace
                    upstream = socket.create_connection((self.host, self.target_port),
                                                        timeout=CONNECT_TIMEOUT)
            except OSError:
                client.close()  # nobody listens there: the client sees the connection closed
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(CHUNK):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)  # pass the end of stream on
