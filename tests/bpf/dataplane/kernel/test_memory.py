"""Kernel memory of the data plane's maps, read from fdinfo (dataplane/kernel/memory.py)."""

from __future__ import annotations

import os

import pytest

from dataplane.kernel.memory import fd_memlock, map_fdinfo, map_memory
from dataplane.kernel.program import map_names

pytestmark = pytest.mark.root


def test_every_map_is_charged_and_seen_through_fdinfo(loaded_dataplane):
    program = loaded_dataplane.program
    charged = map_memory(program)
    assert list(charged) == list(map_names())
    assert all(size > 0 for size in charged.values()), charged
    held = map_fdinfo(os.getpid())
    for name in map_names():
        fd = program.table(name).map_fd
        assert fd in held, name
        assert int(held[fd]["memlock"]) == fd_memlock(fd)
    ids = {int(info["map_id"]) for info in held.values()}
    assert len(ids) >= len(map_names())  # each map once, whatever other fds the process holds
