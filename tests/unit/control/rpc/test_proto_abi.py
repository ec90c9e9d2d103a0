"""The proto's Reason and Event enums mirror the ABI header's tg_reason and tg_event."""

from __future__ import annotations

import pytest

from control.rpc import convert
from control.rpc.api import pb2
from dataplane import abi


def _proto_members(enum, prefix: str) -> dict[str, int]:
    return {name.removeprefix(prefix): value for name, value in enum.items()}


def test_reason_mirrors_tg_reason_value_by_value():
    # TG_REASON_UNSPECIFIED = 0 exists in C too, so the two enums are the same, name for name.
    assert _proto_members(pb2.Reason, "REASON_") == {r.name: r.value for r in abi.Reason}


def test_event_mirrors_tg_event_value_by_value():
    # TG_EVENT_UNSPECIFIED = 0 exists in C too, so the two enums are the same, name for name.
    assert _proto_members(pb2.Event, "EVENT_") == {e.name: e.value for e in abi.Event}


def test_counter_arrays_fit_the_proto_enums():
    # REASON_MAX / EVENT_MAX size the kernel's counter arrays: every slot has a proto name.
    assert max(pb2.Reason.values()) == abi.REASON_MAX - 1
    assert max(pb2.Event.values()) == abi.EVENT_MAX - 1


@pytest.mark.parametrize("event", list(abi.Event), ids=lambda e: e.name)
def test_event_conversion_keeps_the_number(event):
    assert pb2.Event.Name(convert.event_to_proto(event)) == f"EVENT_{event.name}"


@pytest.mark.parametrize("reason", list(abi.Reason), ids=lambda r: r.name)
def test_reason_conversion_keeps_the_number(reason):
    assert pb2.Reason.Name(convert.reason_to_proto(reason)) == f"REASON_{reason.name}"


def test_every_proto_element_is_documented(tmp_path):
    """Every message, field, enum, enum value, service and RPC has a leading comment."""
    import subprocess
    import sys

    from google.protobuf import descriptor_pb2

    from control.rpc import protogen

    out = tmp_path / "tidegate.desc"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{protogen.PROTO_ROOT}",
                    f"--descriptor_set_out={out}", "--include_source_info", str(protogen.PROTO_REL)],
                   check=True, cwd=protogen.PROTO_ROOT)
    (file,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    documented = {tuple(loc.path) for loc in file.source_code_info.location if loc.leading_comments.strip()}
    # descriptor.proto field numbers: message_type 4, enum_type 5, service 6; field/value/method 2.
    groups = [(4, file.message_type, "field"), (5, file.enum_type, "value"), (6, file.service, "method")]
    missing = []
    for tag, items, member in groups:
        for i, item in enumerate(items):
            if (tag, i) not in documented:
                missing.append(item.name)
            missing += [f"{item.name}.{m.name}" for j, m in enumerate(getattr(item, member))
                        if (tag, i, 2, j) not in documented]
    assert missing == []
