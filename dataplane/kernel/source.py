"""Assembles the BCC source of the data plane from xdp/.

BCC rewrites map accesses (`map.lookup(&k)`) only in the main translation unit, and only treats
functions of the main file as programs. The C sources stay split one entry file per hook with
shared headers; here the local (`#include "..."`) headers are spliced into one text, each once,
while system includes (`#include <...>`) are left to the compiler.
"""

from __future__ import annotations

import re
from pathlib import Path

XDP_DIR = Path(__file__).resolve().parents[2] / "xdp"
INCLUDE_DIR = XDP_DIR / "include"
ABI_HEADER = INCLUDE_DIR / "tidegate_abi.h"

# The hook entry files compiled together so their programs share one set of maps.
ENTRY_FILES = ("xdp_ingress.c", "xdp_judge.c", "xdp_reject.c", "tc_ingress.c", "tc_egress.c")

_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def _resolve(name: str, including: Path) -> Path:
    for base in (including.parent, INCLUDE_DIR, XDP_DIR):
        candidate = base / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f'{including}: #include "{name}" not found under {XDP_DIR}')


def _splice(path: Path, seen: set[Path], out: list[str]) -> None:
    if path in seen:
        return
    seen.add(path)
    out.append(f'#line 1 "{path}"')
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        match = _LOCAL_INCLUDE.match(line)
        if match:
            _splice(_resolve(match.group(1), path), seen, out)
            out.append(f'#line {lineno + 1} "{path}"')
        else:
            out.append(line)


def program_text(entries: tuple[str, ...] = ENTRY_FILES) -> str:
    """One C text holding every entry program and, once each, the headers they include."""
    seen: set[Path] = set()
    out: list[str] = []
    for entry in entries:
        _splice(XDP_DIR / entry, seen, out)
    return "\n".join(out) + "\n"
