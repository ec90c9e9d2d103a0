"""The notify protocol against real unix datagram sockets (a path and an abstract name), the
watchdog's timing, and the journal's priority prefix on log lines. The daemon's own
notifications are tests/integration/control/test_service_install.py's."""

from __future__ import annotations

import io
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.observe.logs import JsonFormatter, to_journal
from control.sd_notify import Watchdog, notify


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    s.bind(path)
    s.settimeout(2.0)
    with s:
        yield s, path


def test_a_notification_is_one_datagram_of_lines(listener: tuple[socket.socket, str]) -> None:
    s, path = listener
    assert notify("READY=1", "STATUS=serving", env={"NOTIFY_SOCKET": path})
    assert s.recv(4096) == b"READY=1\nSTATUS=serving"


def test_an_abstract_socket_is_written_with_an_at() -> None:
    name = f"tidegate-test-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(b"\0" + name.encode())
        s.settimeout(2.0)
        assert notify("STOPPING=1", env={"NOTIFY_SOCKET": f"@{name}"})
        assert s.recv(4096) == b"STOPPING=1"


def test_without_a_manager_nothing_is_sent_and_nothing_fails(tmp_path: Path) -> None:
    assert not notify("READY=1", env={})
    assert not notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert not notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1234"})


def test_the_watchdog_pings_at_half_the_timeout(listener: tuple[socket.socket, str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    s, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    dog = Watchdog.from_env(env)
    assert dog is not None and dog.interval == pytest.approx(0.1)
    started = time.monotonic()
    dog.start()
    try:
        pings = [s.recv(64) for _ in range(3)]
    finally:
        dog.stop()
    assert pings == [b"WATCHDOG=1"] * 3 and 0.25 <= time.monotonic() - started < 2.0
    assert Watchdog.from_env({**env, "WATCHDOG_PID": str(os.getpid() + 1)}) is None  # another's
    assert Watchdog.from_env({"NOTIFY_SOCKET": path}) is None


def test_lines_to_the_journal_carry_their_priority(tmp_path: Path) -> None:
    record = logging.LogRecord("control", logging.WARNING, __file__, 1, "careful", (), None)
    assert JsonFormatter(journal=True).format(record).startswith('<4>{"ts": ')
    assert JsonFormatter().format(record).startswith('{"ts": ')
    with open(tmp_path / "stream", "w") as f:
        st = os.fstat(f.fileno())
        assert to_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not to_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not to_journal(f, {})
    assert not to_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})
