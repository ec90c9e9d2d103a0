"""Runs one packet through the loaded XDP program and reports what happened to it."""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass
from typing import Any

import pytest

from dataplane import abi
from dataplane.kernel.features import xdp_meta_supported

XDP_DROP = 1
XDP_PASS = 2
TC_ACT_OK = 0  # linux/pkt_cls.h
META_REFUSED = ("this kernel refuses bpf_xdp_adjust_meta to XDP programs: there is no metadata to check "
                "(TC classifies by itself, tested by the TC fallback tests)")


def require_meta() -> None:
    """Skips the rest of a test that checks what XDP hands to TC in metadata, where the kernel
    gives XDP no metadata (the checks before this call have run)."""
    if not xdp_meta_supported():
        pytest.skip(META_REFUSED)


@dataclass(frozen=True)
class Verdict:
    action: int
    reason: Any  # abi.Reason
    data: bytes
    meta: bytes

    def _meta(self) -> Any:
        """The struct tg_meta in front of the packet (all zero when there is none)."""
        require_meta()
        if len(self.meta) < ctypes.sizeof(abi.Meta):
            return abi.Meta()
        return abi.Meta.from_buffer_copy(self.meta[:ctypes.sizeof(abi.Meta)])

    @property
    def meta_mark(self) -> int:
        return int(self._meta().mark)

    @property
    def meta_vni(self) -> int:
        return int(self._meta().vni)

    @property
    def meta_flags(self) -> int:
        return int(self._meta().flags)


def judge(dp: Any, packet: bytes) -> Verdict:
    """The action, and the one reason counter that moved (every packet moves exactly one)."""
    before = dp.maps.reason_counts()
    result = dp.run_xdp(bytes(packet))
    after = dp.maps.reason_counts()
    moved = [r for r in after if after[r].packets != before[r].packets]
    assert len(moved) == 1, f"expected exactly one reason counter to move, got {moved}"
    assert after[moved[0]].packets - before[moved[0]].packets == 1
    return Verdict(result.action, moved[0], result.data, result.meta)


def judge_or_refused(dp: Any, packet: bytes) -> Verdict | None:
    """`judge`, for frames BPF_PROG_TEST_RUN may refuse: None when the kernel rejected the run.

    The kernel will not run XDP (or TC) on fewer than ETH_HLEN (14) bytes: it returns EINVAL
    before the program starts, so no counter may move. Any other error is re-raised.
    """
    before = dp.maps.reason_counts()
    try:
        return judge(dp, packet)
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise
    after = dp.maps.reason_counts()
    assert after == before, "a refused run moved a reason counter"
    return None


def action_for(reason: Any) -> int:
    """The XDP action a reason implies (the program's exit: drop reasons drop)."""
    return XDP_DROP if abi.is_drop(reason) else XDP_PASS
