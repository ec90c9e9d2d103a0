"""Other XDP programs on Tidegate's interfaces (docs/dataplane.md, "Other XDP programs"): one it
did not load is never replaced silently, a libxdp dispatcher is recognised, and a pinned program
runs behind Tidegate on every packet it passes (next_program).

Each test builds its own pair of namespaces joined by a veth: `a` runs Tidegate (and the other
programs), `b` sends. The second program is real: a BCC-compiled XDP program that counts what
reaches it per UDP destination port and drops port 9, pinned under the test's own bpffs root.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dataplane import abi
from dataplane.acl import acl_rule
from dataplane.kernel.attach import XdpOccupied, attach_xdp, detach_xdp, xdp_programs
from dataplane.kernel.build_settings import DataplaneSettings
from dataplane.kernel.interface import Dataplane
from dataplane.map_config import RuntimeConfig
from testbed import topology as t
from testbed.netns import Namespace, linked_namespaces
from testbed.traffic import receive_udp, send_udp, udp_socket

pytestmark = [pytest.mark.root, pytest.mark.netns]

A, B, IF = "198.18.1.1", "198.18.1.2", "co0"
XDP_FILTER_PINS = Path("/sys/fs/bpf/xdp-filter")
SECOND = r"""
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>

BPF_ARRAY(seen, u64, 65536);  /* UDP destination port -> packets that reached this program */

int tg_test_second(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)(ip + 1);
	u32 port;
	u64 *n;

	if ((void *)(udp + 1) > end || eth->h_proto != htons(ETH_P_IP) || ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	port = ntohs(udp->dest);
	n = seen.lookup(&port);
	if (n)
		__sync_fetch_and_add(n, 1);
	return port == 9 ? XDP_DROP : XDP_PASS;
}
"""


def _bcc_lib() -> object:
    import bcc

    return bcc.libbcc.lib


@contextmanager
def pair() -> Iterator[tuple[Namespace, Namespace]]:
    with linked_namespaces("tgco", IF, IF, A, B) as link:
        yield link.ns, link.peer


@contextmanager
def second_program(pin: Path) -> Iterator[object]:
    """The counting, port-9-dropping XDP program, loaded and pinned at `pin`."""
    from bcc import BPF

    bpf = BPF(text=SECOND.encode())
    fn = bpf.load_func(b"tg_test_second", BPF.XDP)
    pin.parent.mkdir(parents=True, exist_ok=True)
    assert _bcc_lib().bpf_obj_pin(fn.fd, str(pin).encode()) == 0, f"pinning {pin}"
    try:
        yield bpf
    finally:
        pin.unlink(missing_ok=True)
        bpf.cleanup()


def seen(bpf: object, port: int) -> int:
    return int(bpf[b"seen"][ctypes.c_int(port)].value)  # type: ignore[index]


def test_a_program_tidegate_did_not_load_is_not_replaced(bpf_available, pin_root):
    from testbed.bench.programs import Noop

    other = Noop()  # any XDP program of someone else's
    with pair() as (a, _b):
        with a.enter():
            attach_xdp(IF, other.fn, "native")
            [before] = xdp_programs(IF)
        with a.enter():
            dp = Dataplane.load(IF, DataplaneSettings(pin_root=pin_root))
            try:
                dp.configure(RuntimeConfig())
                with pytest.raises(XdpOccupied) as refused:
                    dp.attach("native")
                msg = str(refused.value)
                assert f"id {before.id}" in msg and "'tg_bench_noop'" in msg and before.tag.hex() in msg
                assert "replace" in msg and "next_program" in msg
                assert [p.id for p in xdp_programs(IF)] == [before.id], "left in place"
                dp.attach("native", replace=True)
                assert [p.name for p in xdp_programs(IF)] == ["tg_xdp_ingress"]
                dp.attach("native")  # Tidegate's own program is replaced without asking
            finally:
                dp.detach()
    other.close()


def test_a_libxdp_dispatcher_is_named_as_one(bpf_available, pin_root):
    """libxdp's dispatcher cannot load here (freplace refused), so a program of its name stands in."""
    from bcc import BPF

    fake = BPF(text=b"int xdp_dispatcher(struct xdp_md *ctx) { return XDP_PASS; }")
    fn = fake.load_func(b"xdp_dispatcher", BPF.XDP)
    with pair() as (a, _b):
        with a.enter():
            attach_xdp(IF, fn, "native")
            dp = Dataplane.load(IF, DataplaneSettings(pin_root=pin_root))
            try:
                with pytest.raises(XdpOccupied, match=r"libxdp dispatcher.*xdp-loader unload co0 --all"):
                    dp.attach("native")
            finally:
                dp.close()
                detach_xdp(IF)
    fake.cleanup()


@pytest.mark.skipif(not shutil.which("xdp-filter") or not shutil.which("nsenter"),
                    reason="xdp-filter (Debian xdp-tools) or nsenter not installed")
def test_xdp_filter_is_not_replaced_silently(bpf_available, pin_root):
    if XDP_FILTER_PINS.exists():
        pytest.skip(f"another xdp-filter is loaded on this host ({XDP_FILTER_PINS}): its pins are global")
    with pair() as (a, _b):
        run = ["nsenter", f"--net={a.path}", "xdp-filter"]
        subprocess.run([*run, "load", IF, "--mode", "native", "--policy", "allow"], check=True,
                       capture_output=True, timeout=60)
        try:
            with a.enter():
                [filt] = xdp_programs(IF)
                dp = Dataplane.load(IF, DataplaneSettings(pin_root=pin_root))
                try:
                    with pytest.raises(XdpOccupied, match=f"id {filt.id} '{filt.name}'"):
                        dp.attach("native")
                    assert [p.id for p in xdp_programs(IF)] == [filt.id]
                finally:
                    dp.close()
            status = subprocess.run([*run, "status"], capture_output=True, text=True, timeout=60)
            assert IF in status.stdout, "xdp-filter still reports itself loaded"
        finally:
            subprocess.run([*run, "unload", IF], capture_output=True, timeout=60)
            shutil.rmtree(XDP_FILTER_PINS, ignore_errors=True)


def test_next_program_gets_every_packet_tidegate_passes(bpf_available, pin_root):
    with pair() as (a, b), t.tidegate(a, IF, pin_root=pin_root,
                                      config=RuntimeConfig(default_action="allow")) as dp:
        dp.acl.replace([acl_rule(1, 10, "deny", proto=17, dport=(7777, 7777))])
        with second_program(pin_root / "second" / "xdp") as second:
            dp.set_next_program(str(pin_root / "second" / "xdp"))
            with a.enter():  # the program behind us shares no map of ours: nothing to object to
                dp.verify()
            with (udp_socket(a, A, 5000) as plain, udp_socket(a, A, 9) as discard,
                  udp_socket(a, A, 7777) as denied, udp_socket(b, B) as sender):
                send_udp(sender, A, 5000, [b"one", b"two"])
                send_udp(sender, A, 9, [b"dropped behind tidegate"])
                send_udp(sender, A, 7777, [b"denied by tidegate"])
                assert receive_udp(plain, expect=3, timeout=0.3) == [(b"one", B), (b"two", B)]
                assert receive_udp(discard, expect=1, timeout=0.3) == []
                assert receive_udp(denied, expect=1, timeout=0.3) == []
                assert (seen(second, 5000), seen(second, 9), seen(second, 7777)) == (2, 1, 0)
                # Taken away: passed packets go to the stack directly again.
                dp.set_next_program(None)
                send_udp(sender, A, 9, [b"through"])
                assert receive_udp(discard, expect=1, timeout=1.0) == [(b"through", B)]
                assert seen(second, 9) == 1
        reasons = dp.maps.reason_counts()
        assert reasons[abi.Reason.DROP_DENIED].packets == 1


def test_next_program_must_be_an_xdp_program(bpf_available, pin_root):
    from bcc import BPF

    tc = BPF(text=b"int tg_test_tc(struct __sk_buff *skb) { return 0; }")
    fn = tc.load_func(b"tg_test_tc", BPF.SCHED_CLS)
    pin = pin_root / "tc-prog"
    pin_root.mkdir(parents=True, exist_ok=True)
    assert _bcc_lib().bpf_obj_pin(fn.fd, str(pin).encode()) == 0
    dp = Dataplane.load()
    try:
        with pytest.raises(ValueError, match="not XDP"):
            dp.set_next_program(str(pin))
        with pytest.raises(OSError, match="no pinned BPF object"):
            dp.set_next_program(str(pin_root / "nothing-here"))
    finally:
        dp.close()
        pin.unlink()
        tc.cleanup()
