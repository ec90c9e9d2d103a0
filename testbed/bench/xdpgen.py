"""An XDP-frame traffic generator: frames that reach the receiver the way a NIC's would.

trafgen sends skbs. veth hands an skb to the peer's XDP program only after copying it into a
fresh page (the sender's skb has no XDP headroom), and after XDP_PASS builds a new skb from
that page: a cost no NIC driver pays, since a driver runs XDP on its own receive buffers. This
generator sends XDP frames instead, as xdp-trafficgen does, through BPF_PROG_TEST_RUN in
live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES, Linux >= 5.18): a one-line XDP program redirects
each repetition of the frame out of the sender's veth, whose ndo_xdp_xmit puts the xdp_frame
straight on the receiver's ring. The receiver's XDP program then runs on that frame without a
copy, like on a NIC. (xdp-trafficgen itself only writes plain UDP/TCP, not tunnel frames.)

veth accepts redirected frames only while the receiving end has an XDP program (or GRO
enabled): a path measured "without XDP" must attach a `return XDP_PASS` there (the cost any
packet pays on a NIC with an XDP hook, which testbed.bench.cost measures as the floor).

Run as `python -m testbed.bench.xdpgen --netns NS --dev s0 --frame HEX --cpu N`: one process
per CPU, each pinned, sending until SIGINT/SIGTERM. testbed.bench.load starts and stops them.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import signal
import socket
import sys
from types import FrameType
from typing import Any

from dataplane.kernel.libbpf import libbpf
from dataplane.kernel.testrun import TestRunOpts, XdpMd
from testbed.netns import NETNS_DIR, setns

BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1  # include/uapi/linux/bpf.h
BATCH = 64          # frames the kernel builds and flushes at once (its default, NAPI_POLL_WEIGHT)
REPEAT = 1 << 20    # repetitions per syscall: ~0.5 s at the rates seen here, so a stop is prompt
REDIRECT_FUNC = "tg_gen_redirect"

# Live-frames pages are filled from the input once, when the kernel's page pool creates them,
# and then recycled: a receiver that writes into a frame (a decap writes its XDP metadata over
# the stripped outer headers) would change what the next send of that page carries. So the
# program writes the whole frame again before each redirect.
REDIRECT_SOURCE = """
struct tg_gen_frame {{ __u8 bytes[{length}]; }};
BPF_ARRAY(tg_gen_frame, struct tg_gen_frame, 1);

int {func}(struct xdp_md *ctx)
{{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int zero = 0;
	struct tg_gen_frame *tpl = tg_gen_frame.lookup(&zero);

	if (!tpl || data + sizeof(*tpl) > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(data, tpl->bytes, sizeof(*tpl));
	return bpf_redirect({ifindex}, 0);
}}
"""

_stopping = False


LIVE_FRAMES_RUN = "live-frames BPF_PROG_TEST_RUN"
# What a sender reports where the kernel refuses the mode (some sandboxes do): nothing can be sent.
LIVE_FRAMES_REFUSED = f"{LIVE_FRAMES_RUN}: {os.strerror(1)}"
LIVE_FRAMES_NOT_MEASURED = ("not measured: this kernel refuses BPF_PROG_TEST_RUN's live-frames mode (EPERM), "
                            "which the XDP-frame sender (testbed.bench.xdpgen) needs")


def _stop(_sig: int, _frame: FrameType | None) -> None:
    global _stopping
    _stopping = True


def redirect_program(ifindex: int, frame: bytes) -> tuple[Any, int]:
    from bcc import BPF

    src = REDIRECT_SOURCE.format(func=REDIRECT_FUNC, ifindex=ifindex, length=len(frame))
    bpf = BPF(text=src.encode())
    template = bpf[b"tg_gen_frame"]
    leaf = template.Leaf()
    ctypes.memmove(ctypes.addressof(leaf), frame, len(frame))
    template[template.Key(0)] = leaf
    return bpf, int(bpf.load_func(REDIRECT_FUNC.encode(), BPF.XDP).fd)


def send(ifindex: int, frame: bytes) -> int:
    """Sends `frame` out of `ifindex` (in the calling thread's namespace) until stopped;
    returns how many frames the kernel ran through the redirect."""
    bpf, fd = redirect_program(ifindex, frame)
    data = ctypes.create_string_buffer(frame, len(frame))
    ctx = XdpMd(data=0, data_end=len(frame), ingress_ifindex=ifindex)
    sent = 0
    while not _stopping:
        opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts), data_in=ctypes.cast(data, ctypes.c_void_p),
                            data_size_in=len(frame), ctx_in=ctypes.cast(ctypes.pointer(ctx), ctypes.c_void_p),
                            ctx_size_in=ctypes.sizeof(ctx), repeat=REPEAT,
                            flags=BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=BATCH)
        rc = libbpf().bpf_prog_test_run_opts(fd, ctypes.byref(opts))
        if rc != 0:
            err = ctypes.get_errno() or -rc
            if err == errno.EINTR:  # a stop signal arrived mid-run
                continue
            raise OSError(err, f"{LIVE_FRAMES_RUN}: {os.strerror(err)}")
        sent += REPEAT
    del bpf
    return sent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.bench.xdpgen", description=__doc__.splitlines()[0])
    ap.add_argument("--netns", required=True, help="sender namespace (a name under /run/netns)")
    ap.add_argument("--dev", required=True, help="interface to send on, inside --netns")
    ap.add_argument("--frame", required=True, help="the Ethernet frame, hex")
    ap.add_argument("--cpu", type=int, required=True, help="CPU to pin this sender to")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    os.sched_setaffinity(0, {args.cpu})
    fd = os.open(os.path.join(NETNS_DIR, args.netns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)  # one thread, so the whole process moves
    finally:
        os.close(fd)
    ifindex = socket.if_nametoindex(args.dev)  # a socket made after setns: the sender's device
    try:
        send(ifindex, bytes.fromhex(args.frame))
    except OSError as exc:
        print(f"xdpgen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
