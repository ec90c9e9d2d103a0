"""A full memory barrier for user space, between stores into a map's memory mapping and the loads
that follow (dataplane.match.table: the prefilter's bits, then the readers' marks).

A store to a mapped BPF array is a plain store: x86 lets a later load pass it, so a writer that
stores bits and then reads the readers' marks could read marks older than its own bits (the
Dekker pattern needs a full barrier on both sides; the programs' side is the atomic add that
marks a search). Python has no barrier of its own: this calls libatomic's
atomic_thread_fence(memory_order_seq_cst), an mfence on x86 (Debian's libatomic1, which
scripts/setup.sh installs).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any

_SEQ_CST = 5  # memory_order_seq_cst (C11 <stdatomic.h>)
_LIBRARIES = ("libatomic.so.1", ctypes.util.find_library("atomic"))


@cache
def _atomic_thread_fence() -> Any:
    for name in _LIBRARIES:
        if not name:
            continue
        try:
            fn = ctypes.CDLL(name).atomic_thread_fence
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], None
        return fn
    raise OSError("libatomic (Debian's libatomic1) is needed for a memory barrier and was not found: "
                  "install it (scripts/setup.sh does)")


def full_fence() -> None:
    """Every store before it is visible to every CPU before any load after it."""
    _atomic_thread_fence()(_SEQ_CST)
