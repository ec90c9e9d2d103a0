"""What the running kernel offers the tracer, found out rather than assumed.

- Tracepoints: present when tracefs has `events/<category>/<name>/format` and that format has
  the fields (and sizes) the program reads; their offsets become -D defines (TT_TP_*), so the
  program reads this kernel's layout, whatever BCC's headers say. tracefs is mounted at
  /sys/kernel/tracing if it is not mounted yet (and left mounted: it holds no state).
- fentry/fexit: present when BTF lists the function with the expected parameters *and* the
  kernel accepts a two-instruction program for it. The trial load matters: a kernel can have
  the function and BTF yet refuse BPF trampolines (this is how it is on the machine this was
  written on: EPERM, while tracepoints and even tp_btf programs load).
- Kernel struct members the programs read (sk_buff, net_device, xdp_buff) come from BTF as
  TT_OFF_* defines.
- Names for numbers: drop reasons and XDP actions from BTF, hooks from xdp/trace/trace_abi.h.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import re
import struct
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from dataplane.kernel.source import XDP_DIR
from dataplane.trace.btf import BtfError, Field, Kind, vmlinux

log = logging.getLogger(__name__)

TRACEFS = Path("/sys/kernel/tracing")
TRACE_DIR = XDP_DIR / "trace"  # the tracer's C, apart from the data plane's
TRACE_ABI_HEADER = TRACE_DIR / "trace_abi.h"

# uapi/linux/bpf.h
BPF_PROG_LOAD = 5
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_FENTRY, BPF_TRACE_FEXIT = 24, 25
BPF_OBJ_NAME_LEN = 16
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
_PROG_LOAD_ATTR_LEN = 128  # covers the fields used (up to offset 116); the kernel zero-fills the rest
_LOG_SIZE = 4096

# uapi/linux/pkt_cls.h: #defines, so not in BTF.
TC_ACTIONS = {-1: "TC_ACT_UNSPEC", 0: "TC_ACT_OK", 1: "TC_ACT_RECLASSIFY", 2: "TC_ACT_SHOT",
              3: "TC_ACT_PIPE", 4: "TC_ACT_STOLEN", 5: "TC_ACT_QUEUED", 6: "TC_ACT_REPEAT",
              7: "TC_ACT_REDIRECT", 8: "TC_ACT_TRAP"}

_libc = ctypes.CDLL(None, use_errno=True)


class KernelLayoutError(RuntimeError):
    """The kernel lacks a struct member the tracer must read (its BTF says so)."""


# --- hooks ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hook:
    """One place the tracer can watch. `fields`: tracepoint fields read, with their sizes;
    `params`: the kernel function's leading parameter types (all of them for fexit, whose
    return value follows the last)."""

    name: str
    kind: str  # "tracepoint" | "fentry" | "fexit"
    target: str  # "category:event" or a kernel function
    fields: tuple[tuple[str, int], ...] = ()
    params: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """How capabilities() names the target: "tracepoint:skb:kfree_skb", "fentry:ip_rcv"."""
        return f"{self.kind}:{self.target}"

    @property
    def switch(self) -> str:
        return f"TT_HOOK_ON_{self.name.upper()}"

    @property
    def function(self) -> str:
        """The BPF program's name in xdp/trace/trace.c (BCC finds the fentry target by this prefix)."""
        prefix = {"tracepoint": "tt_tp_", "fentry": "kfunc__", "fexit": "kretfunc__"}[self.kind]
        return prefix + (self.name if self.kind == "tracepoint" else self.target)


_SKB = "struct sk_buff *"
_FIB_COMMON = (("tb_id", 4), ("err", 4), ("oif", 4), ("iif", 4), ("proto", 1), ("sport", 2),
               ("dport", 2), ("name", 16))

# In the order a received packet meets them.
HOOKS: tuple[Hook, ...] = (
    Hook("xdp_exception", "tracepoint", "xdp:xdp_exception", (("prog_id", 4), ("act", 4), ("ifindex", 4))),
    Hook("xdp_generic", "fexit", "bpf_prog_run_generic_xdp",
         params=(_SKB, "struct xdp_buff *", "const struct bpf_prog *")),
    Hook("netif_receive_skb", "tracepoint", "net:netif_receive_skb", (("skbaddr", 8),)),
    Hook("tc", "fexit", "tcf_classify", params=(_SKB, "const struct tcf_block *",
                                                  "const struct tcf_proto *", "struct tcf_result *", "bool")),
    Hook("ip_rcv", "fentry", "ip_rcv", params=(_SKB,)),
    Hook("ipv6_rcv", "fentry", "ipv6_rcv", params=(_SKB,)),
    Hook("fib", "tracepoint", "fib:fib_table_lookup",
         _FIB_COMMON + (("src", 4), ("dst", 4))),
    Hook("fib6", "tracepoint", "fib6:fib6_table_lookup",
         _FIB_COMMON + (("src", 16), ("dst", 16), ("gw", 16))),
    Hook("deliver", "tracepoint", "skb:skb_copy_datagram_iovec", (("skbaddr", 8),)),
    Hook("xmit", "tracepoint", "net:net_dev_start_xmit", (("skbaddr", 8),)),
    Hook("kfree_skb", "tracepoint", "skb:kfree_skb", (("skbaddr", 8), ("location", 8), ("reason", 4))),
    Hook("consume_skb", "tracepoint", "skb:consume_skb", (("skbaddr", 8), ("location", 8))),
)
HOOKS_BY_NAME = {h.name: h for h in HOOKS}


@dataclass(frozen=True)
class HookSupport:
    hook: Hook
    supported: bool
    reason: str  # why not (or what was found)
    cflags: tuple[str, ...] = ()  # the field offsets a supported tracepoint hook needs


# --- tracefs ------------------------------------------------------------------------------------------


class TracefsError(RuntimeError):
    pass


def ensure_tracefs(root: Path = TRACEFS) -> Path:
    """tracefs at `root`, mounting it there if it is not mounted yet (needs root)."""
    if (root / "events").is_dir():
        return root
    if not root.is_dir():
        raise TracefsError(f"{root} does not exist: this kernel has no tracefs (CONFIG_TRACING)")
    if _libc.mount(b"nodev", str(root).encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise TracefsError(f"tracefs is not mounted at {root} and mounting it failed: "
                           f"{os.strerror(err)}; run `mount -t tracefs nodev {root}` as root")
    log.info("mounted tracefs", extra={"path": str(root)})
    return root


@dataclass(frozen=True)
class TpField:
    name: str
    offset: int
    size: int
    signed: bool


_FIELD = re.compile(r"^\s*field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);"
                    r"\s*signed:(?P<signed>\d);", re.M)


def parse_format(text: str) -> dict[str, TpField]:
    """Fields of a tracepoint `format` file: "field:__u8 src[4];\toffset:28;\tsize:4;..." -> src."""
    out = {}
    for m in _FIELD.finditer(text):
        name = re.sub(r"\[.*\]$", "", m["decl"].split()[-1])
        out[name] = TpField(name, int(m["off"]), int(m["size"]), m["signed"] == "1")
    return out


def tracepoint_format(target: str, root: Path = TRACEFS) -> dict[str, TpField]:
    category, event = target.split(":")
    return parse_format((ensure_tracefs(root) / "events" / category / event / "format").read_text())


_SYMBOL = re.compile(r"\{\s*(-?\d+)\s*,\s*\"([^\"]*)\"\s*\}")


def print_fmt_symbols(target: str, root: Path = TRACEFS) -> dict[int, str]:
    """The `{ value, "NAME" }` pairs of a tracepoint's __print_symbolic (e.g. kfree_skb's reasons)."""
    category, event = target.split(":")
    text = (ensure_tracefs(root) / "events" / category / event / "format").read_text()
    fmt = text[text.index("print fmt:"):]
    return {int(value): name for value, name in _SYMBOL.findall(fmt)}


# --- detection ----------------------------------------------------------------------------------------


def _probe_tracepoint(hook: Hook) -> HookSupport:
    try:
        fields = tracepoint_format(hook.target)
    except TracefsError as exc:
        return HookSupport(hook, False, str(exc))
    except FileNotFoundError:
        return HookSupport(hook, False, f"tracefs has no tracepoint {hook.target}")
    cflags = []
    for name, size in hook.fields:
        field = fields.get(name)
        if field is None or field.size != size:
            found = "absent" if field is None else f"{field.size} bytes"
            return HookSupport(hook, False, f"tracepoint {hook.target}: field {name!r} is {found}, "
                                            f"the tracer reads {size} bytes")
        cflags.append(f"-DTT_TP_{hook.name.upper()}_{name.upper()}={field.offset}")
    return HookSupport(hook, True, f"tracepoint {hook.target}", tuple(cflags))


def _probe_trampoline(hook: Hook) -> HookSupport:
    try:
        btf = vmlinux()
        params = [ptype for _name, ptype in btf.func_params(hook.target)]
        func_id = btf.find(hook.target, Kind.FUNC).id
    except BtfError as exc:
        return HookSupport(hook, False, f"{hook.kind} {hook.target}: {exc}")
    exact = hook.kind == "fexit"
    if (params != list(hook.params)) if exact else (params[: len(hook.params)] != list(hook.params)):
        return HookSupport(hook, False, f"{hook.target} takes ({', '.join(params)}) on this kernel, "
                                        f"the tracer expects ({', '.join(hook.params)})")
    attach = BPF_TRACE_FENTRY if hook.kind == "fentry" else BPF_TRACE_FEXIT
    err, verifier_log = trial_load_tracing(func_id, attach)
    if err:
        why = ("BPF trampolines are refused here (a security policy, or not root)" if err == errno.EPERM
               else verifier_log.strip().splitlines()[-1] if verifier_log.strip() else os.strerror(err))
        return HookSupport(hook, False, f"the kernel refused an {hook.kind} program on {hook.target}: "
                                        f"{errno.errorcode.get(err, err)}: {why}")
    return HookSupport(hook, True, f"{hook.kind} {hook.target}")


def trial_load_tracing(btf_id: int, attach_type: int) -> tuple[int, str]:
    """Load `r0 = 0; exit` as an fentry/fexit program on vmlinux BTF function `btf_id` and
    close it at once. Returns (0 or errno, verifier log)."""
    insns = struct.pack("=BBhiBBhi", 0xB7, 0, 0, 0, 0x95, 0, 0, 0)  # mov64 r0, 0; exit
    insn_buf = ctypes.create_string_buffer(insns, len(insns))
    license_buf = ctypes.create_string_buffer(b"GPL")
    log_buf = ctypes.create_string_buffer(_LOG_SIZE)
    attr = bytearray(_PROG_LOAD_ATTR_LEN)
    struct.pack_into("=IIQQIIQ", attr, 0, BPF_PROG_TYPE_TRACING, len(insns) // 8,
                     ctypes.addressof(insn_buf), ctypes.addressof(license_buf), 1, _LOG_SIZE,
                     ctypes.addressof(log_buf))
    attr[48:48 + BPF_OBJ_NAME_LEN] = b"tt_probe".ljust(BPF_OBJ_NAME_LEN, b"\0")
    struct.pack_into("=I", attr, 68, attach_type)   # expected_attach_type
    struct.pack_into("=I", attr, 108, btf_id)       # attach_btf_id (attach_btf_obj_fd 0: vmlinux)
    fd = _sys_bpf(BPF_PROG_LOAD, attr)
    if fd < 0:
        return -fd, log_buf.value.decode(errors="replace")
    os.close(fd)
    return 0, ""


def _sys_bpf(cmd: int, attr: bytearray) -> int:
    """bpf(2); returns the result or -errno."""
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        return -errno.ENOSYS
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))
    return ret if ret >= 0 else -ctypes.get_errno()


def prog_loaded(prog_id: int) -> bool:
    """Does the kernel still hold BPF program `prog_id`? (BPF_PROG_GET_FD_BY_ID, needs root)"""
    fd = _sys_bpf(BPF_PROG_GET_FD_BY_ID, bytearray(struct.pack("=III", prog_id, 0, 0)))
    if fd >= 0:
        os.close(fd)
        return True
    if fd == -errno.ENOENT:
        return False
    raise OSError(-fd, f"BPF_PROG_GET_FD_BY_ID {prog_id}: {os.strerror(-fd)}")


@cache
def probe_hooks() -> tuple[HookSupport, ...]:
    """Every hook, found on this kernel or not (with the reason). Once per process."""
    out = []
    for hook in HOOKS:
        support = _probe_tracepoint(hook) if hook.kind == "tracepoint" else _probe_trampoline(hook)
        out.append(support)
    return tuple(out)


# --- kernel struct offsets ----------------------------------------------------------------------------

# (define, struct, member, expected size or 0 for "a pointer") the programs read.
_SKB_MEMBERS = (
    ("SKB_HEAD", "sk_buff", "head", 0), ("SKB_DATA", "sk_buff", "data", 0),
    ("SKB_NETWORK_HEADER", "sk_buff", "network_header", 2), ("SKB_PROTOCOL", "sk_buff", "protocol", 2),
    ("SKB_DEV", "sk_buff", "dev", 0), ("SKB_LEN", "sk_buff", "len", 4), ("SKB_MARK", "sk_buff", "mark", 4),
    ("DEV_IFINDEX", "net_device", "ifindex", 4), ("DEV_NAME", "net_device", "name", 16),
)
_XDP_MEMBERS = (
    ("XDP_DATA", "xdp_buff", "data", 0), ("XDP_RXQ", "xdp_buff", "rxq", 0),
    ("RXQ_DEV", "xdp_rxq_info", "dev", 0),
)


def kernel_cflags(hooks: tuple[str, ...] | list[str] = ()) -> list[str]:
    """TT_OFF_* defines for this kernel (the xdp_buff ones only if xdp_generic is compiled)."""
    btf = vmlinux()
    members = _SKB_MEMBERS + (_XDP_MEMBERS if "xdp_generic" in hooks else ())
    out = []
    try:
        for define, struct_name, member, size in members:
            field = btf.member(struct_name, member)
            want = size or ctypes.sizeof(ctypes.c_void_p)
            if field.bit_size or field.size != want:
                raise KernelLayoutError(f"struct {struct_name}.{member} is {field.size} bytes (bitfield "
                                        f"{field.bit_size}) on this kernel, the tracer reads {want}")
            out.append(f"-DTT_OFF_{define}={field.offset}")
        if "tc" in hooks:
            out += _bit_cflags(btf.member("sk_buff", "tc_at_ingress"), "SKB_TC_AT_INGRESS")
    except BtfError as exc:
        raise KernelLayoutError(f"cannot lay out the tracer's reads: {exc}") from exc
    return out


def _bit_cflags(field: Field, define: str) -> list[str]:
    """A one-bit bitfield as the byte that holds it and a mask (BTF counts bits from the LSB of
    the first byte on little-endian machines)."""
    if sys.byteorder != "little" or field.bit_size != 1:
        raise KernelLayoutError(f"{define}: a {field.bit_size}-bit field on a {sys.byteorder}-endian "
                                "machine is not supported")
    return [f"-DTT_OFF_{define}_BYTE={field.bit_offset // 8}",
            f"-DTT_{define}_MASK={1 << (field.bit_offset % 8)}"]


# --- names for numbers ----------------------------------------------------------------------------------

_DROP_PREFIXES = ("SKB_DROP_REASON_", "SKB_")
DROP_REASON_SUBSYS_SHIFT = 16  # include/net/dropreason.h: subsystem in the high 16 bits


@cache
def drop_reason_names() -> dict[int, str]:
    """`enum skb_drop_reason` from BTF, named as the kfree_skb tracepoint prints them:
    SKB_DROP_REASON_NOT_SPECIFIED -> NOT_SPECIFIED (SKB_CONSUMED -> CONSUMED)."""
    out: dict[int, str] = {}
    for name, value in vmlinux().enum("skb_drop_reason").items():
        for prefix in _DROP_PREFIXES:
            if name.startswith(prefix):
                name = name.removeprefix(prefix)
                break
        out.setdefault(value, name)
    return out


@cache
def _drop_subsystems() -> dict[int, str]:
    try:
        enum = vmlinux().enum("skb_drop_reason_subsys")
    except BtfError:
        return {}
    return {v: k.removeprefix("SKB_DROP_REASON_SUBSYS_") for k, v in enum.items() if not k.endswith("_NUM")}


def drop_reason_name(value: int) -> str:
    """A drop reason's name; a subsystem's private reason as "SUBSYS:code"."""
    value &= 0xFFFFFFFF
    name = drop_reason_names().get(value)
    if name is not None:
        return name
    subsys = value >> DROP_REASON_SUBSYS_SHIFT
    if subsys:
        label = _drop_subsystems().get(subsys, f"SUBSYS_{subsys}")
        return f"{label}:{value & ((1 << DROP_REASON_SUBSYS_SHIFT) - 1)}"
    return f"UNKNOWN_{value}"


@cache
def xdp_action_names() -> dict[int, str]:
    try:
        return {v: k for k, v in vmlinux().enum("xdp_action").items()}
    except BtfError:
        return {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}


_ENUM = r"enum\s+{name}\s*\{{(.*?)\}};"
_ENUM_MEMBER = re.compile(r"^\s*TT_(\w+)\s*=\s*(\d+)\s*,", re.M)


@cache
def abi_enum(name: str) -> dict[str, int]:
    """`enum name` of xdp/trace/trace_abi.h, members without their TT_ prefix:
    abi_enum("tt_counter") == {"COUNTER_EMITTED": 0, ...}."""
    body = re.search(_ENUM.format(name=name), TRACE_ABI_HEADER.read_text(), re.S)
    if body is None:
        raise RuntimeError(f"{TRACE_ABI_HEADER} has no enum {name}")
    return {k: int(v) for k, v in _ENUM_MEMBER.findall(re.sub(r"/\*.*?\*/", "", body[1], flags=re.S))}


@cache
def hook_ids() -> dict[int, str]:
    """`enum tt_hook`: number -> hook name (TT_HOOK_KFREE_SKB -> "kfree_skb")."""
    return {v: k.removeprefix("HOOK_").lower() for k, v in abi_enum("tt_hook").items()
            if k not in ("HOOK_UNSPECIFIED", "HOOK_MAX")}
