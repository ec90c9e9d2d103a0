"""Runs one packet through the loaded XDP program and reports what happened to it."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from dataplane import abi

XDP_DROP = 1
XDP_PASS = 2


@dataclass(frozen=True)
class Verdict:
    action: int
    reason: Any  # abi.Reason
    data: bytes
    meta: bytes

    def _meta_field(self, index: int) -> int:
        if len(self.meta) < 16:
            return 0
        return struct.unpack("=IIII", self.meta[:16])[index]

    @property
    def meta_mark(self) -> int:
        return self._meta_field(1)

    @property
    def meta_vni(self) -> int:
        return self._meta_field(2)

    @property
    def meta_flags(self) -> int:
        return self._meta_field(3)


def judge(dp: Any, packet: bytes) -> Verdict:
    """The action, and the one reason counter that moved (every packet moves exactly one)."""
    before = dp.maps.reason_counts()
    result = dp.run_xdp(bytes(packet))
    after = dp.maps.reason_counts()
    moved = [r for r in after if after[r].packets != before[r].packets]
    assert len(moved) == 1, f"expected exactly one reason counter to move, got {moved}"
    assert after[moved[0]].packets - before[moved[0]].packets == 1
    return Verdict(result.action, moved[0], result.data, result.meta)
