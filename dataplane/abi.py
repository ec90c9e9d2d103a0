"""Enums and constants of the data plane ABI, read from xdp/include/tidegate_abi.h.

The C header is the single source of truth. Struct layouts of map keys and values come from
BCC's generated ctypes (`table.Key`/`table.Leaf`); enums, integer #defines and the layouts no map
carries (struct tg_meta, the XDP metadata) come from here, parsed from the header, so Python never
restates a number or a layout the kernel side defines.
"""

from __future__ import annotations

import ctypes
import enum
import re
from functools import cache
from pathlib import Path

from dataplane.kernel.source import ABI_HEADER

_ENUM = re.compile(r"enum\s+(tg_\w+)\s*\{(.*?)\};", re.S)
_MEMBER = re.compile(r"^\s*(TG_\w+)\s*=\s*(\w+)\s*,", re.M)
_DEFINE = re.compile(r"^#define\s+(TG_\w+)\s+(0x[0-9a-fA-F]+|\d+)\s*(?:/\*.*)?$", re.M)
_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_DROPS = re.compile(r"^#define\s+TG_REASON_DROPS\s*\(((?:[^()]|\([^()]*\))*)\)", re.M)
_REASON_BIT = re.compile(r"TG_REASON_BIT\((TG_REASON_\w+)\)")
_STRUCT = re.compile(r"struct\s+(tg_\w+)\s*\{(.*?)\};", re.S)
_FIELD = re.compile(r"^\s*(__u8|__u16|__u32|__u64)\s+(\w+)\s*(?:\[\s*(\w+)\s*\])?\s*;\s*$")
_SIZE_ASSERT = re.compile(r"_Static_assert\(sizeof\(struct\s+(tg_\w+)\)\s*==\s*(\d+)\s*,")
_CTYPES = {"__u8": ctypes.c_uint8, "__u16": ctypes.c_uint16, "__u32": ctypes.c_uint32,
           "__u64": ctypes.c_uint64}


@cache
def _header_text(path: Path = ABI_HEADER) -> str:
    return path.read_text()


@cache
def enums() -> dict[str, dict[str, int]]:
    """`{"tg_reason": {"TG_REASON_PASS_NOT_IP": 1, ...}, ...}` as written in the header."""
    out: dict[str, dict[str, int]] = {}
    for name, body in _ENUM.findall(_header_text()):
        members = _MEMBER.findall(_COMMENT.sub("", body))
        out[name] = {m: int(v, 0) for m, v in members}
    return out


@cache
def defines() -> dict[str, int]:
    """Integer #defines of the header (first definition wins, as for the default values)."""
    out: dict[str, int] = {}
    for name, value in _DEFINE.findall(_header_text()):
        out.setdefault(name, int(value, 0))
    return out


def define(name: str) -> int:
    try:
        return defines()[name]
    except KeyError:
        raise KeyError(f"{name} is not an integer #define in {ABI_HEADER}") from None


@cache
def struct(name: str) -> type[ctypes.Structure]:
    """The ctypes type of `struct <name>` of the header, in native byte order as the kernel lays
    it out; for structs of fixed-width integers and arrays of them (others raise ValueError).
    Checked against the header's _Static_assert on its size."""
    text = _header_text()
    body = next((b for n, b in _STRUCT.findall(text) if n == name), None)
    if body is None:
        raise KeyError(f"struct {name} is not in {ABI_HEADER}")
    fields: list[tuple[str, type]] = []
    for line in _COMMENT.sub("", body).split(";"):
        if not line.strip():
            continue
        m = _FIELD.match(line + ";")
        if m is None:
            raise ValueError(f"struct {name}: cannot read the field {line.strip()!r} (only __u8/16/32/64 "
                             "and arrays of them)")
        ctype, field, length = m.groups()
        count = 0 if length is None else int(length, 0) if length[0].isdigit() else define(length)
        fields.append((field, _CTYPES[ctype] * count if count else _CTYPES[ctype]))
    layout = type(name, (ctypes.Structure,), {"_fields_": fields})
    asserted = {n: int(size) for n, size in _SIZE_ASSERT.findall(text)}
    if name in asserted and ctypes.sizeof(layout) != asserted[name]:
        raise ValueError(f"struct {name}: read as {ctypes.sizeof(layout)} bytes, the header asserts "
                         f"{asserted[name]}")
    return layout


def _int_enum(c_name: str, prefix: str, py_name: str) -> type[enum.IntEnum]:
    members = {k.removeprefix(prefix): v for k, v in enums()[c_name].items() if not k.endswith("_MAX")}
    return enum.IntEnum(py_name, members)  # type: ignore[return-value]


Reason = _int_enum("tg_reason", "TG_REASON_", "Reason")
Event = _int_enum("tg_event", "TG_EVENT_", "Event")
Action = _int_enum("tg_action", "TG_ACTION_", "Action")
UnknownVniAction = _int_enum("tg_unknown_vni_action", "TG_UNKNOWN_VNI_", "UnknownVniAction")
TunnelType = _int_enum("tg_tunnel_type", "TG_TUNNEL_", "TunnelType")

REASON_MAX = enums()["tg_reason"]["TG_REASON_MAX"]
EVENT_MAX = enums()["tg_event"]["TG_EVENT_MAX"]
SLOT_NONE = define("TG_SLOT_NONE")
VNI_MAX = define("TG_VNI_MAX")
META_MAGIC = define("TG_META_MAGIC")
Meta = struct("tg_meta")  # XDP metadata in front of the packet: magic, mark, vni, flags


def _drop_reasons() -> frozenset[int]:
    """The reasons TG_REASON_DROPS lists (each as TG_REASON_BIT(TG_REASON_X))."""
    found = _DROPS.search(_header_text())
    if found is None:
        raise KeyError(f"#define TG_REASON_DROPS is not in {ABI_HEADER}")
    names = _REASON_BIT.findall(found.group(1))
    return frozenset(Reason[name.removeprefix("TG_REASON_")] for name in names)


DROP_REASONS = _drop_reasons()


def is_drop(reason: int) -> bool:
    """Whether the XDP program drops a packet with this reason (TG_REASON_IS_DROP): the header
    states it per reason, in TG_REASON_DROPS."""
    return reason in DROP_REASONS
