"""The persisted desired state: round trip, atomic replacement, refusal of a damaged file."""

from __future__ import annotations

import os
import stat

import pytest

from control.models import DesiredState, Interface, Policy
from control.state import STATE_FILE, StateError, StateStore


def _state(generation: int = 3) -> DesiredState:
    policy = Policy.model_validate({"acl": [{"id": 1, "action": "deny", "match": {"src": "10.0.0.0/8"}}],
                                    "tunnels": [{"vni": 100}]})
    interfaces = [Interface(name="eth0", mode="native")]
    return DesiredState(generation=generation, interfaces=interfaces, policy=policy)


def test_first_start_is_an_empty_state(tmp_path):
    assert StateStore(tmp_path / "new").load() == DesiredState()


def test_round_trip_keeps_everything(tmp_path):
    store = StateStore(tmp_path)
    store.save(_state())
    assert store.load() == _state()


def test_the_file_is_private_and_no_temporary_is_left(tmp_path):
    store = StateStore(tmp_path)
    store.save(_state())
    assert stat.S_IMODE(os.stat(tmp_path / STATE_FILE).st_mode) == 0o600
    assert os.listdir(tmp_path) == [STATE_FILE]


def test_a_failed_write_leaves_the_old_state(tmp_path, monkeypatch):
    store = StateStore(tmp_path)
    store.save(_state(1))

    def boom(*_args):  # noqa: ANN002, ANN202
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.save(_state(2))
    monkeypatch.undo()
    assert store.load().generation == 1
    assert os.listdir(tmp_path) == [STATE_FILE], "the temporary file is cleaned up"


@pytest.mark.parametrize("content,reason", [
    ("{not json", "not valid JSON"),
    ('{"generation": -1}', "generation"),
    ('{"policy": {"acl": [{"id": 1}]}}', "action"),
])
def test_a_damaged_file_is_refused_with_its_path(tmp_path, content, reason):
    (tmp_path / STATE_FILE).write_text(content)
    with pytest.raises(StateError, match=reason) as info:
        StateStore(tmp_path).load()
    assert str(tmp_path / STATE_FILE) in str(info.value)
