"""Where the compiled stages live in the kernel: fixed-depth forms in front of the LPM tries.

A trie lookup walks about log2(entries) nodes, so the cost of the three tries grows with the
policy. Each stage therefore also has a form looked up in one hash probe whatever the rule count
(xdp/include/match.h tries it first; layouts in tidegate_abi.h):

    stage 1  src_bucket  (family, first BUCKET_BYTES address bytes) -> the source prefixes inside
             that bucket, longest first, then the longest one enclosing it: the first covering
             the address is its longest match. An address whose bucket has no element (no prefix
             inside it, or more than LIST_MAX) walks the trie.
    stage 2  dst_list    class -> its destination prefixes, longest first, when it has at most
             LIST_MAX of them.
    stage 3  port_exact  (ruleset, protocol, port) -> slot for every single-port entry: being the
             longest possible match, it is what the trie would answer.

The tries still hold every entry, so a stage gives the same answer with or without its
fixed-depth form, at any moment. That lets the program skip a form while its trie is small: a
hash probe costs about as much as walking three or four trie nodes (measured through
BPF_PROG_TEST_RUN), so a form is turned on (match_flags) once its trie holds FIXED_DEPTH_MIN
entries, where the trie walk costs more than the probe. A hint bit per bucket and per exact port
(match_hints; a bit may stand for several, set while any of them exists) spares the packets no
bucket or exact entry serves a probe that must miss; hints only skip probes, so any hint state is
correct too.

Dataplane.matcher compiles the stages as before (the reference and the tests see one model);
this module translates a write plan (dataplane.matcher_plan) of trie entries into the writes of
these maps, keeping its order, so the switch stays atomic per packet:

 - a class or ruleset id names one content for its whole life, so a list or exact entry is
   written with the stage-2/3 entries of a new id (unreachable until stage 1 names it) and
   removed with those of an old id, after the grace period;
 - a bucket element is one hash element, replaced whole (never edited in place), built from
   the new policy's stage-1 entries: a packet reads one element, so it sees the old or the new
   policy's classes for its address; a packet without a bucket walks the trie, which gets the
   planner's ordered stage-1 writes exactly as before. Bucket writes and removals all come
   before the grace period, so no packet still holds an old class afterwards.

Pure: translate(plan, new, index) -> Plan of physical ops (hints included), and
flags(compiled) -> TG_MATCH_F_*; dataplane.tables executes them.
"""

from __future__ import annotations

import ipaddress
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dataplane import abi
from dataplane.matcher import (
    ADDR_BITS,
    ADDR_LEN,
    FAMILY_BITS,
    FAMILY_V4,
    FAMILY_V6,
    KEY_BITS,
    PORT_BITS,
    PROTO_BITS,
    SET_BITS,
    SET_F_RULESET,
    SLOT_NONE,
    CompiledMatch,
    DstKey,
    PortKey,
    Prefix,
    SrcKey,
    address_bits,
)
from dataplane.matcher_plan import Plan, Step

LIST_MAX = abi.define("TG_LIST_MAX")
BUCKET_LEN = abi.define("TG_BUCKET_LEN")
BUCKET_BYTES = {FAMILY_V4: abi.define("TG_BUCKET_BYTES_V4"), FAMILY_V6: abi.define("TG_BUCKET_BYTES_V6")}
BUCKET_PLEN = {fam: FAMILY_BITS + 8 * n for fam, n in BUCKET_BYTES.items()}  # a bucket as a key prefix
EXACT_PORT_PLEN = SET_BITS + PROTO_BITS + PORT_BITS  # a stage-3 key naming one port
F_SRC_BUCKETS = abi.define("TG_MATCH_F_SRC_BUCKETS")
F_DST_LISTS = abi.define("TG_MATCH_F_DST_LISTS")
F_PORT_EXACT = abi.define("TG_MATCH_F_PORT_EXACT")
F_ALL = F_SRC_BUCKETS | F_DST_LISTS | F_PORT_EXACT
HINT_WORDS = abi.define("TG_HINT_WORDS")
_HINT = abi.enums()["tg_hint"]
HINT_KINDS = _HINT["TG_HINT_KINDS"]
HINT_SRC = {FAMILY_V4: _HINT["TG_HINT_SRC_V4"], FAMILY_V6: _HINT["TG_HINT_SRC_V6"]}
HINT_PORT = _HINT["TG_HINT_PORT"]
# A trie of this many entries is about log2(16) + 1 = 5 nodes deep where it is dense: walking it
# costs more than the one hash probe of the fixed-depth form (see the module docstring).
FIXED_DEPTH_MIN = 16

# Physical op kinds in the order they are executed; the pause comes before the first removal of
# what old packets may still use (del_dst onwards).
KINDS = ("put_slot", "put_port", "put_port_exact", "put_dst", "put_dst_list", "put_src", "put_bucket",
         "del_bucket", "del_src", "put_hint", "del_dst", "del_dst_list", "del_port", "del_port_exact",
         "free_slot")
AFTER_GRACE = frozenset({"del_dst", "del_dst_list", "del_port", "del_port_exact", "free_slot"})

Entries = tuple[tuple[Prefix, int], ...]  # a list element: (prefix, value), longest first


class ExactKey(NamedTuple):
    set: int  # ruleset id
    proto: int
    port: int  # host order


# NamedTuple(*fields) runs a Python-level __new__; a policy of 100,000 rules makes ~500,000 here.
_new = tuple.__new__
_ADDR_MASK = (1 << ADDR_BITS) - 1


def exact_key(key: PortKey) -> ExactKey:
    """The exact-port form of a single-port stage-3 entry."""
    return _new(ExactKey, (key.set, key.proto, key.port))


def src_prefix(key: SrcKey) -> Prefix:
    return _new(Prefix, ((key.family << ADDR_BITS) | int.from_bytes(key.addr, "big"), key.prefixlen))


def dst_prefix(key: DstKey) -> Prefix:
    bits = (key.family << ADDR_BITS) | int.from_bytes(key.addr, "big")
    return _new(Prefix, (bits, key.prefixlen - SET_BITS))


def src_key_of(p: Prefix) -> SrcKey:
    bits, plen = p
    return _new(SrcKey, (plen, bits >> ADDR_BITS, (bits & _ADDR_MASK).to_bytes(ADDR_LEN, "big")))


def bucket_of(p: Prefix) -> Prefix | None:
    """The bucket a prefix lies inside, when it is not shorter than one."""
    bits, plen = p
    bucket = BUCKET_PLEN.get(bits >> ADDR_BITS)
    if bucket is None or plen < bucket:
        return None
    shift = KEY_BITS - bucket
    return _new(Prefix, (bits >> shift << shift, bucket))


def bucket_hint(bucket: Prefix) -> tuple[int, int]:
    """(kind, index) of a bucket's hint, as match.h computes it from the address."""
    family = bucket.family
    a = bucket.addr
    index = a[0] << 8 | a[1]
    if family == FAMILY_V6:
        index ^= (a[2] << 8 | a[3]) ^ (a[4] << 8 | a[5])
    return HINT_SRC[family], index


def hint_word(kind: int, index: int) -> tuple[int, int]:
    """(word within the table's hints, bit) of a hint."""
    return kind * HINT_WORDS + (index >> 6), index & 63


def bucket_key(bucket: Prefix) -> tuple[int, bytes]:
    """(family, address bytes) of a bucket element's key."""
    return bucket.family, bucket.addr[:BUCKET_LEN]


def bucket_from_key(family: int, addr: bytes) -> Prefix:
    bits = (family << ADDR_BITS) | int.from_bytes(addr.ljust(ADDR_LEN, b"\0"), "big")
    return Prefix(bits, BUCKET_PLEN[family])


# --- list elements as the program reads them -----------------------------------------------


class EntryWords(NamedTuple):
    """A list entry's members (struct tg_prefix_entry), in memory order."""

    addr_hi: int
    addr_lo: int
    mask_hi: int
    mask_lo: int
    value: int
    family: int  # 0: any family


def _words(data: bytes) -> tuple[int, int]:
    """16 address bytes as the program reads them: two native-order u64 words."""
    return int.from_bytes(data[:8], sys.byteorder), int.from_bytes(data[8:], sys.byteorder)


def entry_words(prefix: Prefix, value: int) -> EntryWords:
    bits = max(0, prefix.plen - FAMILY_BITS)
    mask = (((1 << bits) - 1) << (ADDR_BITS - bits)).to_bytes(ADDR_LEN, "big")
    family = prefix.family if prefix.plen else 0
    return EntryWords(*_words(prefix.addr), *_words(mask), value, family)


def entry_from_words(w: EntryWords) -> tuple[Prefix, int]:
    order = sys.byteorder
    addr = w.addr_hi.to_bytes(8, order) + w.addr_lo.to_bytes(8, order)
    mask = w.mask_hi.to_bytes(8, order) + w.mask_lo.to_bytes(8, order)
    bits = bin(int.from_bytes(mask, "big")).count("1")
    plen = FAMILY_BITS + bits if w.family else 0
    return Prefix((w.family << ADDR_BITS) | int.from_bytes(addr, "big"), plen), w.value


def _order(entry: tuple[Prefix, int]) -> tuple[int, int]:
    bits, plen = entry[0]
    return -plen, bits


def _longest_first(entries: Iterable[tuple[Prefix, int]]) -> Entries:
    return tuple(sorted(entries, key=_order))


# --- stage 1: buckets ------------------------------------------------------------------------


@dataclass
class SrcIndex:
    """The stage-1 prefixes by bucket, and the bucket elements written: what a translation needs
    to rebuild only the buckets a change touches. Mutated by translate (the caller keeps it in step
    with what is written; rebuild it with build() from the current policy if in doubt)."""

    inside: dict[Prefix, set[Prefix]] = field(default_factory=dict)  # bucket -> prefixes in it
    short: dict[int, set[Prefix]] = field(default_factory=dict)  # length -> prefixes in no bucket
    written: dict[Prefix, Entries] = field(default_factory=dict)  # bucket -> its element
    hints: dict[tuple[int, int], int] = field(default_factory=dict)  # (kind, index) -> elements with it
    words: dict[int, int] = field(default_factory=dict)  # hint word -> the value written

    @classmethod
    def build(cls, src: Iterable[SrcKey], port: Iterable[PortKey] = (),
              written: Mapping[Prefix, Entries] | None = None) -> SrcIndex:
        """The index of a policy written by someone else: hint words are rewritten on the next
        translate (bits left over from before stay set, which is only slower)."""
        index = cls(written=dict(written or {}))
        for key in src:
            index.add(src_prefix(key))
        for b in index.written:
            index.hint(bucket_hint(b), 1)
        for pk in port:
            if pk.prefixlen == EXACT_PORT_PLEN:
                index.hint((HINT_PORT, pk.port), 1)
        return index

    def hint(self, hint: tuple[int, int], change: int) -> None:
        count = self.hints.get(hint, 0) + change
        if count:
            self.hints[hint] = count
        else:
            self.hints.pop(hint, None)

    def hint_step(self, touched: Iterable[tuple[int, int]]) -> Step | None:
        """The hint words that `touched` hints change, as they now are."""
        words: dict[int, int] = {}
        for kind, index in touched:
            word, _ = hint_word(kind, index)
            if word in words:
                continue
            value = 0
            for bit in range(64):
                if (kind, (index & ~63) | bit) in self.hints:
                    value |= 1 << bit
            words[word] = value
        changed = sorted(w for w, v in words.items() if self.words.get(w, 0) != v or w not in self.words)
        for w in changed:
            self.words[w] = words[w]
        return Step("put_hint", tuple(changed), tuple(words[w] for w in changed)) if changed else None

    def add(self, p: Prefix) -> Prefix | None:
        b = bucket_of(p)
        if b is None:
            self.short.setdefault(p.plen, set()).add(p)
        else:
            self.inside.setdefault(b, set()).add(p)
        return b

    def remove(self, p: Prefix) -> Prefix | None:
        b = bucket_of(p)
        group = self.short.get(p.plen) if b is None else self.inside.get(b)
        if group is not None:
            group.discard(p)
            if not group:
                if b is None:
                    del self.short[p.plen]
                else:
                    del self.inside[b]
        return b

    def enclosing(self, bucket: Prefix) -> Prefix | None:
        """The longest prefix shorter than the bucket that covers it."""
        for plen in sorted(self.short, reverse=True):
            if plen >= bucket.plen:
                continue
            shift = KEY_BITS - plen
            p = Prefix(bucket.bits >> shift << shift, plen)
            if p in self.short[plen]:
                return p
        return None

    def element(self, bucket: Prefix, values: Mapping[SrcKey, int]) -> Entries | None:
        """The bucket's element under the current prefixes; None: the trie serves it."""
        inside = self.inside.get(bucket)
        if not inside or len(inside) > LIST_MAX:
            return None
        outer = self.enclosing(bucket)
        if outer is not None:
            if len(inside) == LIST_MAX:
                return None
            inside = inside | {outer}
        return _longest_first((p, values[src_key_of(p)]) for p in inside)

    def covered(self, shorts: Iterable[Prefix]) -> set[Prefix]:
        """Buckets (with prefixes or an element) under any of `shorts`."""
        by_len: dict[int, set[int]] = defaultdict(set)
        for p in shorts:
            by_len[p.plen].add(p.bits)
        out = set()
        for b in self.inside.keys() | self.written.keys():
            for plen, heads in by_len.items():
                shift = KEY_BITS - plen
                if b.bits >> shift << shift in heads:
                    out.add(b)
                    break
        return out


def _bucket_steps(src_put: Iterable[SrcKey], src_del: Iterable[SrcKey], new_src: Mapping[SrcKey, int],
                  index: SrcIndex) -> tuple[Step | None, Step | None]:
    touched: set[Prefix] = set()
    shorts: list[Prefix] = []
    for keys, change in ((src_del, index.remove), (src_put, index.add)):
        for key in keys:
            p = src_prefix(key)
            b = change(p)
            if b is None:
                shorts.append(p)
            else:
                touched.add(b)
    if shorts:
        touched |= index.covered(shorts)
    puts: list[tuple[Prefix, Entries]] = []
    dels: list[Prefix] = []
    for b in sorted(touched):
        element = index.element(b, new_src)
        held = index.written.get(b)
        if element is None:
            if held is not None:
                dels.append(b)
                del index.written[b]
                index.hint(bucket_hint(b), -1)
        elif element != held:
            puts.append((b, element))
            index.written[b] = element
            if held is None:
                index.hint(bucket_hint(b), 1)
    put = Step("put_bucket", tuple(b for b, _ in puts), tuple(e for _, e in puts)) if puts else None
    return put, (Step("del_bucket", tuple(dels)) if dels else None)


# --- stages 2 and 3 --------------------------------------------------------------------------


def _dst_steps(step: Step | None, put: bool) -> list[Step]:
    """A plan's stage-2 step, and the class lists it writes or removes. A step holds every key of
    each class it names (class ids are content-addressed: all new or all old)."""
    if step is None:
        return []
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, key in enumerate(step.keys):
        by_class[key.set].append(i)
    lists: list[tuple[int, Entries]] = []
    for cid, members in sorted(by_class.items()):
        if len(members) > LIST_MAX:
            continue
        if put:
            lists.append((cid, _longest_first((dst_prefix(step.keys[i]), step.values[i]) for i in members)))
        else:
            lists.append((cid, ()))
    kind = "put" if put else "del"
    out = [step]
    if lists:
        out.append(Step(f"{kind}_dst_list", tuple(c for c, _ in lists),
                        tuple(e for _, e in lists) if put else ()))
    return out


def _port_steps(step: Step | None, put: bool) -> list[Step]:
    """A plan's stage-3 step, and the exact-port entries it writes or removes."""
    if step is None:
        return []
    kind = "put" if put else "del"
    exact = [i for i, key in enumerate(step.keys) if key.prefixlen == EXACT_PORT_PLEN]
    out = [step]
    if exact:
        out.append(Step(f"{kind}_port_exact", tuple(exact_key(step.keys[i]) for i in exact),
                        tuple(step.values[i] for i in exact) if put else ()))
    return out


def _hinted(steps: Iterable[Step | None], index: SrcIndex) -> set[tuple[int, int]]:
    """Counts the hints of the buckets and exact ports the steps write or remove; returns them."""
    touched: set[tuple[int, int]] = set()
    for step in steps:
        if step is None:
            continue
        if step.kind.endswith("_bucket"):
            touched.update(map(bucket_hint, step.keys))  # counted by _bucket_steps
        elif step.kind.endswith("_port_exact"):
            change = 1 if step.kind.startswith("put") else -1
            for key in step.keys:
                index.hint((HINT_PORT, key.port), change)
                touched.add((HINT_PORT, key.port))
    return touched


def translate(plan: Plan, new: CompiledMatch, index: SrcIndex) -> Plan:
    """The physical writes of a plan (trie entries) towards `new`, in an order that keeps every
    packet judged by the old or the new policy; updates `index` to what they leave written."""
    steps = {s.kind: s for s in plan.steps}
    empty = Step("", ())
    bucket_put, bucket_del = _bucket_steps(steps.get("put_src", empty).keys, steps.get("del_src", empty).keys,
                                           new.src, index)
    port_put, port_del = _port_steps(steps.get("put_port"), True), _port_steps(steps.get("del_port"), False)
    touched = _hinted([bucket_put, bucket_del, *port_put, *port_del], index)
    parts: dict[str, Sequence[Step | None]] = {
        "put_slot": [steps.get("put_slot")],
        "put_port": port_put,
        "put_dst": _dst_steps(steps.get("put_dst"), True),
        "put_src": [steps.get("put_src"), bucket_put, bucket_del, steps.get("del_src")],
        "put_hint": [index.hint_step(touched)],
        "del_dst": _dst_steps(steps.get("del_dst"), False),
        "del_port": port_del,
        "free_slot": [steps.get("free_slot")],
    }
    out = [s for group in parts.values() for s in group if s is not None and s.keys]
    out.sort(key=lambda s: KINDS.index(s.kind))
    grace = next((i for i, s in enumerate(out) if s.kind in AFTER_GRACE), -1)
    return Plan(tuple(out), grace)


def flags(compiled: CompiledMatch, minimum: int = FIXED_DEPTH_MIN) -> int:
    """The fixed-depth forms worth looking up for this policy (TG_MATCH_F_*): those whose trie
    holds at least `minimum` entries. Any value is correct: the tries hold every entry."""
    return ((F_SRC_BUCKETS if len(compiled.src) >= minimum else 0)
            | (F_DST_LISTS if len(compiled.dst) >= minimum else 0)
            | (F_PORT_EXACT if len(compiled.port) >= minimum else 0))


# --- the lookup, as the program makes it (tests run it on every intermediate state) -----------


@dataclass
class Maps:
    """The physical maps of one table as dicts (keys as translate() writes them)."""

    slots: dict[int, Any] = field(default_factory=dict)
    src: dict[SrcKey, int] = field(default_factory=dict)
    src_bucket: dict[Prefix, Entries] = field(default_factory=dict)
    dst: dict[DstKey, int] = field(default_factory=dict)
    dst_list: dict[int, Entries] = field(default_factory=dict)
    port: dict[PortKey, int] = field(default_factory=dict)
    port_exact: dict[ExactKey, int] = field(default_factory=dict)
    hint: dict[int, int] = field(default_factory=dict)  # word -> 64 hint bits

    def hinted(self, kind: int, index: int) -> bool:
        word, bit = hint_word(kind, index)
        return bool(self.hint.get(word, 0) >> bit & 1)

    def apply(self, kind: str, key: Any, value: Any = None) -> None:
        verb, _, name = kind.partition("_")
        table = getattr(self, {"slot": "slots", "bucket": "src_bucket"}.get(name, name))
        if verb == "put":
            table[key] = value
        else:
            table.pop(key, None)


def _find(entries: Entries, bits: int) -> int | None:
    for p, value in entries:
        if p.contains(Prefix(bits, KEY_BITS)):
            return value
    return None


def _trie(table: Mapping[Any, int], make: Any, bits: int) -> int | None:
    for plen in range(KEY_BITS, -1, -1):
        shift = KEY_BITS - plen
        found = table.get(make(Prefix(bits >> shift << shift, plen)))
        if found is not None:
            return found
    return None


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def lookup(maps: Maps, src: Address, dst: Address, proto: int, dport: int, use: int = F_ALL) -> int:
    """What tg_match() finds in these maps with match_flags `use`."""
    sbits, dbits = address_bits(src), address_bits(dst)
    bucket = bucket_of(Prefix(sbits, KEY_BITS)) if use & F_SRC_BUCKETS else None
    if bucket is not None and not maps.hinted(*bucket_hint(bucket)):
        bucket = None
    element = maps.src_bucket.get(bucket) if bucket is not None else None
    if element is not None:
        cls = _find(element, sbits)
    else:
        cls = _trie(maps.src, src_key_of, sbits)
    if cls is None:
        return SLOT_NONE
    if cls & SET_F_RULESET:
        rs: int | None = cls & ~SET_F_RULESET
    elif use & F_DST_LISTS and cls in maps.dst_list:
        rs = _find(maps.dst_list[cls], dbits)
    else:
        rs = _trie(maps.dst, lambda p: DstKey(SET_BITS + p.plen, cls, p.family, p.addr), dbits)
    if rs is None:
        return SLOT_NONE
    exact = use & F_PORT_EXACT and maps.hinted(HINT_PORT, dport)
    found = maps.port_exact.get(ExactKey(rs, proto, dport)) if exact else None
    if found is not None:
        return found
    for plen in range(PORT_BITS, -1, -1):
        shift = PORT_BITS - plen
        found = maps.port.get(PortKey(SET_BITS + PROTO_BITS + plen, rs, proto, dport >> shift << shift))
        if found is not None:
            return found
    found = maps.port.get(PortKey(SET_BITS, rs, 0, 0))
    return SLOT_NONE if found is None else found
