"""The daemon's config file: the observability keys (events.export, metrics.listen), edit_priority,
preallocate_buckets."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.daemon_config import ConfigError, DaemonConfig, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tidegate.yaml"
    path.write_text(text)
    return path


def test_observability_is_off_by_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "log_level: debug\n"))
    assert config.metrics.listen is None and config.events.export is None
    assert load_config(None) == DaemonConfig()
    nulls = load_config(write(tmp_path, "metrics: null\nevents: null\n"))
    assert nulls.metrics.listen is None and nulls.events.export is None


def test_observability_keys(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "metrics: {listen: '127.0.0.1:9150'}\n"
                                         "events: {export: {path: /var/log/tidegate/events.jsonl}}\n"))
    assert config.metrics.listen == "127.0.0.1:9150"
    assert config.events.export is not None and config.events.export.path == "/var/log/tidegate/events.jsonl"
    assert load_config(write(tmp_path, "events: {export: {path: '-'}}\nmetrics: {listen: '[::1]:9150'}\n")
                       ).events.export.path == "-"  # type: ignore[union-attr]


@pytest.mark.parametrize(("text", "field"), [
    ("metrics: {listen: 9150}\n", "metrics.listen"),
    ("metrics: {listen: 'localhost'}\n", "metrics.listen"),
    ("metrics: {port: 9150}\n", "metrics.port"),
    ("events: {export: {path: ''}}\n", "events.export.path"),
    ("events: {export: /tmp/x}\n", "events.export"),
    ("events: {exporter: {path: /tmp/x}}\n", "events.exporter"),
    ("flow_cache_insert_one_in: 0\n", "flow_cache_insert_one_in"),
    ("flow_cache_insert_one_in: often\n", "flow_cache_insert_one_in"),
    ("capacities: {acl_flows: -1}\n", "capacities.acl_flows"),
])
def test_bad_observability_and_flow_cache_keys_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {field}: "), info.value


def test_edit_priority(tmp_path: Path) -> None:
    """Single edits are served real-time unless told otherwise (control.rpc.edit_priority)."""
    assert DaemonConfig().edit_priority == 1
    assert load_config(write(tmp_path, "edit_priority: null\n")).edit_priority is None
    assert load_config(write(tmp_path, "edit_priority: 20\n")).edit_priority == 20


@pytest.mark.parametrize("value", ["0", "100", "high"])
def test_a_bad_edit_priority_names_the_field(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"edit_priority: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: edit_priority: "), info.value


def test_preallocate_buckets_reaches_the_build(tmp_path: Path) -> None:
    """Bucket hashes preallocated unless the config says otherwise; the choice is a -D of the build
    (xdp/include/maps.h, TG_BUCKET_FLAGS)."""
    default = DaemonConfig().dataplane_settings()
    assert default.preallocate_buckets and "-DTG_BUCKETS_ON_DEMAND" not in default.cflags()
    on_demand = load_config(write(tmp_path, "preallocate_buckets: false\n")).dataplane_settings()
    assert not on_demand.preallocate_buckets and "-DTG_BUCKETS_ON_DEMAND" in on_demand.cflags()
    assert on_demand.capacities.cflags() == default.capacities.cflags()  # nothing else moves


def test_a_bad_preallocate_buckets_names_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, "preallocate_buckets: sometimes\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: preallocate_buckets: "), info.value


def test_the_flow_cache_settings_reach_the_build(tmp_path: Path) -> None:
    """The ACL's flow cache: on by default with its capacity and insert chance as -Ds; acl_flows 0
    builds without it (xdp/include/match.h, TG_NO_FLOW_CACHE)."""
    default = DaemonConfig().dataplane_settings()
    assert "-DTG_ACL_FLOWS_MAX=65536" in default.cflags() and "-DTG_FLOW_INSERT_ONE_IN=8" in default.cflags()
    assert "-DTG_NO_FLOW_CACHE" not in default.cflags()
    text = "capacities: {acl_flows: 0}\nflow_cache_insert_one_in: 1\n"
    off = load_config(write(tmp_path, text)).dataplane_settings()
    assert {"-DTG_NO_FLOW_CACHE", "-DTG_ACL_FLOWS_MAX=0", "-DTG_FLOW_INSERT_ONE_IN=1"} <= set(off.cflags())
