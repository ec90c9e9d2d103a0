"""The persisted desired state: round trip, atomic replacement, refusal of a damaged file."""

from __future__ import annotations

import json
import os
import stat

import pytest

from control.apply import acl_snapshot
from control.apply.state import JOURNAL_FILE, STATE_FILE, StateError, StateStore, encode_record
from control.policy.edits import Edit
from control.policy.models import AclRule, DesiredState, Interface, Policy, Tunnel


def _state(generation: int = 3) -> DesiredState:
    policy = Policy.model_validate({"acl": [{"id": 1, "action": "deny", "match": {"src": "10.0.0.0/8"}}],
                                    "tunnels": [{"vni": 100}],
                                    "settings": {"default_action": "deny", "fragments": "first"}})
    interfaces = [Interface(name="eth0", mode="native")]
    return DesiredState(generation=generation, interfaces=interfaces, policy=policy)


def test_first_start_is_an_empty_state(tmp_path):
    assert StateStore(tmp_path / "new").load() == DesiredState()


def test_round_trip_keeps_everything(tmp_path):
    store = StateStore(tmp_path)
    store.save(_state())
    assert store.load() == _state()


def test_settings_survive_the_state_file(tmp_path):
    """Non-default settings come back as written (a state file that lost fragments: first would
    restart the daemon into judging later fragments again)."""
    store = StateStore(tmp_path)
    store.save(_state())
    settings = store.load().policy.settings
    assert (settings.default_action, settings.fragments) == ("deny", "first")
    written = json.loads((tmp_path / STATE_FILE).read_text())
    assert written["policy"]["settings"]["fragments"] == "first"


def test_a_state_file_without_fragments_judges_them(tmp_path):
    """A state file written before the setting existed loads with its default."""
    store = StateStore(tmp_path)
    store.save(_state())
    path = tmp_path / STATE_FILE
    data = json.loads(path.read_text())
    del data["policy"]["settings"]["fragments"]
    path.write_text(json.dumps(data))
    assert store.load().policy.settings.fragments == "judge"


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


# --- the journal of edits ------------------------------------------------------------------------


def _edits() -> list[Edit]:
    return [Edit("add_rule", AclRule(id=2, action="allow", match={"dst": "192.0.2.0/24"})),
            Edit("add_tunnel", Tunnel(vni=200, geneve=False)),
            Edit("delete_rule", 1),
            Edit("add_rule", AclRule(id=1, action="deny", match={"src": "2001:db8::/32"}))]


def _journaled(store: StateStore, base: DesiredState, edits: list[Edit]) -> list[DesiredState]:
    """Saves base, then each edit as the controller does; the states in order."""
    store.save(base)
    states = [base]
    for edit in edits:
        new = edit(states[-1]).model_copy(update={"generation": states[-1].generation + 1})
        store.save(new, edit, base=states[-1])
        states.append(new)
    return states


def test_edits_are_journaled_and_replayed(tmp_path):
    store = StateStore(tmp_path)
    store.save(_state())
    snapshot = (tmp_path / STATE_FILE).read_bytes()
    states = _journaled(store, _state(), _edits())
    assert (tmp_path / STATE_FILE).read_bytes() == snapshot, "an edit does not rewrite the snapshot"
    assert len((tmp_path / JOURNAL_FILE).read_bytes().splitlines()) == len(_edits())
    assert StateStore(tmp_path).load() == states[-1]
    assert [r.id for r in states[-1].policy.acl] == [2, 1]  # the re-added rule comes last, as applied


def test_the_journal_is_private(tmp_path):
    _journaled(StateStore(tmp_path), _state(), _edits()[:1])
    assert stat.S_IMODE(os.stat(tmp_path / JOURNAL_FILE).st_mode) == 0o600


@pytest.mark.parametrize("damage", ["cut", "checksum", "no newline"])
def test_a_torn_last_record_is_ignored_and_cut_off(tmp_path, damage):
    states = _journaled(StateStore(tmp_path), _state(), _edits())
    path = tmp_path / JOURNAL_FILE
    data = path.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    if damage == "cut":  # the crash came in the middle of the write
        path.write_bytes(data[:last + (len(data) - last) // 2])
    elif damage == "checksum":  # a block of the record never reached the disk
        path.write_bytes(data[:-3] + (b"0" if data[-3:-2] != b"0" else b"1") + data[-2:])
    else:
        path.write_bytes(data[:-1])
    store = StateStore(tmp_path)
    assert store.load() == states[-2], "the edit whose record is torn was never acknowledged"
    assert path.read_bytes() == data[:last], "the torn record is cut off"
    # and the journal goes on from there
    edit = Edit("add_tunnel", Tunnel(vni=300))
    new = edit(states[-2]).model_copy(update={"generation": states[-2].generation + 1})
    store.save(new, edit, base=store.load())
    assert StateStore(tmp_path).load() == new


def test_a_damaged_record_before_good_ones_is_refused(tmp_path):
    _journaled(StateStore(tmp_path), _state(), _edits())
    path = tmp_path / JOURNAL_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"200", b"201")
    path.write_bytes(b"".join(lines))
    with pytest.raises(StateError, match="damaged and records follow") as info:
        StateStore(tmp_path).load()
    assert str(path) in str(info.value)


def test_the_journal_is_compacted_into_the_snapshot(tmp_path):
    store = StateStore(tmp_path, compact_min_bytes=1)  # the journal may not outgrow the snapshot
    states = _journaled(store, _state(), _edits())
    journal = (tmp_path / JOURNAL_FILE).stat().st_size if (tmp_path / JOURNAL_FILE).exists() else 0
    assert journal <= (tmp_path / STATE_FILE).stat().st_size  # (how many fit depends on the state's size)
    assert StateStore(tmp_path).load() == states[-1]
    snapshot = (tmp_path / STATE_FILE).stat().st_size
    store = StateStore(tmp_path, compact_min_bytes=1)  # the journal may grow to the snapshot's size
    record = len(encode_record(9, _edits()[1]))
    states = _journaled(store, _state(), [Edit("add_tunnel", Tunnel(vni=1000 + i))
                                          for i in range(3 * snapshot // record)])
    assert StateStore(tmp_path).load() == states[-1]
    journal = (tmp_path / JOURNAL_FILE).stat().st_size if (tmp_path / JOURNAL_FILE).exists() else 0
    assert journal <= (tmp_path / STATE_FILE).stat().st_size
    compacted = json.loads((tmp_path / STATE_FILE).read_text())["generation"]
    assert compacted > _state().generation, "a snapshot was written on the way"


def test_a_whole_state_save_replaces_the_journal(tmp_path):
    store = StateStore(tmp_path)
    states = _journaled(store, _state(), _edits())
    final = states[-1].model_copy(update={"generation": states[-1].generation + 1})
    store.save(final)
    assert os.listdir(tmp_path) == [STATE_FILE]
    assert StateStore(tmp_path).load() == final


def test_records_older_than_the_snapshot_are_skipped(tmp_path):
    """A crash after the snapshot's rename and before the journal's removal."""
    store = StateStore(tmp_path)
    states = _journaled(store, _state(), _edits())
    journal = (tmp_path / JOURNAL_FILE).read_bytes()
    store.save(states[-1])  # compaction: the snapshot holds every edit
    (tmp_path / JOURNAL_FILE).write_bytes(journal)
    assert StateStore(tmp_path).load() == states[-1]


def test_an_edit_to_a_state_the_files_do_not_hold_writes_a_snapshot(tmp_path):
    """E.g. the daemon started without an interface that vanished: its next edit must not be
    replayed onto the persisted state that still has it."""
    store = StateStore(tmp_path)
    store.save(_state())
    loaded = store.load()
    pruned = loaded.model_copy(update={"interfaces": []})
    edit = _edits()[1]
    new = edit(pruned).model_copy(update={"generation": pruned.generation + 1})
    store.save(new, edit, base=pruned)
    assert os.listdir(tmp_path) == [STATE_FILE]
    assert StateStore(tmp_path).load() == new


def test_a_failed_append_leaves_the_old_state_and_the_next_save_is_whole(tmp_path, monkeypatch):
    store = StateStore(tmp_path)
    states = _journaled(store, _state(), _edits()[:2])
    size = (tmp_path / JOURNAL_FILE).stat().st_size

    def boom(_fd):  # noqa: ANN001, ANN202
        raise OSError(5, "Input/output error")

    edit = _edits()[2]
    new = edit(states[-1]).model_copy(update={"generation": states[-1].generation + 1})
    monkeypatch.setattr(os, "fdatasync", boom)
    with pytest.raises(OSError):
        store.save(new, edit, base=states[-1])
    monkeypatch.undo()
    assert (tmp_path / JOURNAL_FILE).stat().st_size == size, "the record that failed is cut off"
    assert StateStore(tmp_path).load() == states[-1]
    store.save(new, edit, base=states[-1])
    assert os.listdir(tmp_path) == [STATE_FILE], "after a failure the next save is a snapshot"
    assert StateStore(tmp_path).load() == new


@pytest.mark.parametrize("line", [b'{"generation": 4, "op": "drop_table", "arg": 1}',
                                  b'{"generation": 4, "op": "add_rule", "arg": {"id": 0}}',
                                  b'{"generation": 9, "op": "delete_rule", "arg": 1}'])
def test_a_record_that_is_not_the_next_edit_is_refused(tmp_path, line):
    import zlib

    StateStore(tmp_path).save(_state())
    (tmp_path / JOURNAL_FILE).write_bytes(b"%08x %s\n" % (zlib.crc32(line), line))
    with pytest.raises(StateError, match="record at byte 0"):
        StateStore(tmp_path).load()


def test_an_edit_that_does_not_apply_is_refused(tmp_path):
    StateStore(tmp_path).save(_state())
    (tmp_path / JOURNAL_FILE).write_bytes(encode_record(4, Edit("delete_rule", 77)))
    with pytest.raises(StateError, match="do not apply"):
        StateStore(tmp_path).load()


def test_a_state_file_from_before_the_columns_still_loads(tmp_path):
    """The ACL as a list of rules (what earlier versions wrote) is read, and rewritten as columns."""
    match = {"src": "10.0.0.0/8", "protocol": "tcp", "dport": 22}
    old = {"generation": 4, "interfaces": [{"name": "eth0", "mode": "auto"}],
           "policy": {"acl": [{"id": 2, "priority": 5, "action": "deny", "match": match},
                              {"id": 1, "action": "allow"}]}}
    (tmp_path / STATE_FILE).write_text(json.dumps(old))
    store = StateStore(tmp_path)
    state = store.load()
    assert [r.id for r in state.policy.acl] == [2, 1] and state.generation == 4
    store.save(state)
    assert json.loads((tmp_path / STATE_FILE).read_text())["policy"]["acl"]["format"] == "columns/1"
    assert StateStore(tmp_path).load() == state


@pytest.mark.parametrize("state", [
    DesiredState(),
    _state(),
    DesiredState(policy=Policy.model_validate({"acl": [
        {"id": 7, "action": "allow", "description": 'a "quoted" text\nand é', "match": {"dst": "::/0"}},
        {"id": 8, "action": "deny"}]})),
    DesiredState(generation=9, policy=Policy.model_validate({"settings": {"vxlan_port": 4790}})),
])
def test_the_file_is_the_json_of_the_state_with_its_acl_as_columns(tmp_path, state):
    """The snapshot is written as text put together (the ACL's columns spliced in), not by a
    JSON encoder: it must be what one would have written."""
    StateStore(tmp_path).save(state)
    expected = state.model_dump(mode="json", exclude={"policy": {"acl"}})
    expected["policy"]["acl"] = acl_snapshot.dump(state.policy.acl)
    assert json.loads((tmp_path / STATE_FILE).read_bytes()) == expected
    assert StateStore(tmp_path).load() == state


def test_a_save_begun_changes_no_file_until_committed_and_a_discarded_one_none(tmp_path):
    store = StateStore(tmp_path)
    store.save(_state(1))
    before = (tmp_path / STATE_FILE).read_bytes()
    saving = store.begin(_state(2))  # a snapshot: written by a thread meanwhile
    saving.discard()
    assert (tmp_path / STATE_FILE).read_bytes() == before and os.listdir(tmp_path) == [STATE_FILE]
    saving = store.begin(_state(3))
    assert (tmp_path / STATE_FILE).read_bytes() == before  # whatever the thread did so far
    saving.commit()
    assert store.load() == _state(3) and os.listdir(tmp_path) == [STATE_FILE]


def test_a_snapshot_that_cannot_be_written_fails_the_commit_and_changes_nothing(tmp_path, monkeypatch):
    store = StateStore(tmp_path)
    store.save(_state(1))

    def full(*_args):  # noqa: ANN002, ANN202
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    saving = store.begin(_state(2))
    with pytest.raises(OSError, match="No space"):
        saving.commit()
    monkeypatch.undo()
    assert store.load().generation == 1 and os.listdir(tmp_path) == [STATE_FILE]


def test_a_journaled_edit_is_appended_by_the_commit_alone(tmp_path):
    store = StateStore(tmp_path)
    base = _state(1)
    store.save(base)
    edit = Edit("add_rule", AclRule.model_validate({"id": 2, "action": "allow"}))
    new = edit(base).model_copy(update={"generation": 2})
    store.begin(new, edit, base).discard()
    assert not (tmp_path / JOURNAL_FILE).exists()
    store.begin(new, edit, base).commit()
    assert (tmp_path / JOURNAL_FILE).exists() and store.load() == new
