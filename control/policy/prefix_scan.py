"""Canonical IPv4 prefix texts ("192.0.2.0/24") read from bytes, many at once (pure numpy).

`scan_ipv4(buf, start, length)` looks at the texts buf[start[i]:start[i] + length[i]] and says
which are a canonical IPv4 prefix: four decimal octets 0-255 and a decimal length 0-32, each
without leading zeros, joined by three dots and a slash, nothing else. Those it reads; anything
else (IPv6, a bare address, a mistake, an unusual spelling) is left to the caller's exact parser
(control.policy.acl_decode hands it to the model's own type), so this only has to be right about
the texts it accepts, which inet_pton and ipaddress read the same way.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
LONGEST = len("255.255.255.255/32")
PAD = LONGEST + 1  # bytes a buffer must hold past its last text
SHORTEST = len("0.0.0.0/0")
_ZERO, _NINE, _DOT, _SLASH = (ord(c) for c in "09./")
_OCTETS = 4
_DIGITS = b"0123456789"


def scan_ipv4(buf: npt.NDArray[np.uint8], start: I64, length: I64
              ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """(accepted, addresses (n, 4), prefix lengths) of the texts; rows not accepted are zero.
    `buf` must extend PAD bytes past every text (pad it).

    The texts of plausible length are joined, one per line: when the whole batch has the shape
    (three dots then a slash between digits on every line: one pass of the bytes in C; no number
    empty, longer than three digits or with a leading zero), its numbers are read in one go from
    where each ends; otherwise each text is read character by character (_scan_columns)."""
    n = len(start)
    rows = np.flatnonzero((length >= SHORTEST) & (length <= LONGEST))
    if rows.size and int(start[rows].max()) + PAD > len(buf):
        raise ValueError("scan_ipv4: the buffer must extend PAD bytes past every text")
    blob = _lines(buf, start[rows], length[rows])
    values = _numbers(blob, len(rows))
    if values is None:
        return _scan_columns(buf, start, length)
    good = (values[:, :_OCTETS] <= 255).all(axis=1) & (values[:, _OCTETS] <= 32)
    ok = np.zeros(n, bool)
    ok[rows[good]] = True
    addr = np.zeros((n, _OCTETS), dtype=np.uint8)
    plen = np.zeros(n, dtype=np.uint8)
    addr[rows[good]] = values[good, :_OCTETS]
    plen[rows[good]] = values[good, _OCTETS]
    return ok, addr, plen


def _lines(buf: npt.NDArray[np.uint8], start: I64, length: I64) -> bytes:
    """The texts (at most LONGEST bytes each), each followed by a newline."""
    width = LONGEST + 1
    text = np.lib.stride_tricks.sliding_window_view(buf, width)[start]  # a copy: rows of `width` bytes
    text[np.arange(len(start)), length] = ord("\n")
    return text[np.arange(width) <= length[:, None]].tobytes()


def _numbers(blob: bytes, k: int) -> npt.NDArray[np.int64] | None:
    """(k, 5) numbers of k lines of canonical shape, or None when a line is not."""
    if blob.translate(None, _DIGITS) != b".../\n" * k:
        return None  # every line: digits, three dots, digits, a slash, digits (numbers may be empty)
    chars = np.frombuffer(blob, dtype=np.uint8)
    ends = np.flatnonzero(chars < _ZERO)  # where each number ends: at . / or the newline
    size = np.diff(ends, prepend=-1) - 1
    if k and (size.min() < 1 or size.max() > 3):
        return None  # an empty number, or one of four digits or more (not a canonical prefix)
    first = chars[ends - size]
    if ((size > 1) & (first == _ZERO)).any():
        return None  # a leading zero
    value = chars[ends - 1].astype(np.int16) - _ZERO  # the last digit, then the ones before it
    value += (chars[ends - 2].astype(np.int16) - _ZERO) * 10 * (size >= 2)
    value += (chars[ends - 3].astype(np.int16) - _ZERO) * 100 * (size >= 3)
    return value.astype(np.int64).reshape(k, _OCTETS + 1)


def _scan_columns(buf: npt.NDArray[np.uint8], start: I64, length: I64
                  ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """scan_ipv4 for a batch with odd texts: one pass over the characters, column by column
    across every text: a number is built digit by digit and stored at each separator, which
    must be a dot for the first three and the slash for the fourth."""
    n = len(start)
    rows = np.flatnonzero((length >= SHORTEST) & (length <= LONGEST))
    text = np.lib.stride_tricks.sliding_window_view(buf, LONGEST)[start[rows]].T  # column j: char j
    size = length[rows]
    k = len(rows)
    number = np.zeros(k, np.int16)  # the number being read (capped: more digits are refused anyway)
    digits = np.zeros(k, np.int8)  # its digits so far
    zero_first = np.zeros(k, bool)  # it began with 0
    part = np.zeros(k, np.int8)  # which number: 0-3 the octets, 4 the length
    bad = np.zeros(k, bool)
    values = np.zeros((5, k), np.int16)
    at = np.arange(k)
    for j in range(int(size.max(initial=0))):
        ch = text[j]
        inside = j < size
        digit = (ch >= _ZERO) & (ch <= _NINE) & inside
        dot, slash = (ch == _DOT) & inside, (ch == _SLASH) & inside
        sep = dot | slash
        bad |= inside & ~digit & ~sep
        bad |= digit & zero_first  # a digit after a leading 0
        zero_first |= digit & (digits == 0) & (ch == _ZERO)
        number = np.where(digit, np.minimum(number * 10 + (ch.astype(np.int16) - _ZERO), 1000), number)
        digits += digit
        bad |= sep & ((digits == 0) | (slash != (part == 3)) | (part > 3))
        store = np.flatnonzero(sep & (part <= 3))
        values[part[store], at[store]] = number[store]
        part += sep
        number[sep], digits[sep], zero_first[sep] = 0, 0, False
    values[4] = number
    bad |= (part != 4) | (digits == 0) | (values[:4] > 255).any(axis=0) | (values[4] > 32)
    ok = np.zeros(n, bool)
    good = rows[~bad]
    ok[good] = True
    addr = np.zeros((n, _OCTETS), dtype=np.uint8)
    plen = np.zeros(n, dtype=np.uint8)
    addr[good] = values[:4, ~bad].T
    plen[good] = values[4, ~bad]
    return ok, addr, plen
