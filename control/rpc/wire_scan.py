"""Many protobuf messages of one type read from their wire encoding at once, a field at a time over
every message (numpy), instead of a Python object per message and an attribute read per field.

    wire = Wire(policy.SerializeToString())
    acl = wire.entries(policy_field)                 # (start, end) of each `repeated` element
    rules = wire.columns(acl, pb2.AclRule.DESCRIPTOR)
    rules["id"].value, rules["priority"].present, rules["match"].start ...

Each round of `columns` reads one field of every message not yet at its end: the tag, then a
varint value or a length and the payload after it. Semantics are protobuf's, for the messages
this is used on (scalars, strings and singular sub-messages, no repeated fields): a scalar given
twice keeps the last value, an unknown field or a field of an unexpected wire type is skipped
(upb keeps it aside the same way), `optional` fields and sub-messages are present when encoded.
A singular sub-message given twice (which a parser merges) and anything malformed raise
NotPlain: the caller reads those messages the ordinary way. Bytes re-serialized by upb from a
parsed message are never either (it merges and writes fields once).

Values are the raw 64-bit varints; `uint32`/`int32`/`bool` as the parser reads them: uint32()
and int32() keep the low 32 bits (int32 signed), a bool is any non-zero value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

VARINT, I64_WIRE, LEN, I32_WIRE = 0, 1, 2, 5  # wire types (3 and 4, groups, are refused)
_VARINT_MAX = 10  # bytes of the longest varint (64 bits)
PAD = 32  # zero bytes after the data in Wire.buf
_TYPE_MESSAGE, _TYPE_STRING, _TYPE_BYTES = 11, 9, 12  # FieldDescriptor.TYPE_*
_VARINT_TYPES = {3, 4, 5, 8, 13, 14}  # int64, uint64, int32, bool, uint32, enum (not sint: zigzag)


class NotPlain(ValueError):
    """An encoding this reader does not take (the caller falls back to a parsed message)."""


@dataclass
class Column:
    """One field of n messages: whether each encodes it, and its varint (0 when absent) or its
    payload's place (start, length) in the buffer (LEN fields)."""

    present: npt.NDArray[np.bool_]
    value: U64
    start: I64
    length: I64

    @classmethod
    def sized(cls, n: int) -> Column:
        return cls(np.zeros(n, bool), np.zeros(n, np.uint64), np.zeros(n, np.int64), np.zeros(n, np.int64))

    def uint32(self) -> I64:
        return (self.value & np.uint64(0xFFFFFFFF)).astype(np.int64)

    def int32(self) -> I64:
        low = self.uint32()
        return np.where(low >= 1 << 31, low - (1 << 32), low)

    def flag(self) -> npt.NDArray[np.bool_]:
        return self.value != 0

    def end(self) -> I64:
        return self.start + self.length


class Wire:
    """An encoded message, for reading many of its (nested) messages at once."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        # padded so that a varint read past a message's end stays in the array (then refused),
        # and so that a reader of fixed-width windows of the strings (prefix_scan) stays in it
        self.buf = np.frombuffer(data + bytes(PAD), dtype=np.uint8)

    def varints(self, pos: I64) -> tuple[U64, I64]:
        """(values, positions after them) of the varints at `pos`."""
        b = self.buf[pos]
        value = (b & 0x7F).astype(np.uint64)
        after = pos + 1
        more = np.flatnonzero(b >= 0x80)
        shift = 7
        while more.size:
            if shift >= 7 * _VARINT_MAX:
                raise NotPlain("a varint longer than 10 bytes")
            b = self.buf[after[more]]
            value[more] |= (b & 0x7F).astype(np.uint64) << np.uint64(shift)
            after[more] += 1
            more = more[b >= 0x80]
            shift += 7
        return value, after

    def entries(self, number: int, start: int = 0, end: int | None = None) -> tuple[I64, I64]:
        """(start, end) of the payload of every LEN field `number` of the message at start..end
        (the whole buffer by default), in order: the elements of a repeated message field.
        One pass, field by field (each element's place depends on the one before), with the
        usual one-byte tag and one- or two-byte length read inline."""
        data, pos, stop = self.data, start, self.size if end is None else end
        wanted = number << 3 | LEN
        starts: list[int] = []
        ends: list[int] = []
        try:
            while pos < stop:
                tag = data[pos]
                if tag == wanted:
                    b = data[pos + 1]
                    if b < 0x80:
                        length, pos = b, pos + 2
                    elif data[pos + 2] < 0x80:
                        length, pos = (b & 0x7F) | data[pos + 2] << 7, pos + 3
                    else:
                        length, pos = _varint(data, pos + 1)
                    starts.append(pos)
                    pos += length
                    ends.append(pos)
                    continue
                tag, pos = _varint(data, pos)
                pos = _skip(data, pos, tag)
                if tag >> 3 == number:  # a multi-byte tag for this very field (not a canonical one)
                    raise NotPlain(f"field {number} with tag bytes of {tag}")
        except IndexError:
            raise NotPlain("a field runs past the end of the message") from None
        if pos != stop:
            raise NotPlain("a field runs past the end of its message")
        return np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)

    def columns(self, start: I64, end: I64, descriptor: Any, at: I64 | None = None, size: int | None = None
                ) -> dict[str, Column]:
        """Every field of `descriptor` (a message Descriptor without repeated fields) of the
        messages at start[i]..end[i], by name: row i of each column, or row at[i] of columns of
        `size` rows (the messages of a sub-message field, in the rows of their outer messages).

        First one pass in field-number order, each field read where it is next (what encoders
        write, and all upb re-serializes: a few numpy steps per field); then, for messages not
        at their end after it (unknown fields, another order, a field given twice), one field
        per round whatever it is, until every message is read."""
        n = len(start)
        at = np.arange(n) if at is None else at
        fields = {f.number: f for f in descriptor.fields}
        if any(f.is_repeated or f.type not in (*_VARINT_TYPES, _TYPE_MESSAGE, _TYPE_STRING, _TYPE_BYTES)
               for f in fields.values()):
            raise NotPlain(f"{descriptor.name} has repeated or fixed-width fields")
        out = {f.name: Column.sized(n if size is None else size) for f in fields.values()}
        wants = {number: LEN if f.type in (_TYPE_MESSAGE, _TYPE_STRING, _TYPE_BYTES) else VARINT
                 for number, f in fields.items()}
        cursor = start.copy()
        for number in sorted(fields):
            tag = number << 3 | wants[number]
            if tag >= 0x80:
                continue  # a two-byte tag: left to the rounds
            rows = np.flatnonzero((self.buf[cursor] == tag) & (cursor < end))
            if rows.size:
                cursor[rows] = self._read(at[rows], cursor[rows] + 1, end[rows], fields[number],
                                          wants[number], out[fields[number].name])
        rows = np.arange(n)
        while True:
            rows = rows[cursor[rows] < end[rows]]
            if not rows.size:
                return out
            cursor[rows] = self._field(at[rows], cursor[rows], end[rows], fields, wants, out)

    def _read(self, rows: I64, pos: I64, end: I64, field: Any, want: int, col: Column) -> I64:
        """The values of one field, of wire type `want`, at `pos` (past its tag), into rows `rows`
        of `col`; where each one ends."""
        value, after = self.varints(pos)
        if want == LEN:
            room = end - after
            if (room < 0).any() or (value > room.astype(np.uint64)).any():
                raise NotPlain("a field runs past the end of its message")
            if field.type == _TYPE_MESSAGE and col.present[rows].any():
                raise NotPlain(f"{field.name} given twice (a parser merges the two)")
            col.start[rows], col.length[rows] = after, value.astype(np.int64)
            after = after + value.astype(np.int64)
        elif (after > end).any():
            raise NotPlain("a field runs past the end of its message")
        else:
            col.value[rows] = value
        col.present[rows] = True
        return after

    def _field(self, rows: I64, pos: I64, end: I64, fields: dict[int, Any], wants: dict[int, int],
               out: dict[str, Column]) -> I64:
        """Reads the field at `pos` of each message, whatever it is, into rows `rows` of `out`;
        where each one ends (an unknown field, or one of an unexpected wire type, is skipped)."""
        tag, after = self.varints(pos)
        number, wire_type = (tag >> np.uint64(3)).astype(np.int64), (tag & np.uint64(7)).astype(np.int64)
        if not np.isin(wire_type, (VARINT, LEN, I64_WIRE, I32_WIRE)).all():
            raise NotPlain("a group (wire types 3 and 4)")
        nxt = np.zeros(len(rows), dtype=np.int64)
        known = np.zeros(len(rows), dtype=bool)
        for num in np.unique(number).tolist():
            f = fields.get(num)
            if f is not None:
                mine = np.flatnonzero((number == num) & (wire_type == wants[num]))
                nxt[mine] = self._read(rows[mine], after[mine], end[mine], f, wants[num], out[f.name])
                known[mine] = True
        skip = np.flatnonzero(~known)
        if skip.size:
            nxt[skip] = self._skip(after[skip], end[skip], wire_type[skip])
        return nxt

    def _skip(self, at: I64, end: I64, wire_type: I64) -> I64:
        """Past the values of fields this reader does not keep."""
        out = at + np.where(wire_type == I64_WIRE, 8, np.where(wire_type == I32_WIRE, 4, 0))
        varint = np.flatnonzero(wire_type == VARINT)
        out[varint] = self.varints(at[varint])[1]
        sized = np.flatnonzero(wire_type == LEN)
        length, after = self.varints(at[sized])
        room = end[sized] - after
        if (room < 0).any() or (length > room.astype(np.uint64)).any():
            raise NotPlain("a field runs past the end of its message")
        out[sized] = after + length.astype(np.int64)
        if (out > end).any():
            raise NotPlain("a field runs past the end of its message")
        return out

    def texts(self, col: Column, rows: npt.NDArray[np.intp]) -> list[str]:
        """The strings of a string column at `rows` (UTF-8, as the parser checked them)."""
        data = self.data
        return [data[s:s + n].decode() for s, n in zip(col.start[rows].tolist(), col.length[rows].tolist(),
                                                         strict=True)]


def _skip(data: bytes, pos: int, tag: int) -> int:
    """Past the value of a field whose tag was read."""
    wire_type = tag & 7
    if wire_type == VARINT:
        return _varint(data, pos)[1]
    if wire_type == LEN:
        length, pos = _varint(data, pos)
        return pos + length
    if wire_type in (I64_WIRE, I32_WIRE):
        return pos + (8 if wire_type == I64_WIRE else 4)
    raise NotPlain(f"wire type {wire_type}")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """One varint of `data` at `pos` (plain Python: the top-level walk is one field at a time)."""
    b = data[pos]
    if b < 0x80:
        return b, pos + 1
    value, shift = b & 0x7F, 7
    for i in range(pos + 1, min(pos + _VARINT_MAX, len(data))):
        b = data[i]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i + 1
        shift += 7
    raise NotPlain("a varint runs past the end, or is longer than 10 bytes")
