"""Bulk map writes: many keys and values packed into one buffer and written in one syscall.

BCC writes one element per call through ctypes objects, about 20 us each; a policy of 100,000
rules is 400,000 elements. Here a run of elements is packed with `struct` at the offsets and
sizes of BCC's generated Key/Leaf types (the ABI header stays their only definition) and handed
to libbpf's bpf_map_update_batch / bpf_map_delete_batch. The kernel applies a batch element by
element in buffer order, exactly as that many single updates would be, so the order the write
planner chose (dataplane.matcher_plan) is kept. Where a kernel has no batch op for a map type,
the same buffers go through bpf_map_update_elem / bpf_map_delete_elem one element at a time.
"""

from __future__ import annotations

import ctypes
import errno
import struct
from collections.abc import Iterable, Sequence
from itertools import starmap
from typing import Any

from dataplane.kernel.libbpf import errno_of, libbpf

BPF_ANY = 0
# The kernel has no batch op for this map type (ENOTSUPP is the kernel's internal 524).
_NO_BATCH = {errno.EOPNOTSUPP, errno.ENOSYS, 524}
_INT_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _field_format(ctype: Any) -> str:
    """struct format of one field: fixed-width integers, or byte arrays packed from bytes."""
    if isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
        element: Any = ctype._type_
        if ctypes.sizeof(element) != 1:
            raise TypeError(f"{ctype.__name__}: only byte arrays are packed from bytes")
        return f"{ctype._length_}s"
    code = getattr(ctype, "_type_", None)
    if not isinstance(code, str) or code not in "bBhHiIlLqQ":
        raise TypeError(f"{getattr(ctype, '__name__', ctype)}: not an integer or byte-array field")
    fmt = _INT_FORMATS[ctypes.sizeof(ctype)]
    return fmt if code.isupper() else fmt.lower()


class Layout:
    """How rows of values become the bytes of a ctypes type (a BCC Key or Leaf).

    For a structure, `fields` names the members a row gives, in row order; members left out
    (reserved bytes, padding) are zero. For a scalar type (a __u32 key or value) a row is
    the value itself. Offsets and sizes come from the ctypes type, never from here.
    """

    def __init__(self, ctype: Any, fields: Sequence[str] = ()) -> None:
        self.size = ctypes.sizeof(ctype)
        self.fields = tuple(fields)
        self.scalar = not self.fields
        self._sizes = {name: int(getattr(ctype, name).size) for name in self.fields}
        if self.scalar:
            self._code = _field_format(ctype)
            fmt = "=" + self._code
        else:
            fmt = "=" + self._struct_format(ctype)
        self._struct = struct.Struct(fmt)
        if self._struct.size != self.size:
            raise TypeError(f"{ctype.__name__}: packed {self._struct.size} bytes, the type has {self.size}")

    def field_size(self, name: str) -> int:
        return self._sizes[name]

    @property
    def format(self) -> str:
        """The struct format the rows are packed with (padding as x)."""
        return self._struct.format

    def _struct_format(self, ctype: Any) -> str:
        types = {name: t for name, t, *_ in ctype._fields_}
        order = sorted(range(len(self.fields)), key=lambda i: getattr(ctype, self.fields[i]).offset)
        if order != list(range(len(self.fields))):
            raise TypeError(f"{ctype.__name__}: list the fields in memory order, got {self.fields}")
        fmt, pos = "", 0
        for name in self.fields:
            member = getattr(ctype, name)
            fmt += f"{member.offset - pos}x" if member.offset > pos else ""
            fmt += _field_format(types[name])
            pos = member.offset + member.size
        return fmt + (f"{self.size - pos}x" if self.size > pos else "")

    def pack(self, rows: Iterable[Any]) -> bytes:
        """The rows, back to back, as an array of the type."""
        if self.scalar:
            values = list(rows)
            return struct.pack(f"={len(values)}{self._code}", *values)
        return b"".join(starmap(self._struct.pack, rows))

    def zeros(self, count: int) -> bytes:
        return bytes(self.size * count)


class MapWriter:
    """Batched updates and deletes of one map, by fd; errors name the map and the element."""

    def __init__(self, fd: int, name: str, key_size: int, value_size: int) -> None:
        self.fd = fd
        self.name = name
        self.key_size = key_size
        self.value_size = value_size
        self.batch = True  # until the kernel says otherwise for this map

    def _count(self, data: bytes, size: int, what: str) -> int:
        count, rest = divmod(len(data), size)
        if rest:
            raise ValueError(f"{self.name}: {len(data)} bytes of {what} is not a whole number of "
                             f"{size}-byte items")
        return count

    def update(self, keys: bytes, values: bytes) -> None:
        """Writes keys[i] = values[i] in order (BPF_ANY: insert or replace)."""
        count = self._count(keys, self.key_size, "keys")
        if count != self._count(values, self.value_size, "values"):
            raise ValueError(f"{self.name}: {count} keys but {len(values) // self.value_size} values")
        if not count:
            return
        kbuf = ctypes.create_string_buffer(keys, len(keys))
        vbuf = ctypes.create_string_buffer(values, len(values))
        if self.batch:
            done = ctypes.c_uint32(count)
            rc = libbpf().bpf_map_update_batch(self.fd, kbuf, vbuf, ctypes.byref(done), None)
            if rc == 0:
                return
            err = errno_of(rc)
            if err not in _NO_BATCH and not (err == errno.EINVAL and done.value == 0):
                raise self._error(err, "update", done.value, count)
            # No batch op for this map type, or (EINVAL before the first element) perhaps no
            # batch commands at all: element by element, which names the element a genuine
            # EINVAL is about; if every element goes through, batches are off for this map.
            self._update_each(kbuf, vbuf, count)
            self.batch = False
            return
        self._update_each(kbuf, vbuf, count)

    def _update_each(self, kbuf: ctypes.Array, vbuf: ctypes.Array, count: int) -> None:
        update = libbpf().bpf_map_update_elem
        kaddr, vaddr = ctypes.addressof(kbuf), ctypes.addressof(vbuf)
        ks, vs = self.key_size, self.value_size
        for i in range(count):
            rc = update(self.fd, kaddr + i * ks, vaddr + i * vs, BPF_ANY)
            if rc != 0:
                raise self._error(errno_of(rc), "update", i, count)

    def delete(self, keys: bytes) -> None:
        """Deletes the keys in order; keys already absent are skipped (deleting is idempotent)."""
        count = self._count(keys, self.key_size, "keys")
        if not count:
            return
        kbuf = ctypes.create_string_buffer(keys, len(keys))
        kaddr, ks = ctypes.addressof(kbuf), self.key_size
        start = 0
        while start < count and self.batch:
            done = ctypes.c_uint32(count - start)
            rc = libbpf().bpf_map_delete_batch(self.fd, kaddr + start * ks, ctypes.byref(done), None)
            if rc == 0:
                return
            err = errno_of(rc)
            if err == errno.ENOENT:
                start += done.value + 1  # that one was gone already
                continue
            if err in _NO_BATCH or (err == errno.EINVAL and done.value == 0):
                start += done.value
                self._delete_each(kaddr, start, count)  # as for update: it names a genuine EINVAL
                self.batch = False
                return
            raise self._error(err, "delete", start + done.value, count)
        self._delete_each(kaddr, start, count)

    def _delete_each(self, kaddr: int, start: int, count: int) -> None:
        delete = libbpf().bpf_map_delete_elem
        for i in range(start, count):
            rc = delete(self.fd, kaddr + i * self.key_size)
            if rc != 0 and errno_of(rc) != errno.ENOENT:
                raise self._error(errno_of(rc), "delete", i, count)

    def _error(self, err: int, what: str, index: int, count: int) -> OSError:
        return OSError(err, f"{self.name}: {what} of element {index} of {count} refused by the kernel: "
                            f"{errno.errorcode.get(err, err)}")
