"""The cleanup registry's leases: an on-disk copy of the live keys, for the sweep after SIGKILL."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from testbed import cleanup, orphans


def test_lease_files_follow_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cleanup, "LEASE_DIR", tmp_path)
    registry = cleanup.Registry()
    undone: list[str] = []
    registry.add("netns:tgexample", lambda: undone.append("netns"))
    registry.add("bpffs:/sys/fs/bpf/tidegate-example", lambda: undone.append("bpffs"))
    (owner,) = tmp_path.iterdir()
    assert sorted(p.read_text() for p in owner.iterdir()) == ["bpffs:/sys/fs/bpf/tidegate-example",
                                                                "netns:tgexample"]
    registry.discard("netns:tgexample")
    assert [p.read_text() for p in owner.iterdir()] == ["bpffs:/sys/fs/bpf/tidegate-example"]
    registry.undo_all()
    assert undone == ["bpffs"] and not owner.exists()


def test_start_time_names_one_process() -> None:
    me = cleanup.process_start_time(os.getpid())
    assert me is not None and me == cleanup.process_start_time(os.getpid())
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert cleanup.process_start_time(gone.pid) is None


def test_a_dead_owner_s_unknown_keys_are_dropped_and_a_foreign_directory_kept(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = tmp_path / f"{gone.pid}.12345"
    dead.mkdir()
    (dead / cleanup.lease_name("trafgen:1")).write_text("trafgen:1")
    (tmp_path / "not-an-owner").mkdir()
    swept = orphans.sweep(tmp_path)
    assert swept.unknown == ["trafgen:1"] and swept.owners == [dead.name]
    assert [p.name for p in tmp_path.iterdir()] == ["not-an-owner"]
