"""Bulk map access: many keys and values in one buffer, written (or read) in one syscall.

BCC writes one element per call through ctypes objects, about 20 us each; a policy of 100,000
rules is hundreds of thousands of elements. Here a run of elements, packed by the caller (numpy
arrays of the ABI layouts, dataplane.abi.struct_dtype), goes to libbpf's bpf_map_update_batch /
bpf_map_delete_batch. The kernel applies a batch element by element in buffer order, exactly as
that many single updates would be, so the order the writer chose (dataplane.match.table) is
kept. Where a kernel has no batch op for a map type, the same buffers go through
bpf_map_update_elem / bpf_map_delete_elem one element at a time.

The caller's bytes are handed to the kernel as they are (the kernel only reads them), never
copied into a ctypes buffer: a buffer of a new size is a new ctypes array type, and every such
type, once unused, is cyclic garbage for Python's collector. Buffers the kernel writes (lookups)
are of types each writer makes once.
"""

from __future__ import annotations

import ctypes
import errno

from dataplane.kernel.libbpf import errno_of, libbpf

BPF_ANY = 0
# The kernel has no batch op for this map type (ENOTSUPP is the kernel's internal 524).
_NO_BATCH = {errno.EOPNOTSUPP, errno.ENOSYS, 524}


class MapWriter:
    """Batched updates and deletes of one map, by fd; errors name the map and the element."""

    def __init__(self, fd: int, name: str, key_size: int, value_size: int) -> None:
        self.fd = fd
        self.name = name
        self.key_size = key_size
        self.value_size = value_size
        self.batch = True  # until the kernel says otherwise for this map
        self._types: dict[int, type[ctypes.Array[ctypes.c_char]]] = {}  # size -> buffer type

    def _buffer(self, size: int) -> ctypes.Array[ctypes.c_char]:
        """A zeroed buffer the kernel writes into, of a type made once per size and writer."""
        buftype = self._types.get(size)
        if buftype is None:
            buftype = self._types[size] = ctypes.c_char * size
        return buftype()

    def _count(self, data: bytes, size: int, what: str) -> int:
        count, rest = divmod(len(data), size)
        if rest:
            raise ValueError(f"{self.name}: {len(data)} bytes of {what} is not a whole number of "
                             f"{size}-byte items")
        return count

    def update(self, keys: bytes, values: bytes) -> None:
        """Writes keys[i] = values[i] in order (BPF_ANY: insert or replace)."""
        keys, values = bytes(keys), bytes(values)  # (bytes already: the same object, no copy)
        count = self._count(keys, self.key_size, "keys")
        if count != self._count(values, self.value_size, "values"):
            raise ValueError(f"{self.name}: {count} keys but {len(values) // self.value_size} values")
        if not count:
            return
        if self.batch:
            done = ctypes.c_uint32(count)
            rc = libbpf().bpf_map_update_batch(self.fd, keys, values, ctypes.byref(done), None)
            if rc == 0:
                return
            err = errno_of(rc)
            if err not in _NO_BATCH and not (err == errno.EINVAL and done.value == 0):
                raise self._error(err, "update", done.value, count)
            # No batch op for this map type, or (EINVAL before the first element) perhaps no
            # batch commands at all: element by element, which names the element a genuine
            # EINVAL is about; if every element goes through, batches are off for this map.
            self._update_each(keys, values, count)
            self.batch = False
            return
        self._update_each(keys, values, count)

    def _update_each(self, keys: bytes, values: bytes, count: int) -> None:
        update = libbpf().bpf_map_update_elem
        kaddr, vaddr = _address(keys), _address(values)
        ks, vs = self.key_size, self.value_size
        for i in range(count):
            rc = update(self.fd, kaddr + i * ks, vaddr + i * vs, BPF_ANY)
            if rc != 0:
                raise self._error(errno_of(rc), "update", i, count)

    def delete(self, keys: bytes) -> None:
        """Deletes the keys in order; keys already absent are skipped (deleting is idempotent)."""
        keys = bytes(keys)  # (bytes already: the same object, no copy)
        count = self._count(keys, self.key_size, "keys")
        if not count:
            return
        kaddr, ks = _address(keys), self.key_size
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

    def lookup(self, key: bytes) -> bytes:
        """The value of one element (for a per-CPU map: every CPU's, back to back)."""
        value = self._buffer(self.value_size)
        rc = libbpf().bpf_map_lookup_elem(self.fd, key, value)
        if rc != 0:
            raise self._error(errno_of(rc), "lookup", 0, 1)
        return value.raw

    def read_all(self, chunk: int = 4096) -> tuple[bytes, bytes]:
        """(keys, values) of every element, back to back, in one pass of batched lookups (element
        by element where the kernel has no batch op). For an array: every index."""
        lib = libbpf()
        keys, values = [], []
        token = self._buffer(max(self.key_size, 8))
        kbuf = self._buffer(self.key_size * chunk)
        vbuf = self._buffer(self.value_size * chunk)
        first = True
        while self.batch:
            count = ctypes.c_uint32(chunk)
            rc = lib.bpf_map_lookup_batch(self.fd, None if first else token, token, kbuf, vbuf,
                                          ctypes.byref(count), None)
            err = errno_of(rc) if rc else 0
            if err and err != errno.ENOENT:
                if first and (err in _NO_BATCH or err == errno.EINVAL):
                    self.batch = False
                    break
                raise self._error(err, "lookup", 0, chunk)
            keys.append(kbuf.raw[: count.value * self.key_size])
            values.append(vbuf.raw[: count.value * self.value_size])
            first = False
            if err == errno.ENOENT:  # that was the last chunk
                return b"".join(keys), b"".join(values)
        return self._read_each()

    def _read_each(self) -> tuple[bytes, bytes]:
        lib = libbpf()
        keys, values = [], []
        key = self._buffer(self.key_size)
        value = self._buffer(self.value_size)
        previous: bytes | None = None
        while lib.bpf_map_get_next_key(self.fd, previous, key) == 0:
            if lib.bpf_map_lookup_elem(self.fd, key, value) == 0:
                keys.append(key.raw)
                values.append(value.raw)
            previous = key.raw
        return b"".join(keys), b"".join(values)

    def _error(self, err: int, what: str, index: int, count: int) -> OSError:
        return OSError(err, f"{self.name}: {what} of element {index} of {count} refused by the kernel: "
                            f"{errno.errorcode.get(err, err)}")


def _address(data: bytes) -> int:
    """Where the bytes object's contents are (valid while the caller holds it)."""
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
