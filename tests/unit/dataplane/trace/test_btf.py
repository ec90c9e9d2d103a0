"""The BTF reader: synthetic blobs (format, errors, both byte orders) and the running kernel's BTF
checked against values that cannot change (uapi) and against the kernel's own tracefs."""

from __future__ import annotations

import os
import struct
import sys

import pytest

from dataplane.trace import kernel_support
from dataplane.trace.btf import VMLINUX, Btf, BtfError, Kind, vmlinux

needs_vmlinux = pytest.mark.skipif(not VMLINUX.exists(),
                                   reason=f"{VMLINUX} is absent: kernel built without CONFIG_DEBUG_INFO_BTF")


# --- a synthetic blob --------------------------------------------------------------------------------


class BlobBuilder:
    """Writes BTF by the book: header, type records, string section."""

    def __init__(self, endian: str = "<"):
        self.endian = endian
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.count = 0

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def add(self, kind: Kind, name: str, vlen: int, size_or_type: int, trailer: bytes = b"",
            kind_flag: bool = False) -> int:
        info = (int(kind_flag) << 31) | (int(kind) << 24) | vlen
        self.types += struct.pack(self.endian + "III", self.s(name), info, size_or_type) + trailer
        self.count += 1
        return self.count

    def blob(self, *, magic: int = 0xEB9F, version: int = 1) -> bytes:
        hdr = struct.pack(self.endian + "HBBIIIII", magic, version, 0, 24, 0, len(self.types),
                          len(self.types), len(self.strings))
        return hdr + bytes(self.types) + bytes(self.strings)


def sample(endian: str = "<") -> bytes:
    b = BlobBuilder(endian)
    p = endian
    int_id = b.add(Kind.INT, "int", 0, 4, struct.pack(p + "I", (1 << 24) | 32))  # signed, 32 bits
    u8_id = b.add(Kind.INT, "u8", 0, 1, struct.pack(p + "I", 8))
    b.add(Kind.ENUM, "color", 3, 4, struct.pack(p + "IIIIII", b.s("RED"), 0, b.s("GREEN"), 7,
                                                   b.s("NONE"), 0xFFFFFFFF), kind_flag=True)
    b.add(Kind.ENUM64, "big", 1, 8, struct.pack(p + "III", b.s("HUGE"), 1, 2))
    inner = b.add(Kind.UNION, "", 2, 4, struct.pack(p + "IIIIII", b.s("z"), int_id, 0,
                                                     b.s("zz"), u8_id, 0))
    flags = (4 << 24) | 36  # bitfield: 4 bits at bit 36
    b.add(Kind.STRUCT, "pt", 4, 12, struct.pack(p + "IIIIIIIIIIII", b.s("x"), int_id, 0, b.s("y"), int_id, 32,
                                                  0, inner, 64, b.s("nib"), u8_id, flags), kind_flag=True)
    ptr = b.add(Kind.PTR, "", 0, b.count)  # struct pt *
    proto = b.add(Kind.FUNC_PROTO, "", 2, int_id, struct.pack(p + "IIII", b.s("p"), ptr, b.s("n"), int_id))
    b.add(Kind.FUNC, "frob", 0, proto)
    return b.blob()


@pytest.mark.parametrize("endian", ["<", ">"], ids=["little-endian", "big-endian"])
def test_synthetic_blob_is_read_in_either_byte_order(endian: str) -> None:
    btf = Btf(sample(endian))
    assert len(btf) == 9
    assert btf.enum("color") == {"RED": 0, "GREEN": 7, "NONE": -1}  # kind_flag: signed
    assert btf.enum("big") == {"HUGE": (2 << 32) | 1}
    assert btf.member("pt", "y").offset == 4
    z = btf.member("pt", "zz")  # found inside the anonymous union
    assert (z.offset, z.size) == (8, 1)
    nib = btf.member("pt", "nib")
    assert (nib.bit_offset, nib.bit_size) == (36, 4)
    assert btf.size(btf.find("pt", Kind.STRUCT).id) == 12
    assert btf.func_params("frob") == [("p", "struct pt *"), ("n", "int")]
    assert btf.has("frob", Kind.FUNC) and not btf.has("frob", Kind.STRUCT)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"\x00\x00" + b[2:], "bad magic"),
    (lambda b: b[:2] + b"\x02" + b[3:], "version 2"),
    (lambda b: b[:10], "too short"),
    (lambda b: b[:-5], "past the end"),
], ids=["magic", "version", "short", "truncated"])
def test_broken_blobs_are_refused_with_the_reason(mutate, message: str) -> None:  # noqa: ANN001
    with pytest.raises(BtfError, match=message):
        Btf(mutate(sample()))


def test_unknown_kind_is_refused_not_misread() -> None:
    b = BlobBuilder()
    b.add(Kind.INT, "int", 0, 4, struct.pack("<I", 32))
    b.types += struct.pack("<III", 0, 31 << 24, 0)  # kind 31 does not exist (yet)
    with pytest.raises(BtfError, match="unknown kind 31"):
        Btf(b.blob())


def test_lookups_name_what_is_missing() -> None:
    btf = Btf(sample())
    with pytest.raises(BtfError, match="no enum/enum64 named 'shade'"):
        btf.enum("shade")
    with pytest.raises(BtfError, match="no member 'w'"):
        btf.member("pt", "w")
    with pytest.raises(BtfError, match="no func named 'twiddle'"):
        btf.func_params("twiddle")


# --- the running kernel ------------------------------------------------------------------------------


@needs_vmlinux
def test_drop_reasons_start_where_the_kernel_says() -> None:
    reasons = vmlinux().enum("skb_drop_reason")
    assert reasons["SKB_NOT_DROPPED_YET"] == 0
    assert reasons["SKB_CONSUMED"] == 1
    assert reasons["SKB_DROP_REASON_NOT_SPECIFIED"] == 2
    assert reasons["SKB_DROP_REASON_NO_SOCKET"] == 3
    names = kernel_support.drop_reason_names()
    assert names[2] == "NOT_SPECIFIED" and names[1] == "CONSUMED"
    assert "IP_INNOROUTES" in names.values()


@needs_vmlinux
def test_drop_reason_names_match_the_kfree_skb_tracepoint() -> None:
    """tracefs prints reasons by name (print fmt's __print_symbolic): BTF must agree, all of them."""
    if os.geteuid() != 0:
        pytest.skip("reading (and perhaps mounting) tracefs needs root")
    try:
        printed = kernel_support.print_fmt_symbols("skb:kfree_skb")
    except (kernel_support.TracefsError, FileNotFoundError) as exc:
        pytest.skip(f"no kfree_skb tracepoint format to compare with: {exc}")
    assert len(printed) > 50
    names = kernel_support.drop_reason_names()
    assert {v: names.get(v) for v in printed} == printed


@needs_vmlinux
def test_uapi_enums_have_their_fixed_values() -> None:
    """These numbers are ABI; the tracer's own constants are checked against them too."""
    btf = vmlinux()
    assert btf.enum("xdp_action") == {"XDP_ABORTED": 0, "XDP_DROP": 1, "XDP_PASS": 2, "XDP_TX": 3,
                                      "XDP_REDIRECT": 4}
    assert btf.enum("bpf_prog_type")["BPF_PROG_TYPE_XDP"] == 6
    assert btf.enum("bpf_prog_type")["BPF_PROG_TYPE_TRACING"] == kernel_support.BPF_PROG_TYPE_TRACING
    attach = btf.enum("bpf_attach_type")
    assert attach["BPF_TRACE_FENTRY"] == kernel_support.BPF_TRACE_FENTRY
    assert attach["BPF_TRACE_FEXIT"] == kernel_support.BPF_TRACE_FEXIT
    cmd = btf.enum("bpf_cmd")
    assert cmd["BPF_PROG_LOAD"] == kernel_support.BPF_PROG_LOAD
    assert cmd["BPF_PROG_GET_FD_BY_ID"] == kernel_support.BPF_PROG_GET_FD_BY_ID


@needs_vmlinux
def test_uapi_struct_layouts() -> None:
    btf = vmlinux()
    assert btf.size(btf.find("iphdr", Kind.STRUCT).id) == 20
    assert btf.size(btf.find("ipv6hdr", Kind.STRUCT).id) == 40
    assert btf.member("iphdr", "saddr").offset == 12  # inside an anonymous union (struct_group)
    assert btf.member("iphdr", "daddr").offset == 16
    assert btf.member("ipv6hdr", "daddr").offset == 24
    assert btf.member("udphdr", "dest").offset == 2
    assert btf.member("ethhdr", "h_proto").offset == 12
    ihl, version = btf.member("iphdr", "ihl"), btf.member("iphdr", "version")
    assert (ihl.bit_size, version.bit_size) == (4, 4)
    if sys.byteorder == "little":
        assert (ihl.bit_offset, version.bit_offset) == (0, 4)


@needs_vmlinux
def test_kernel_structs_the_tracer_reads() -> None:
    btf = vmlinux()
    assert btf.func_params("ip_rcv")[0] == ("skb", "struct sk_buff *")
    for member in ("head", "data", "dev"):
        assert btf.member("sk_buff", member).size == 8
    assert btf.member("sk_buff", "network_header").size == 2
    assert btf.member("sk_buff", "tc_at_ingress").bit_size == 1
    assert btf.member("net_device", "name").size == 16
    flags = kernel_support.kernel_cflags(["tc", "xdp_generic"])
    assert any(f.startswith("-DTT_OFF_SKB_HEAD=") for f in flags)
    assert any(f.startswith("-DTT_OFF_XDP_RXQ=") for f in flags)
