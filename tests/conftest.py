"""Shared fixtures. Root/BPF tests skip with a reason where the machine cannot run them."""

from __future__ import annotations

import os

import pytest


def _bpf_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to load BPF programs"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "BCC (Debian python3-bpfcc) is not importable: run `make setup`"
    return None


@pytest.fixture(scope="session")
def bpf_available() -> None:
    reason = _bpf_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def loaded_dataplane(bpf_available):  # noqa: ANN001
    """One compiled, unpinned data plane for the whole session (BCC compiles take seconds)."""
    from dataplane.kernel.interface import Dataplane

    dp = Dataplane.load()
    yield dp
    dp.close()
