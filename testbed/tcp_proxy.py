"""A TCP forwarder that a test can cut and mend: a network partition without namespaces.

    with TcpProxy("127.0.0.1", etcd_port) as proxy:   # listens on 127.0.0.1:proxy.port
        ...                                         # clients connect to proxy.endpoint
        proxy.cut()                                 # open connections reset, new ones refused
        proxy.mend()                                # accepts again

Threads only, no root: for the tests of the etcd client and watcher that run without a
namespace (tests/integration/control/fleet/). The namespace tests cut a real link instead.
"""

from __future__ import annotations

import socket
import struct
import threading
from contextlib import suppress

CHUNK = 1 << 16


class TcpProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._open = threading.Event()
        self._open.set()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cut(self) -> None:
        """Every open connection is reset; new ones are closed at once until `mend`."""
        self._open.clear()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
                conn.close()

    def mend(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        with suppress(OSError):
            self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5.0)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with suppress(OSError):
            while data := src.recv(CHUNK):
                dst.sendall(data)
        for s in (src, dst):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
