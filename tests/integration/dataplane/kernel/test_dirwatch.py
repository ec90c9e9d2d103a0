"""DirWatch reports every change that can alter what a directory's paths open, once each, and
nothing when nothing happened: entries created, deleted, renamed in, out or over, attributes
changed, a bind mount over a file or an unmount, the directory removed and made again."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dataplane.kernel.dirwatch import DirWatch

pytestmark = [pytest.mark.root]


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, DirWatch]]:
    d = tmp_path / "pins"
    d.mkdir()
    (d / "a").write_text("a")
    (tmp_path / "outside").write_text("o")
    watch = DirWatch(d)
    try:
        yield d, watch
    finally:
        watch.close()
        subprocess.run(["umount", str(d / "a")], capture_output=True)


def _mount_over(d: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount")
    subprocess.run(["mount", "--bind", str(d.parent / "outside"), str(d / "a")], check=True)


CHANGES: dict[str, Callable[[Path], None]] = {
    "created": lambda d: (d / "b").write_text("b"),
    "deleted": lambda d: (d / "a").unlink(),
    "renamed within": lambda d: (d / "a").rename(d / "c"),
    "renamed out": lambda d: (d / "a").rename(d.parent / "moved"),
    "renamed over": lambda d: (d.parent / "outside").rename(d / "a"),
    "attributes": lambda d: os.chmod(d / "a", 0o600),
    "bind mount over a file": _mount_over,
    "removed and made again": lambda d: ((d / "a").unlink(), d.rmdir(), d.mkdir()),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_change_is_reported_once(watched, change):
    d, watch = watched
    assert watch.unchanged() and watch.unchanged()
    CHANGES[change](d)
    assert not watch.unchanged()
    assert watch.unchanged(), "reported once: from then on, relative to now"
    (d / "later").write_text("x")  # and the watch still works after it
    assert not watch.unchanged()


def test_an_unmount_is_reported(watched):
    d, watch = watched
    _mount_over(d)
    assert not watch.unchanged()
    subprocess.run(["umount", str(d / "a")], check=True)
    assert not watch.unchanged() and watch.unchanged()


def test_a_directory_that_cannot_be_watched_always_reports_a_change(tmp_path):
    watch = DirWatch(tmp_path / "missing")
    try:
        assert not watch.unchanged() and not watch.unchanged()
        (tmp_path / "missing").mkdir()
        assert not watch.unchanged()  # armed now
        assert watch.unchanged()
    finally:
        watch.close()
