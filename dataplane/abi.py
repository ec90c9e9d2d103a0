"""Enums and constants of the data plane ABI, read from xdp/include/tidegate_abi.h.

The C header is the single source of truth. Enums, integer #defines and struct layouts come from
here, parsed from the header, so Python never restates a number or an offset the kernel side
defines. Struct layouts follow the C rules for the header's fixed-width types (natural alignment;
the header pads explicitly and `_Static_assert`s every size, checked here): `struct_dtype` gives a
numpy structured dtype (packing many map elements at once), `struct` a ctypes type (one value, e.g.
struct tg_meta, the XDP metadata); tests/bpf/dataplane/test_abi.py checks both against BCC's
generated ctypes (`table.Key`/`table.Leaf`) of the loaded program.
"""

from __future__ import annotations

import ctypes
import enum
import re
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from dataplane.kernel.source import ABI_HEADER

_ENUM = re.compile(r"enum\s+(tg_\w+)\s*\{(.*?)\};", re.S)
_MEMBER = re.compile(r"^\s*(TG_\w+)\s*=\s*(\w+)\s*,", re.M)
_DEFINE = re.compile(r"^#define\s+(TG_\w+)\s+(0x[0-9a-fA-F]+|\d+)\s*(?:/\*.*)?$", re.M)
_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_DROPS = re.compile(r"^#define\s+TG_REASON_DROPS\s*\(((?:[^()]|\([^()]*\))*)\)", re.M)
_REASON_BIT = re.compile(r"TG_REASON_BIT\((TG_REASON_\w+)\)")
_STRUCT = re.compile(r"^struct\s+(tg_\w+)\s*\{(.*?)^\};", re.S | re.M)
_FIELD = re.compile(r"^\s*(struct\s+tg_\w+|__\w+)\s+(\w+)\s*(?:\[\s*(\w+)\s*\])?\s*;\s*$")
_SIZE_ASSERT = re.compile(r"_Static_assert\(sizeof\(struct\s+(tg_\w+)\)\s*==\s*(\d+)\s*,")
_SCALARS = {"__u8": "u1", "__u16": "u2", "__u32": "u4", "__u64": "u8", "__be16": ">u2", "__be32": ">u4"}
_CTYPES = {1: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 8: ctypes.c_uint64}


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


@cache
def struct_dtype(name: str) -> np.dtype[Any]:
    """The layout of `struct <name>` (e.g. "tg_rule") as a numpy structured dtype: offsets and
    size as the C compiler lays it out. Bitfields and unions are not supported (none are used)."""
    bodies = dict(_STRUCT.findall(_COMMENT.sub("", _header_text())))
    if name not in bodies:
        raise KeyError(f"struct {name} is not defined in {ABI_HEADER}")
    names, formats, offsets = [], [], []
    offset, align = 0, 1
    for line in bodies[name].splitlines():
        if not line.strip():
            continue
        found = _FIELD.match(line)
        if found is None:
            raise ValueError(f"struct {name}: cannot lay out {line.strip()!r}")
        ctype, field, count = found.groups()
        element: np.dtype[Any] = (struct_dtype(ctype.split()[1]) if ctype.startswith("struct")
                                  else np.dtype(_SCALARS[ctype].replace("u", "=u", 1)
                                                if not _SCALARS[ctype].startswith(">") else _SCALARS[ctype]))
        field_align = max(element.alignment, _alignment(element))
        offset = -(-offset // field_align) * field_align
        n = 1 if count is None else (int(count) if count.isdigit() else define(count))
        names.append(field)
        formats.append(element if count is None else (element, (n,)))
        offsets.append(offset)
        offset += element.itemsize * n
        align = max(align, field_align)
    size = -(-offset // align) * align
    asserted = {n: int(v) for n, v in _SIZE_ASSERT.findall(_header_text())}
    if name in asserted and size != asserted[name]:
        raise ValueError(f"struct {name}: laid out as {size} bytes, the header asserts {asserted[name]}")
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": size,
                     "aligned": False})


def _alignment(dt: np.dtype[Any]) -> int:
    """C alignment of a scalar or of a struct laid out by struct_dtype (its widest member)."""
    if dt.fields is None:
        return dt.itemsize
    return max(_alignment(sub.base) for sub, *_ in dt.fields.values())


def define(name: str) -> int:
    try:
        return defines()[name]
    except KeyError:
        raise KeyError(f"{name} is not an integer #define in {ABI_HEADER}") from None


@cache
def struct(name: str) -> type[ctypes.Structure]:
    """The ctypes type of `struct <name>` of the header, in native byte order as the kernel lays
    it out (struct_dtype's layout); for structs of native-order unsigned integers and arrays of them
    (others raise ValueError)."""
    dtype = struct_dtype(name)
    fields: list[tuple[str, Any]] = []
    assert dtype.fields is not None
    for field, (sub, _offset, *_rest) in dtype.fields.items():
        base = sub.base
        if base.fields is not None or base.kind != "u" or base.byteorder == ">":
            raise ValueError(f"struct {name}: the field {field} is not a native-order unsigned integer")
        ctype: Any = _CTYPES[base.itemsize]
        fields.append((field, ctype * sub.shape[0] if sub.shape else ctype))
    layout = type(name, (ctypes.Structure,), {"_fields_": fields})
    if ctypes.sizeof(layout) != dtype.itemsize:
        raise ValueError(f"struct {name}: ctypes lays it out in {ctypes.sizeof(layout)} bytes, not "
                         f"{dtype.itemsize}")
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
