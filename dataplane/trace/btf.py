"""A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): enums, struct members, functions.

BTF is the kernel's own description of its types. Reading it, rather than the (Debian 6.1)
headers BCC compiles against, is how user space learns what *this* kernel has: the names of
`enum skb_drop_reason` (which grows every release), where `struct sk_buff` keeps `head` and
`network_header` today, and which functions exist to attach fentry/fexit programs to.

Format (include/uapi/linux/btf.h): a header (magic 0xEB9F, version 1, then the type and string
sections' offsets and lengths, relative to the end of the header), a type section of
variable-length records numbered from 1 (0 is void), and a string section of NUL-terminated
names referenced by byte offset. Only what the tracer needs is decoded; the rest is skipped
by its length. Byte order follows the magic, so a foreign-endian blob is read correctly too.
"""

from __future__ import annotations

import ctypes
import enum
import struct
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
HEADER_MIN_LEN = 24  # magic..str_len: what version 1 defines
POINTER_SIZE = ctypes.sizeof(ctypes.c_void_p)  # BTF does not record it; the kernel is the host's
MAX_TYPE_CHAIN = 32  # typedef/const/volatile hops before a type is judged circular


class BtfError(Exception):
    """The blob is not BTF, or lacks what was asked for (the message says which and where)."""


class Kind(enum.IntEnum):
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


# Bytes that follow the 12-byte common record: (fixed, per vlen entry).
_TRAILER = {
    Kind.INT: (4, 0), Kind.ARRAY: (12, 0), Kind.STRUCT: (0, 12), Kind.UNION: (0, 12),
    Kind.ENUM: (0, 8), Kind.FUNC_PROTO: (0, 8), Kind.VAR: (4, 0), Kind.DATASEC: (0, 12),
    Kind.DECL_TAG: (4, 0), Kind.ENUM64: (0, 12),
}
_MODIFIERS = (Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG)


@dataclass(frozen=True)
class TypeRec:
    id: int
    kind: Kind
    name: str
    vlen: int
    kind_flag: bool
    size_or_type: int  # size for INT/STRUCT/UNION/ENUM*, referenced type id for PTR/TYPEDEF/FUNC...
    offset: int        # of the record in the type section (its trailer follows 12 bytes later)


@dataclass(frozen=True)
class Field:
    """Where a struct member lives, counted from the start of the outermost struct."""

    name: str
    bit_offset: int
    bit_size: int       # of a bitfield; 0 for an ordinary member
    type_id: int
    size: int           # bytes of the member's type (of the storage unit, for a bitfield)

    @property
    def offset(self) -> int:
        """Byte offset (of the byte holding the first bit, for a bitfield)."""
        return self.bit_offset // 8


class Btf:
    """One parsed BTF blob. Records are indexed on load; members are decoded on demand."""

    def __init__(self, data: bytes, *, source: str = "<bytes>"):
        self.source = source
        self._data = data
        self._endian = self._read_endian(data)
        (self._hdr_len, type_off, type_len, str_off, str_len) = self._unpack("IIIII", 4)
        if self._hdr_len < HEADER_MIN_LEN or self._hdr_len > len(data):
            raise BtfError(f"{source}: header length {self._hdr_len} is impossible")
        base = self._hdr_len
        if base + max(type_off + type_len, str_off + str_len) > len(data):
            raise BtfError(f"{source}: type or string section runs past the end ({len(data)} bytes)")
        self._types = data[base + type_off: base + type_off + type_len]
        self._strings = data[base + str_off: base + str_off + str_len]
        self._recs: list[TypeRec | None] = [None]  # id 0 is void
        self._by_name_off: dict[int, list[int]] = defaultdict(list)
        self._index()

    # --- loading ----------------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: Path = VMLINUX) -> Btf:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BtfError(f"{path} does not exist: this kernel was built without "
                           "CONFIG_DEBUG_INFO_BTF, so its types cannot be read") from None
        return cls(data, source=str(path))

    def _read_endian(self, data: bytes) -> str:
        if len(data) < HEADER_MIN_LEN:
            raise BtfError(f"{self.source}: {len(data)} bytes is too short for a BTF header")
        for endian in ("<", ">"):
            magic, version = struct.unpack_from(endian + "HB", data, 0)
            if magic == BTF_MAGIC:
                if version != BTF_VERSION:
                    raise BtfError(f"{self.source}: BTF version {version}, only {BTF_VERSION} is known")
                return endian
        raise BtfError(f"{self.source}: bad magic {data[:2].hex()} (want 0x{BTF_MAGIC:x}): not BTF")

    def _unpack(self, fmt: str, offset: int, buf: bytes | None = None) -> tuple[int, ...]:
        return struct.unpack_from(self._endian + fmt, self._data if buf is None else buf, offset)

    def _index(self) -> None:
        types, pos, end = self._types, 0, len(self._types)
        common = struct.Struct(self._endian + "III")
        while pos < end:
            if pos + common.size > end:
                raise BtfError(f"{self.source}: type record {len(self._recs)} is truncated")
            name_off, info, size_or_type = common.unpack_from(types, pos)
            try:
                kind = Kind((info >> 24) & 0x1F)
            except ValueError:
                raise BtfError(f"{self.source}: type {len(self._recs)} has unknown kind "
                               f"{(info >> 24) & 0x1F}: newer than this reader") from None
            vlen = info & 0xFFFF
            fixed, per = _TRAILER.get(kind, (0, 0))
            self._by_name_off[name_off].append(len(self._recs))
            self._recs.append(TypeRec(len(self._recs), kind, "", vlen, bool(info >> 31),
                                      size_or_type, pos))
            pos += common.size + fixed + per * vlen
        if pos != end:
            raise BtfError(f"{self.source}: the last type record runs past the type section")

    # --- strings and records ----------------------------------------------------------------------

    def string(self, offset: int) -> str:
        if not 0 <= offset < len(self._strings):
            raise BtfError(f"{self.source}: string offset {offset} is outside the string section")
        end = self._strings.index(b"\0", offset)
        return self._strings[offset:end].decode()

    def __len__(self) -> int:
        """Number of types (ids run from 1 to len)."""
        return len(self._recs) - 1

    def type(self, type_id: int) -> TypeRec:
        if not 0 < type_id < len(self._recs):
            raise BtfError(f"{self.source}: no type id {type_id}")
        rec = self._recs[type_id]
        assert rec is not None
        if not rec.name:
            name_off = self._unpack("I", rec.offset, self._types)[0]
            rec = TypeRec(rec.id, rec.kind, self.string(name_off), rec.vlen, rec.kind_flag,
                          rec.size_or_type, rec.offset)
            self._recs[type_id] = rec
        return rec

    def _name_offsets(self, name: str) -> list[int]:
        """Every offset at which `name` starts a string (BTF strings are deduplicated, but be safe)."""
        needle, out, start = b"\0" + name.encode() + b"\0", [], 0
        while (hit := self._strings.find(needle, start)) >= 0:
            out.append(hit + 1)
            start = hit + 1
        return out

    def ids(self, name: str, kind: Kind | None = None) -> list[int]:
        """Ids of the types called `name` (of `kind`, if given), in id order."""
        found = sorted(i for off in self._name_offsets(name) for i in self._by_name_off.get(off, ()))
        return [i for i in found if kind is None or self.type(i).kind == kind]

    def has(self, name: str, kind: Kind) -> bool:
        return bool(self.ids(name, kind))

    def find(self, name: str, *kinds: Kind) -> TypeRec:
        """The first type called `name` of one of `kinds` (a forward declaration never counts)."""
        for type_id in self.ids(name):
            rec = self.type(type_id)
            if rec.kind in kinds:
                return rec
        wanted = "/".join(k.name.lower() for k in kinds)
        raise BtfError(f"{self.source} has no {wanted} named {name!r}")

    def resolve(self, type_id: int) -> TypeRec:
        """The type behind typedefs and qualifiers (const, volatile, restrict, type tags)."""
        rec = self.type(type_id)
        for _ in range(MAX_TYPE_CHAIN):
            if rec.kind not in _MODIFIERS:
                return rec
            rec = self.type(rec.size_or_type)
        raise BtfError(f"{self.source}: type {type_id} is a chain of more than {MAX_TYPE_CHAIN} typedefs")

    def size(self, type_id: int) -> int:
        """sizeof() of a type."""
        rec = self.resolve(type_id)
        if rec.kind in (Kind.INT, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.FLOAT):
            return rec.size_or_type
        if rec.kind == Kind.PTR:
            return POINTER_SIZE
        if rec.kind == Kind.ARRAY:
            elem, _index, nelems = self._unpack("III", rec.offset + 12, self._types)
            return nelems * self.size(elem)
        raise BtfError(f"{self.source}: type {type_id} ({rec.kind.name}) has no size")

    # --- enums --------------------------------------------------------------------------------------

    def enum(self, name: str) -> dict[str, int]:
        """`{member: value}` of `enum name` (32- or 64-bit, signed when BTF says so)."""
        rec = self.find(name, Kind.ENUM, Kind.ENUM64)
        out: dict[str, int] = {}
        base = rec.offset + 12
        for i in range(rec.vlen):
            if rec.kind == Kind.ENUM:
                name_off, raw = self._unpack("II", base + 8 * i, self._types)
                value = raw - (1 << 32) if rec.kind_flag and raw >> 31 else raw
            else:
                name_off, lo, hi = self._unpack("III", base + 12 * i, self._types)
                value = (hi << 32) | lo
                if rec.kind_flag and hi >> 31:
                    value -= 1 << 64
            out[self.string(name_off)] = value
        return out

    # --- structs --------------------------------------------------------------------------------------

    def members(self, type_id: int) -> list[Field]:
        """Direct members of a struct/union (anonymous ones included, named "")."""
        rec = self.resolve(type_id)
        if rec.kind not in (Kind.STRUCT, Kind.UNION):
            raise BtfError(f"{self.source}: type {type_id} is a {rec.kind.name}, not a struct or union")
        out = []
        for i in range(rec.vlen):
            name_off, mtype, offset = self._unpack("III", rec.offset + 12 + 12 * i, self._types)
            bit_size, bit_offset = (offset >> 24, offset & 0xFFFFFF) if rec.kind_flag else (0, offset)
            out.append(Field(self.string(name_off), bit_offset, bit_size, mtype, self.size(mtype)))
        return out

    def _member_in(self, type_id: int, name: str) -> Field | None:
        """`name` among the members of `type_id`, looking into anonymous structs and unions."""
        for m in self.members(type_id):
            if m.name == name:
                return m
            if not m.name and self.resolve(m.type_id).kind in (Kind.STRUCT, Kind.UNION):
                inner = self._member_in(m.type_id, name)
                if inner is not None:
                    return Field(inner.name, m.bit_offset + inner.bit_offset, inner.bit_size,
                                 inner.type_id, inner.size)
        return None

    def member(self, struct_name: str, path: str) -> Field:
        """`struct struct_name` member `path` ("dev", or "a.b" for a member of a member)."""
        rec = self.find(struct_name, Kind.STRUCT, Kind.UNION)
        type_id, bit_offset, found = rec.id, 0, None
        for part in path.split("."):
            found = self._member_in(type_id, part)
            if found is None:
                raise BtfError(f"{self.source}: struct {struct_name} has no member {path!r} "
                               f"(no {part!r} in {self.type_name(type_id)})")
            bit_offset += found.bit_offset
            type_id = found.type_id
        assert found is not None
        return Field(path, bit_offset, found.bit_size, found.type_id, found.size)

    # --- functions ------------------------------------------------------------------------------------

    def func_params(self, name: str) -> list[tuple[str, str]]:
        """`[(param name, C type)]` of kernel function `name` (BtfError if BTF does not list it)."""
        func = self.find(name, Kind.FUNC)
        proto = self.type(func.size_or_type)
        out = []
        for i in range(proto.vlen):
            name_off, ptype = self._unpack("II", proto.offset + 12 + 8 * i, self._types)
            out.append((self.string(name_off), self.type_name(ptype)))
        return out

    def type_name(self, type_id: int) -> str:
        """A C spelling of a type, enough to recognise it: "struct sk_buff *", "u32", "void"."""
        if type_id == 0:
            return "void"
        rec = self.type(type_id)
        if rec.kind == Kind.PTR:
            return self.type_name(rec.size_or_type) + " *"
        if rec.kind in (Kind.CONST, Kind.VOLATILE, Kind.RESTRICT, Kind.TYPE_TAG):
            prefix = {Kind.CONST: "const ", Kind.VOLATILE: "volatile "}.get(rec.kind, "")
            return prefix + self.type_name(rec.size_or_type)
        tag = {Kind.STRUCT: "struct ", Kind.UNION: "union ", Kind.ENUM: "enum ", Kind.ENUM64: "enum "}
        return tag.get(rec.kind, "") + (rec.name or f"<anon {rec.kind.name.lower()}>")


@cache
def vmlinux() -> Btf:
    """The running kernel's BTF, parsed once per process."""
    return Btf.from_file(VMLINUX)
