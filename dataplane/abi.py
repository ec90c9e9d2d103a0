"""Enums and constants of the data plane ABI, read from xdp/include/tidegate_abi.h.

The C header is the single source of truth. Struct layouts come from BCC's generated ctypes
(`table.Key`/`table.Leaf`); enums and integer #defines come from here, parsed from the header,
so Python never restates a number the kernel side defines.
"""

from __future__ import annotations

import enum
import re
from functools import cache
from pathlib import Path

from dataplane.kernel.source import ABI_HEADER

_ENUM = re.compile(r"enum\s+(tg_\w+)\s*\{(.*?)\};", re.S)
_MEMBER = re.compile(r"^\s*(TG_\w+)\s*=\s*(\w+)\s*,", re.M)
_DEFINE = re.compile(r"^#define\s+(TG_\w+)\s+(0x[0-9a-fA-F]+|\d+)\s*(?:/\*.*)?$", re.M)
_COMMENT = re.compile(r"/\*.*?\*/", re.S)


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
VNI_MAX = define("TG_VNI_MAX")
META_MAGIC = define("TG_META_MAGIC")


def is_drop(reason: int) -> bool:
    """Mirrors the XDP program's exit (TG_REASON_IS_DROP): DROP_MALFORMED .. DROP_DECAP_FAILED
    drop; the reasons after them (PASS_TUNNEL_NOT_IP) pass."""
    return FIRST_DROP_REASON <= reason <= LAST_DROP_REASON
