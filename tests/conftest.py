"""Shared fixtures. Root/BPF tests skip with a reason where the machine cannot run them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest


def _bpf_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to load BPF programs"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "BCC (Debian python3-bpfcc) is not importable: run `make setup`"
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    """Namespaces and pins of earlier runs killed by SIGKILL (which runs no cleanup) go first."""
    if os.geteuid() == 0:
        from testbed import orphans

        orphans.sweep()


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


@contextmanager
def _daemon_on_veth(ns: Any, ifnames: str | Sequence[str] = (), mode: str = "native",
                    **options: Any) -> Iterator[Any]:
    import grpc

    from control.rpc import convert
    from control.rpc.api import pb2
    from testbed.daemon import RPC_TIMEOUT, DaemonProcess

    names = [ifnames] if isinstance(ifnames, str) else list(ifnames)
    with DaemonProcess(ns, **options) as daemon:
        for name in names:
            request = pb2.AttachInterfaceRequest(interface=pb2.Interface(
                name=name, mode=convert.xdp_mode_to_proto(mode)))
            try:
                daemon.interfaces.AttachInterface(request, timeout=RPC_TIMEOUT)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    pytest.skip(f"this kernel refuses {mode} XDP on veth: {exc.details()}")
                raise
        yield daemon
    assert not daemon.running, "the daemon process outlived its block"


DaemonFactory = Callable[..., AbstractContextManager[Any]]


@pytest.fixture(scope="session")
def daemon_on_veth(bpf_available: None) -> DaemonFactory:
    """The one daemon harness: a factory of daemons attached to veths in namespaces, for the
    (module-scoped) fixtures of tests that drive a real daemon process.

        with daemon_on_veth(ns, "eth0", mode="native", capacities={...}) as daemon:

    gives a testbed.daemon.DaemonProcess managing namespace `ns` (keyword arguments other than
    `mode` are DaemonProcess's), SERVING, with each interface of the second argument (a name or
    a list; none by default) attached through AttachInterface in `mode` (native, generic or
    auto). The test is skipped where this kernel refuses that mode on veth. Leaving the block
    stops the daemon and removes whatever it left (programs, pins, routing, files). The
    namespaces are the caller's: testbed.netns.linked_namespaces, or a topology.
    """
    return _daemon_on_veth
