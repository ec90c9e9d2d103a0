"""A real etcd member on host loopback (free ports, its own data dir) for the client tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed.etcd import EtcdCluster, etcd_available


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    reason = etcd_available()
    if reason:
        pytest.skip(reason)
    with EtcdCluster(1) as cluster:
        yield cluster
