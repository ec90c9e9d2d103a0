"""The ACL's flow cache (xdp/include/match.h, tg_acl_slot; docs/classifier.md, "Flow cache").

A hit must judge exactly as the search does, and a change of the ACL must decide the very next
packet of a cached flow. The data plane here caches every search (flow_cache_insert_one_in 1),
so a flow sent twice is a miss and then a hit; the entries are read back from the kernel's maps
to show the hit had an entry to come from. Its cache is dp (64 entries: more flows than it
holds are judged too). Beside it: the program without the cache (acl_flows 0), the reference of
the equivalence under edits, and the default insert chance (1 in 8).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from dataplane import abi
from dataplane.acl import acl_rule
from dataplane.kernel.bpf_info import map_info
from dataplane.kernel.build_settings import Capacities, DataplaneSettings
from dataplane.kernel.interface import Dataplane
from dataplane.map_config import RuntimeConfig
from dataplane.match.adapter import MatchRule, to_columns
from testbed.vxlan import inner_frame

from ..conftest import IF_MAC
from ..verdicts import Verdict, judge

pytestmark = pytest.mark.root

E, R = abi.Event, abi.Reason
FLOW = abi.struct_dtype("tg_flow")
KEY4 = abi.struct_dtype("tg_flow_key4")
PROBE = abi.struct_dtype("tg_probe")
TCP, UDP = 6, 17
ADDRS = {4: ("10.1.0.1", "10.2.0.2"), 6: ("2001:db8:1::1", "2001:db8:2::2")}
SMALL = Capacities(acl_rules=256, acl_buckets=512, acl_buckets4=512, acl_flows=64)


def send(dp: Any, packet: bytes) -> tuple[Verdict, str]:
    """The verdict, and whether the flow cache gave it ("hit"), the search ("miss"), or neither
    ("none": a build without the cache)."""
    before = dp.maps.event_counts()
    verdict = judge(dp, packet)
    after = dp.maps.event_counts()
    moved = {e for e in (E.FLOW_HIT, E.FLOW_MISS) if after[e].packets != before[e].packets}
    assert len(moved) <= 1 and all(after[e].packets - before[e].packets == 1 for e in moved)
    return verdict, {E.FLOW_HIT: "hit", E.FLOW_MISS: "miss"}[moved.pop()] if moved else "none"


def entries(dp: Any, family: int) -> list[tuple[np.void, int, int]]:
    """(key, generation, slot) of every entry of the family's map, as the kernel holds them."""
    name, dtype = ("acl_flows4", KEY4) if family == 4 else ("acl_flows6", PROBE)
    keys, values = dp.acl._writer(name).read_all()
    flows = np.frombuffer(values, dtype=FLOW)
    return [(k, int(f["gen"]), int(f["slot"]))
            for k, f in zip(np.frombuffer(keys, dtype=dtype), flows, strict=True)]


def entry_for(dp: Any, family: int, dport: int) -> tuple[int, int]:
    """(generation, slot) of the one entry of the flow to `dport` (the tests' flows differ in it)."""
    found = [(g, s) for k, g, s in entries(dp, family) if int(k["dport"]) == dport]
    assert len(found) == 1, f"expected one cached entry for port {dport}, found {found}"
    return found[0]


def slot_of(dp: Any, rule_id: int) -> int:
    live = dp.acl.current
    return int(live.slots[np.flatnonzero(live.records["rule_id"] == rule_id)[0]])


def tcp(family: int, dport: int, sport: int = 40000) -> bytes:
    src, dst = ADDRS[family]
    return inner_frame(src, dst, proto="tcp", sport=sport, dport=dport)


def port_rule(rule_id: int, priority: int, action: str, dport: int) -> MatchRule:
    return acl_rule(rule_id, priority, action, proto=TCP, dport=(dport, dport))


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def family(request: Any) -> int:
    return int(request.param)


@pytest.fixture(scope="module")
def eager(bpf_available: Any) -> Iterator[Any]:
    """A cache of 64 entries (per map, over the CPUs), inserting on every miss."""
    dp = Dataplane.load(settings=DataplaneSettings(capacities=SMALL, flow_cache_insert_one_in=1))
    yield dp
    dp.close()


@pytest.fixture
def dp(eager: Any) -> Any:
    """`eager` with no rules and the default config (default action allow)."""
    eager.acl.replace([])
    eager.classifiers.replace([])
    eager.configure(RuntimeConfig(default_action="allow"), if_mac=IF_MAC)
    return eager


@pytest.fixture
def allowing(dp: Any) -> Any:
    return dp


def test_a_hit_judges_as_the_search_did_and_counts_the_rule(allowing: Any, family: int) -> None:
    dp = allowing
    dp.acl.replace([port_rule(10, 10, "deny", 80), port_rule(11, 11, "allow", 443),
                    acl_rule(12, 12, "reject", proto=UDP)])
    src, dst = ADDRS[family]
    cases = [(tcp(family, 80), R.DROP_DENIED, 10), (tcp(family, 443), R.PASS_ALLOWED, 11),
             (tcp(family, 22), R.PASS_DEFAULT, None),
             (inner_frame(src, dst, proto="udp", dport=53), R.DROP_REJECTED, 12)]
    for packet, reason, rule_id in cases:
        counts = dp.acl.counts_by_rule()
        searched, how = send(dp, packet)
        assert how == "miss" and searched.reason == reason
        cached, how = send(dp, packet)
        assert how == "hit", "the second packet of a flow comes from the cache (insert chance 1)"
        assert (cached.reason, cached.action) == (searched.reason, searched.action)
        if rule_id is not None:  # the hit counted under the rule, as the search did
            assert dp.acl.counts_by_rule()[rule_id].packets == counts[rule_id].packets + 2
    gen, slot = entry_for(dp, family, 80)
    assert (gen, slot) == (dp.acl.generation(), slot_of(dp, 10))
    assert gen % 2 == 0
    assert entry_for(dp, family, 22)[1] == abi.define("TG_SLOT_NONE")  # "no rule": the default decides


def twice(dp: Any, packet: bytes) -> list[tuple[Any, str]]:
    """(reason, how) of the packet sent twice."""
    return [(v.reason, how) for v, how in (send(dp, packet) for _ in range(2))]


def _cached_deny(dp: Any, family: int) -> int:
    """Rule 10 denies TCP to port 80, and the flow to it is cached: its slot. Rule 11 stays when
    10 goes: an ACL left with no rule for the packet's addresses is answered by the prefilter
    alone, which is never cached (test_what_the_prefilter_alone_answers_is_never_cached)."""
    dp.acl.replace([port_rule(10, 10, "deny", 80), port_rule(11, 11, "allow", 443)])
    assert twice(dp, tcp(family, 80)) == [(R.DROP_DENIED, "miss"), (R.DROP_DENIED, "hit")]
    assert entry_for(dp, family, 80) == (dp.acl.generation(), slot_of(dp, 10))
    return slot_of(dp, 10)


def test_adding_a_rule_before_the_cached_one_decides_the_next_packet(allowing: Any, family: int) -> None:
    _cached_deny(allowing, family)
    allowing.acl.add(to_columns([port_rule(5, 5, "allow", 80)]))
    assert twice(allowing, tcp(family, 80)) == [(R.PASS_ALLOWED, "miss"), (R.PASS_ALLOWED, "hit")]


def test_deleting_the_cached_rule_decides_the_next_packet(allowing: Any, family: int) -> None:
    _cached_deny(allowing, family)
    allowing.acl.delete([10])
    assert twice(allowing, tcp(family, 80)) == [(R.PASS_DEFAULT, "miss"), (R.PASS_DEFAULT, "hit")]


def test_replacing_the_cached_rule_decides_the_next_packet(allowing: Any, family: int) -> None:
    _cached_deny(allowing, family)
    allowing.acl.add(to_columns([port_rule(10, 10, "allow", 80)]))  # the same id: replaced
    assert twice(allowing, tcp(family, 80)) == [(R.PASS_ALLOWED, "miss"), (R.PASS_ALLOWED, "hit")]
    allowing.acl.replace([port_rule(10, 10, "reject", 80)])  # and by a full compile
    assert twice(allowing, tcp(family, 80)) == [(R.DROP_REJECTED, "miss"), (R.DROP_REJECTED, "hit")]


def test_a_slot_given_to_another_rule_is_never_answered_from_a_stale_entry(dp: Any, family: int) -> None:
    dp.configure(RuntimeConfig(default_action="deny"), if_mac=IF_MAC)
    dp.acl.replace([port_rule(10, 10, "allow", 80)])
    assert twice(dp, tcp(family, 80)) == [(R.PASS_ALLOWED, "miss"), (R.PASS_ALLOWED, "hit")]
    slot = slot_of(dp, 10)
    dp.acl.replace([])  # the slot freed (and its record zeroed) ...
    # ... and given to a rule that allows every TCP packet but the cached flow's
    dp.acl.replace([acl_rule(20, 20, "allow", proto=TCP, dport=(81, 65535))])
    assert slot_of(dp, 20) == slot
    stale_gen, stale_slot = entry_for(dp, family, 80)
    assert stale_slot == slot and stale_gen < dp.acl.generation()  # the stale entry is still there
    # not the allow rule now in the slot
    assert twice(dp, tcp(family, 80)) == [(R.DROP_DEFAULT, "miss"), (R.DROP_DEFAULT, "hit")]
    assert entry_for(dp, family, 80) == (dp.acl.generation(), abi.define("TG_SLOT_NONE"))


# Sources of the rule in the prefilter test: far from ADDRS, so in other prefilter blocks
COVERED = {4: ("192.0.2.0/24", "192.0.2.7"), 6: ("fd00:99::/32", "fd00:99::7")}


def test_what_the_prefilter_alone_answers_is_never_cached(allowing: Any, family: int) -> None:
    """A packet no rule's addresses meet costs the search two array reads: caching it would only
    let a flood from addresses no rule covers evict the flows worth caching."""
    dp = allowing
    prefix, inside = COVERED[family]
    dp.acl.replace([acl_rule(30, 30, "deny", src=prefix, proto=TCP)])
    port = 7007  # no other test's flow
    assert twice(dp, tcp(family, port)) == [(R.PASS_DEFAULT, "miss")] * 2  # insert chance 1, yet no hit
    assert [e for e in entries(dp, family) if int(e[0]["dport"]) == port] == []
    # from inside the rule's prefix: searched, cached, then answered by the cache
    packet = inner_frame(inside, ADDRS[family][1], proto="tcp", sport=40000, dport=port)
    assert twice(dp, packet) == [(R.DROP_DENIED, "miss"), (R.DROP_DENIED, "hit")]
    assert entry_for(dp, family, port) == (dp.acl.generation(), slot_of(dp, 30))


def _write_gen(dp: Any, gen: int) -> None:
    """match_gen[ACL] written as another process would have left it."""
    acl = abi.enums()["tg_table"]["TG_TABLE_ACL"]
    dp.acl._writer("match_gen").update(np.array([acl], "=u4").tobytes(), np.array([gen], "=u8").tobytes())


def test_an_odd_generation_at_adoption_is_made_even_and_the_cache_used_again(allowing: Any,
                                                                          family: int) -> None:
    dp = allowing
    _cached_deny(dp, family)
    gen = dp.acl.generation()
    # A process that died inside a change leaves the generation odd: nothing is answered from
    # the cache, and nothing cached, while it is.
    _write_gen(dp, gen + 1)
    assert twice(dp, tcp(family, 80)) == [(R.DROP_DENIED, "miss")] * 2
    assert entry_for(dp, family, 80)[0] == gen  # not replaced while odd
    dp.acl.adopt()
    assert dp.acl.generation() == gen + 2
    assert twice(dp, tcp(family, 80)) == [(R.DROP_DENIED, "miss"), (R.DROP_DENIED, "hit")]
    dp.acl.delete([10])  # this process's next change moves it on from there
    assert dp.acl.generation() == gen + 4
    assert twice(dp, tcp(family, 80)) == [(R.PASS_DEFAULT, "miss"), (R.PASS_DEFAULT, "hit")]


def test_an_even_generation_at_adoption_is_kept(allowing: Any) -> None:
    _cached_deny(allowing, 4)
    gen = allowing.acl.generation()
    allowing.acl.adopt()
    assert allowing.acl.generation() == gen
    assert twice(allowing, tcp(4, 80)) == [(R.DROP_DENIED, "hit")] * 2  # the entries stay good


# --- builds of their own --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uncached(bpf_available: Any) -> Iterator[Any]:
    """The program without the cache (capacity 0), its ACL as dp as the cached one's."""
    dp = Dataplane.load(settings=DataplaneSettings(capacities=SMALL.model_copy(update={"acl_flows": 0})))
    yield dp
    dp.close()


def _random_rule(rng: random.Random, rule_id: int) -> MatchRule:
    lo, proto = rng.randrange(0, 64), rng.choice([None, TCP, UDP])
    return acl_rule(rule_id, rng.randrange(1, 20), rng.choice(["allow", "deny", "reject"]),
                    src=rng.choice([None, "10.1.0.0/16", "10.1.0.0/24", "2001:db8:1::/48"]), proto=proto,
                    dport=None if proto is None else (lo, lo + rng.randrange(0, 16)))


def _random_packet(rng: random.Random) -> bytes:
    family = rng.choice([4, 6])
    src = (f"10.1.{rng.randrange(2)}.{rng.randrange(1, 3)}" if family == 4
           else f"2001:db8:{rng.randrange(1, 3)}::1")
    return inner_frame(src, ADDRS[family][1], proto=rng.choice(["tcp", "udp"]), dport=rng.randrange(0, 80))


def test_the_cache_judges_as_the_program_without_it_through_edits(uncached: Any, dp: Any) -> None:
    """Random rules, random edits between packets, packets from a dp pool so flows repeat:
    every packet gets the verdict of the build without the cache, and many come from the cache."""
    rng = random.Random(14)
    for d in (uncached, dp):
        d.configure(RuntimeConfig(default_action="deny"), if_mac=IF_MAC)
    rules = {i: _random_rule(rng, i) for i in range(1, 40)}
    for d in (uncached, dp):
        d.acl.replace(list(rules.values()))
    pool = [_random_packet(rng) for _ in range(20)]
    hows: list[str] = []
    for step in range(800):
        if step % 40 == 39:  # an edit: add or replace a rule, or delete one
            rid = rng.randrange(1, 60)
            if rid in rules and rng.random() < 0.5:
                del rules[rid]
                for d in (uncached, dp):
                    d.acl.delete([rid])
            else:
                rules[rid] = _random_rule(rng, rid)
                for d in (uncached, dp):
                    d.acl.add(to_columns([rules[rid]]))
        packet = rng.choice(pool)
        want, none = send(uncached, packet)
        got, how = send(dp, packet)
        assert none == "none"
        assert got.reason == want.reason, f"step {step} ({how})"
        if got.reason != R.DROP_REJECTED:  # (answered or not as each CPU's answer bucket allows)
            assert got.action == want.action, f"step {step} ({how})"
        hows.append(how)
    assert hows.count("hit") > 200 and hows.count("miss") > 100


def test_without_the_cache_the_program_judges_and_counts_no_hit_or_miss(uncached: Any) -> None:
    uncached.configure(RuntimeConfig(default_action="allow"), if_mac=IF_MAC)
    uncached.acl.replace([port_rule(10, 10, "deny", 80)])
    for f in (4, 6):
        assert twice(uncached, tcp(f, 80)) == [(R.DROP_DENIED, "none")] * 2
        assert twice(uncached, tcp(f, 81)) == [(R.PASS_DEFAULT, "none")] * 2
    assert entries(uncached, 4) == entries(uncached, 6) == []
    # Made all the same (every build pins the same maps), with one entry per CPU's list.
    assert map_info(uncached.program.map_fd("acl_flows4")).max_entries < 1024


def test_more_flows_than_the_cache_holds_are_still_judged_right(dp: Any, family: int) -> None:
    dp.configure(RuntimeConfig(default_action="allow"), if_mac=IF_MAC)
    dp.acl.replace([acl_rule(1, 1, "deny", proto=TCP, dport=(0, 999))])
    capacity = map_info(dp.program.map_fd("acl_flows4")).max_entries
    flows = range(4 * capacity)
    for _ in range(2):
        for port in flows:  # ports below 1000 denied, the rest allowed by default
            verdict, _ = send(dp, tcp(family, 500 + port * 2))
            assert verdict.reason == (R.DROP_DENIED if 500 + port * 2 < 1000 else R.PASS_DEFAULT)
    held = [slot for _, gen, slot in entries(dp, family) if gen == dp.acl.generation()]
    assert 0 < len(held) <= capacity
    assert set(held) <= {slot_of(dp, 1), abi.define("TG_SLOT_NONE")}


def test_one_search_in_n_is_cached(bpf_available: Any) -> None:
    """The default insert chance, 1 in 8: over many new flows far fewer entries than searches."""
    settings = DataplaneSettings(capacities=SMALL.model_copy(update={"acl_flows": 65536}))
    assert settings.flow_cache_insert_one_in == 8
    dp = Dataplane.load(settings=settings)
    try:
        dp.configure(RuntimeConfig(default_action="allow"), if_mac=IF_MAC)
        dp.acl.replace([port_rule(10, 10, "deny", 80)])
        flows = 1600
        for sport in range(flows):  # each flow new: every one searched
            verdict, how = send(dp, tcp(4, 80, sport=1000 + sport))
            assert (verdict.reason, how) == (R.DROP_DENIED, "miss")
        held = len(entries(dp, 4))
        # Binomial(1,600, 1/8): mean 200, standard deviation 13.
        assert 120 < held < 300, held
    finally:
        dp.close()


def test_the_cache_maps_are_lru_hashes_with_a_list_per_cpu(loaded_dataplane: Any) -> None:
    """BPF_F_NO_COMMON_LRU: an insert takes no lock the other CPUs share (maps.h)."""
    lru_hash, no_common_lru = 9, 1 << 1  # include/uapi/linux/bpf.h
    for name in ("acl_flows4", "acl_flows6"):
        info = map_info(loaded_dataplane.program.map_fd(name))
        assert info.type == lru_hash and info.map_flags & no_common_lru, name
        assert info.max_entries >= abi.define("TG_ACL_FLOWS_MAX")  # the default capacity, rounded per CPU
