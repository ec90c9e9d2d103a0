"""Enums and constants of the data plane ABI, read from xdp/include/tidegate_abi.h.

The C header is the single source of truth. Enums, integer #defines and struct layouts come from
here, parsed from the header, so Python never restates a number or an offset the kernel side
defines. Struct layouts (`struct_dtype`, numpy structured dtypes for packing many map elements
at once) follow the C rules for the header's fixed-width types (natural alignment; the header
pads explicitly and `_Static_assert`s every size); tests/dataplane/test_abi.py checks them
against BCC's generated ctypes (`table.Key`/`table.Leaf`) of the loaded program.
"""

from __future__ import annotations

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
_STRUCT = re.compile(r"^struct\s+(tg_\w+)\s*\{(.*?)^\};", re.S | re.M)
_FIELD = re.compile(r"^\s*(struct\s+tg_\w+|__\w+)\s+(\w+)(?:\[(\w+)\])?\s*;\s*$")
_SCALARS = {"__u8": "u1", "__u16": "u2", "__u32": "u4", "__u64": "u8", "__be16": ">u2", "__be32": ">u4"}


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
FIRST_DROP_REASON = enums()["tg_reason"]["TG_REASON_DROP_MALFORMED"]
LAST_DROP_REASON = enums()["tg_reason"]["TG_REASON_DROP_DECAP_FAILED"]
SLOT_NONE = define("TG_SLOT_NONE")
META_MAGIC = define("TG_META_MAGIC")


def is_drop(reason: int) -> bool:
    """Mirrors the XDP program's exit (TG_REASON_IS_DROP): DROP_MALFORMED .. DROP_DECAP_FAILED
    drop; the reasons after them (PASS_TUNNEL_NOT_IP) pass."""
    return FIRST_DROP_REASON <= reason <= LAST_DROP_REASON
