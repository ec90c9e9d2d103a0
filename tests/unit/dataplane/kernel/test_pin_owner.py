"""Pin directories keyed by namespace and ifindex, with an owner record: who may adopt what.

The rules (dataplane.kernel.owner.conflict) as unit cases, then claim() on a real directory tree (a
temporary one: the symlink record works the same on bpffs, which the netns tests use).
"""

from __future__ import annotations

import os
import re

import pytest

from dataplane.kernel.build_settings import DataplaneSettings
from dataplane.kernel.owner import (
    OWNER,
    ForeignPins,
    InterfaceKey,
    OwnerRecord,
    PinError,
    claim,
    conflict,
    netns_inode,
    read_owner,
    write_owner,
)
from dataplane.kernel.program import compile_program, map_names

NS, COOKIE = 4026532001, 77
KEY = InterfaceKey(NS, COOKIE, 3, "ul0")
STATE = "/var/lib/tidegate"
OTHER_PID = 1 << 22  # above pid_max's default: no such process here


def record(**changes: object) -> OwnerRecord:
    fields = {"netns_inode": NS, "netns_cookie": COOKIE, "ifindex": 3, "ifname": "ul0",
              "state_dir": STATE, "pid": OTHER_PID, **changes}
    return OwnerRecord(**fields)  # type: ignore[arg-type]


def dead(_pid: int) -> bool:
    return False


def alive(_pid: int) -> bool:
    return True


def test_the_key_names_namespace_ifindex_and_name_in_the_path():
    assert str(KEY.relative) == f"netns-{NS}/if3-ul0"
    assert str(KEY) == f"ul0 (ifindex 3) of network namespace {NS}"


def test_the_record_round_trips_as_json():
    rec = record()
    assert OwnerRecord.loads(rec.dumps()) == rec
    with pytest.raises(ValueError):
        OwnerRecord.loads('["not", "an", "object"]')
    with pytest.raises(ValueError):
        OwnerRecord.loads('{"netns_inode": "x", "ifindex": 3}')


@pytest.mark.parametrize("rec, reason", [
    (record(netns_inode=NS + 1), f"belongs to ul0 \\(ifindex 3\\) of network namespace {NS + 1}, "
                                 f"not to ul0 \\(ifindex 3\\) of network namespace {NS}"),
    (record(ifindex=4, ifname="ul1"), "belongs to ul1 \\(ifindex 4\\).*not to ul0 \\(ifindex 3\\)"),
    (record(netns_cookie=COOKIE + 1), f"cookie {COOKIE + 1}, a namespace that no longer exists.*"
                                      f"cookie {COOKIE}"),
], ids=["other-namespace", "other-interface", "dead-namespace-same-inode"])
def test_another_interface_or_namespace_is_refused_whether_its_daemon_lives_or_not(rec, reason):
    for liveness in (alive, dead):
        assert re.search(reason, conflict(rec, KEY, None, True, liveness) or "")


def test_a_live_daemon_with_another_state_dir_keeps_its_pins():
    why = conflict(record(state_dir="/srv/a"), KEY, None, True, alive)
    assert why is not None and f"process {OTHER_PID} (state directory /srv/a)" in why
    assert conflict(record(state_dir="/srv/a"), KEY, None, True, dead) is None  # it is gone: adopt


def test_this_interface_own_earlier_pins_are_adopted():
    assert conflict(record(), KEY, STATE, True, alive) is None  # same state dir: a restart
    assert conflict(record(pid=os.getpid(), state_dir=None), KEY, STATE, True, alive) is None
    assert conflict(record(ifname="old0"), KEY, STATE, True, alive) is None  # renamed interface
    assert conflict(record(netns_cookie=None), KEY, STATE, True, alive) is None  # kernel < 5.14


def test_pins_without_a_record_are_refused_and_an_empty_directory_is_taken():
    assert "no owner record" in (conflict(None, KEY, STATE, True, dead) or "")
    assert conflict(None, KEY, STATE, False, dead) is None


def test_claim_records_the_owner_and_refuses_a_foreign_directory(tmp_path):
    pin_dir = claim(tmp_path, KEY, tmp_path / "state")
    assert pin_dir == tmp_path / KEY.relative
    rec = read_owner(pin_dir)
    assert rec is not None and rec.key == KEY and rec.pid == os.getpid()
    assert rec.state_dir == str(tmp_path / "state")
    (pin_dir / "acl_rules").touch()  # something pinned
    assert claim(tmp_path, KEY, tmp_path / "state") == pin_dir  # again: ours

    other = InterfaceKey(NS + 9, 5, 3, "ul0")  # same name and ifindex, another namespace
    os.makedirs(tmp_path / other.relative)
    os.rename(pin_dir, tmp_path / other.relative)  # our pins where the other would look
    with pytest.raises(ForeignPins, match=f"belongs to ul0 \\(ifindex 3\\) of network namespace {NS}, "
                                          f"not to ul0 \\(ifindex 3\\) of network namespace {NS + 9}"):
        claim(tmp_path, other, None)
    assert read_owner(tmp_path / other.relative) == rec  # refused, and left as it was
    assert (tmp_path / other.relative / "acl_rules").exists()


def test_a_renamed_interface_takes_its_directory_along(tmp_path):
    first = claim(tmp_path, KEY, None)
    (first / "acl_rules").touch()
    renamed = InterfaceKey(NS, COOKIE, 3, "wan0")
    second = claim(tmp_path, renamed, None)
    assert second == tmp_path / renamed.relative and not first.exists()
    assert (second / "acl_rules").exists() and read_owner(second).ifname == "wan0"  # type: ignore[union-attr]


def test_an_unreadable_record_is_refused(tmp_path):
    pin_dir = tmp_path / KEY.relative
    pin_dir.mkdir(parents=True)
    os.symlink("{not json", pin_dir / OWNER)
    with pytest.raises(PinError, match="not an owner record"):
        claim(tmp_path, KEY, None)


def test_pins_of_a_version_with_other_maps_are_refused_saying_to_detach_once(tmp_path):
    settings = DataplaneSettings(pin_root=tmp_path)
    key = InterfaceKey.of("lo")  # nothing is attached: the key only names the directory
    assert key.netns_inode == netns_inode()
    old = settings.pin_dir(key)
    old.mkdir(parents=True)
    write_owner(old, OwnerRecord.for_key(key, None))
    # The three-stage matcher's version: the maps both have, and its own, but not the classifier's.
    for name in [n for n in map_names() if not n.startswith(("match_", "acl_", "cls_"))] + [
            "acl_src", "acl_dst", "acl_port", "acl_rules", "acl_rule_stats", "match_flags"]:
        (old / name).touch()
    with pytest.raises(PinError, match=r"missing: .*acl_subtables.*Detach once \(`tidegate detach lo`"):
        compile_program(settings, key)
