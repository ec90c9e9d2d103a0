"""The systemd notify protocol (sd_notify(3)), spoken without libsystemd.

    notify("READY=1", "STATUS=serving")   # False (and nothing sent) outside a Type=notify unit
    watchdog = Watchdog.from_env()        # None unless the unit sets WatchdogSec=
    watchdog.start(); ...; watchdog.stop()

A service manager that wants to hear from its service puts the address of a datagram socket in
$NOTIFY_SOCKET: a file system path ("/run/systemd/notify"), or an abstract socket name written
with a leading "@". Each notification is one datagram of newline-separated VAR=value lines:
READY=1 once the service is up (here: health SERVING), STOPPING=1 when it begins to stop,
STATUS=... free text for `systemctl status`, WATCHDOG=1 to say "still alive" within
$WATCHDOG_USEC microseconds (the service pings at half that; $WATCHDOG_PID, when set, names the
process meant). Sending never fails the daemon: an error is logged once and dropped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

log = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


def _address(value: str) -> str | bytes:
    """$NOTIFY_SOCKET as a socket address: "@name" is the abstract socket "\\0name"."""
    return b"\0" + value[1:].encode() if value.startswith("@") else value


def notify(*lines: str, env: dict[str, str] | None = None) -> bool:
    """Sends the lines as one notification; False when there is no $NOTIFY_SOCKET (not run by a
    service manager that asked) or the datagram could not be sent."""
    target = (os.environ if env is None else env).get(NOTIFY_SOCKET, "")
    if not target or not lines:
        return False
    if not target.startswith(("/", "@")):  # vsock:... and other transports: not spoken here
        log.warning("NOTIFY_SOCKET is not a unix socket: not notifying", extra={"notify_socket": target})
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(_address(target))
            s.sendall("\n".join(lines).encode())
    except OSError as exc:
        log.warning("service manager notification failed",
                    extra={"notify_socket": target, "error": str(exc), "sent": list(lines)})
        return False
    return True


class Watchdog:
    """Sends WATCHDOG=1 every `interval` seconds from a thread of its own until stopped."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Watchdog | None:
        """The watchdog the service manager asked for ($WATCHDOG_USEC, for this process when
        $WATCHDOG_PID is set), pinging at half its timeout; None when none was asked for."""
        env = dict(os.environ if env is None else env)
        try:
            usec = int(env.get(WATCHDOG_USEC, "0"))
            pid = int(env.get(WATCHDOG_PID, str(os.getpid())))
        except ValueError:
            return None
        if usec <= 0 or pid != os.getpid() or not env.get(NOTIFY_SOCKET):
            return None
        return cls(usec / 2e6)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            notify("WATCHDOG=1")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 1.0)
            self._thread = None
