"""BPF_PROG_TEST_RUN harness: one packet through a loaded program, without a network.

BCC has no wrapper for it; Debian's libbpf1 exports bpf_prog_test_run_opts, called here
(dataplane.kernel.libbpf) on the fd of a BCC-loaded program. Gives the verdict, the output bytes, the XDP
metadata (or the skb mark for TC) and, with repeat > 1, the kernel-measured ns per packet.
"""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass

from dataplane.kernel.libbpf import libbpf

# The kernel copies back from data_meta onwards: leave room for headers an adjust_head grew.
_OUT_HEADROOM = 512


class TestRunOpts(ctypes.Structure):
    # struct bpf_test_run_opts (libbpf >= 0.7); `sz` makes libbpf accept older/newer layouts.
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class XdpMd(ctypes.Structure):
    # struct xdp_md (UAPI). In test runs, data/data_end are offsets and data_meta must be 0.
    _fields_ = [
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    ]


# struct __sk_buff is 192 bytes in the UAPI; `mark` is its third u32. Only the fields the
# kernel lets a test run set or read back are touched.
_SKB_SIZE = 192
_SKB_MARK_OFFSET = 8


@dataclass(frozen=True)
class XdpResult:
    action: int       # XDP_DROP=1, XDP_PASS=2, ...
    data: bytes       # the packet after the program (decapped, rewritten)
    meta: bytes       # XDP metadata the program put in front of the packet
    duration_ns: int  # average per repetition, measured by the kernel


@dataclass(frozen=True)
class SkbResult:
    retval: int
    data: bytes
    mark: int
    duration_ns: int


def _run(prog_fd: int, packet: bytes, ctx_in: ctypes.Array | ctypes.Structure,
         ctx_out: ctypes.Array | ctypes.Structure, repeat: int) -> tuple[TestRunOpts, bytes]:
    data_in = ctypes.create_string_buffer(packet, len(packet))
    out_size = len(packet) + _OUT_HEADROOM
    data_out = ctypes.create_string_buffer(out_size)
    opts = TestRunOpts(
        sz=ctypes.sizeof(TestRunOpts),
        data_in=ctypes.cast(data_in, ctypes.c_void_p),
        data_out=ctypes.cast(data_out, ctypes.c_void_p),
        data_size_in=len(packet),
        data_size_out=out_size,
        ctx_in=ctypes.cast(ctypes.pointer(ctx_in), ctypes.c_void_p),
        ctx_out=ctypes.cast(ctypes.pointer(ctx_out), ctypes.c_void_p),
        ctx_size_in=ctypes.sizeof(ctx_in),
        ctx_size_out=ctypes.sizeof(ctx_out),
        repeat=repeat,
    )
    rc = libbpf().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts))
    if rc != 0:
        err = ctypes.get_errno() or -rc
        raise OSError(err, f"BPF_PROG_TEST_RUN on fd {prog_fd}: {errno.errorcode.get(err, err)}")
    return opts, data_out.raw[: opts.data_size_out]


def run_xdp(prog_fd: int, packet: bytes, repeat: int = 1, ifindex: int = 0) -> XdpResult:
    """Runs an XDP program on `packet`; repeat > 1 measures, the result is from the last run."""
    ctx_in = XdpMd(data=0, data_end=len(packet), data_meta=0, ingress_ifindex=ifindex)
    ctx_out = XdpMd()
    opts, out = _run(prog_fd, packet, ctx_in, ctx_out, repeat)
    meta_len = ctx_out.data  # offsets are relative to data_meta on the way out
    return XdpResult(opts.retval, out[meta_len:], out[:meta_len], opts.duration)


def run_skb(prog_fd: int, packet: bytes, mark: int = 0, repeat: int = 1) -> SkbResult:
    """Runs a TC (sched_cls) program on `packet`; returns its verdict and the skb mark."""
    ctx_in = (ctypes.c_uint8 * _SKB_SIZE)()
    ctypes.c_uint32.from_buffer(ctx_in, _SKB_MARK_OFFSET).value = mark
    ctx_out = (ctypes.c_uint8 * _SKB_SIZE)()
    opts, out = _run(prog_fd, packet, ctx_in, ctx_out, repeat)
    out_mark = ctypes.c_uint32.from_buffer(ctx_out, _SKB_MARK_OFFSET).value
    return SkbResult(opts.retval, out, out_mark, opts.duration)
