"""Dataplane.verify keeps what its checks learnt (dataplane.kernel.verify.Memo) only while it holds:
with the memo warm from earlier checks, a program loaded since that uses the data plane's maps,
and a pin replaced or renamed over since, are still found; once undone, the check passes again."""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from dataplane.kernel.interface import Dataplane
from dataplane.kernel.libbpf import errno_of, libbpf
from dataplane.kernel.verify import Mismatch
from testbed import topology as t
from testbed.netns import Namespace, linked_namespaces

pytestmark = [pytest.mark.root, pytest.mark.netns]

BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_PSEUDO_MAP_FD = 1
MAP = "acl_rules"  # a map the data plane writes (any would do)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, src << 4 | dst, off, imm)


def load_user_of(map_fd: int) -> int:
    """A socket filter that references the map `map_fd` (r1 = &map; return 0): a program of
    someone else's that uses the data plane's map. Its fd; closing it unloads it."""
    insns = (_insn(0x18, dst=1, src=BPF_PSEUDO_MAP_FD, imm=map_fd) + _insn(0)  # ld_imm64 r1, map
             + _insn(0xB7) + _insn(0x95))  # r0 = 0; exit
    lib = ctypes.CDLL(libbpf()._name, use_errno=True)  # a handle of our own: its prototypes are ours
    lib.bpf_prog_load.restype = ctypes.c_int
    lib.bpf_prog_load.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                  ctypes.c_size_t, ctypes.c_void_p]
    fd = lib.bpf_prog_load(BPF_PROG_TYPE_SOCKET_FILTER, b"tg_test_user", b"GPL", insns, len(insns) // 8, None)
    if fd < 0:
        pytest.skip(f"this kernel refuses a socket filter: {os.strerror(errno_of(fd))}")
    return int(fd)


def new_map() -> int:
    fd = libbpf().bpf_map_create(BPF_MAP_TYPE_ARRAY, b"tg_test_other", 4, 4, 1, None)
    assert fd >= 0, os.strerror(errno_of(fd))
    return int(fd)


def pin(fd: int, path: Path) -> None:
    rc = libbpf().bpf_obj_pin(fd, str(path).encode())
    assert rc == 0, os.strerror(errno_of(rc))


@pytest.fixture
def plane(bpf_available: None) -> Iterator[tuple[Namespace, Dataplane]]:
    with linked_namespaces("tgvfy", "vf0", "vf1", "198.18.0.1", peer_namespace=False) as link, \
            t.tidegate(link.ns, "vf0") as dp:
        yield link.ns, dp


@dataclass(frozen=True)
class Foreign:
    """A map of someone else's, and the path of a pin of it that a test may make beside the
    pin directory (removed, with the map's fd, whatever the test did)."""

    path: Path  # the data plane's pin of MAP, which the tests replace
    fd: int
    spare: Path


@pytest.fixture
def foreign(plane: tuple[Namespace, Dataplane]) -> Iterator[Foreign]:
    path = plane[1].program.pin_dir / MAP
    other = Foreign(path, new_map(), path.parent.parent / f"tg_test_spare-{os.getpid()}")
    try:
        yield other
    finally:
        os.close(other.fd)
        other.spare.unlink(missing_ok=True)


@contextmanager
def passes_then(ns: Namespace, dp: Dataplane) -> Iterator[None]:
    """Checks twice (the memo warm), then lets the body change something behind its back."""
    with ns.enter():
        dp.verify()
        dp.verify()
    yield


def test_a_program_loaded_since_the_last_check_that_uses_our_maps_is_found(plane):
    ns, dp = plane
    with passes_then(ns, dp):
        fd = load_user_of(dp.program.map_fd(MAP))
    try:
        with ns.enter(), pytest.raises(Mismatch, match=r"\('tg_test_user'\) also uses maps"):
            dp.verify()
        with ns.enter(), pytest.raises(Mismatch, match="also uses maps"):
            dp.verify()  # and again: what was learnt of it is kept, and still says so
    finally:
        os.close(fd)
    with ns.enter():
        dp.verify()  # gone: passes


def test_a_pin_replaced_since_the_last_check_is_found(plane, foreign):
    ns, dp = plane
    path, other, spare = foreign.path, foreign.fd, foreign.spare
    with passes_then(ns, dp):
        path.unlink()
        pin(other, path)
    with ns.enter(), pytest.raises(Mismatch, match=f"{path} is map id .*which the attached programs"):
        dp.verify()
    path.unlink()
    pin(dp.program.map_fd(MAP), path)  # ours again
    with ns.enter():
        dp.verify()
    # renamed over: another pin moved onto the name (from outside the directory: a pin there
    # that is not in use is a mismatch of its own)
    pin(other, spare)
    with passes_then(ns, dp):
        os.rename(spare, path)
    with ns.enter(), pytest.raises(Mismatch, match=f"{path} is map id"):
        dp.verify()
    path.unlink()
    pin(dp.program.map_fd(MAP), path)
    with ns.enter():
        dp.verify()


def test_a_map_mounted_over_a_pin_since_the_last_check_is_found(plane, foreign):
    """No entry of the pin directory changes (no inotify event): the mount table does."""
    ns, dp = plane
    path = foreign.path
    pin(foreign.fd, foreign.spare)
    with passes_then(ns, dp):
        subprocess.run(["mount", "--bind", str(foreign.spare), str(path)], check=True)
    try:
        with ns.enter(), pytest.raises(Mismatch, match=f"{path} is map id .*which the attached programs"):
            dp.verify()
    finally:
        subprocess.run(["umount", str(path)], check=True)
    with ns.enter():
        dp.verify()
