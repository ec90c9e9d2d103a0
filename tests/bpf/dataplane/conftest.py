"""Fixtures for BPF_PROG_TEST_RUN tests: a data plane reset to a known state per test."""

from __future__ import annotations

import pytest

from dataplane.map_config import RuntimeConfig

# A locally administered MAC for the (virtual) interface the programs believe they run on.
IF_MAC = bytes.fromhex("02aa00000001")


@pytest.fixture
def dp(loaded_dataplane):  # noqa: ANN001
    """The session's data plane with empty rules, no tunnels and the default config."""
    d = loaded_dataplane
    d.acl.replace([])
    d.classifiers.replace([])
    for tunnel in d.maps.tunnels():
        d.maps.delete_tunnel(tunnel.vni)
    d.configure(RuntimeConfig(), if_mac=IF_MAC)
    return d
