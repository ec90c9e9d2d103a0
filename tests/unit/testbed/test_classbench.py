"""testbed.classbench: reading ClassBench files, and finding every set in a directory."""

from __future__ import annotations

import gzip

import pytest

from testbed import classbench

LINES = ("@10.1.0.0/16\t0.0.0.0/0\t0 : 65535\t80 : 80\t0x06/0xFF\t0x0000/0x0000\t\n"
         "@0.0.0.0/0\t192.0.2.0/24\t1024 : 65535\t0 : 65535\t0x00/0x00\t0x0000/0x0000\t\n"
         "@0.0.0.0/0\t0.0.0.0/0\t0 : 65535\t0 : 65535\t0x2F/0xFF\t0x0000/0x0000\t\n")


def test_every_set_in_the_directory_is_found_shipped_seeds_first(tmp_path):
    for name in ("fw2_10000", "acl1_1000", "mine_1000", "fw1_10000", "acl5_10000", "acl1_10000"):
        (tmp_path / f"{name}.rules.gz").write_bytes(gzip.compress(LINES.encode()))
    (tmp_path / "README.md").write_text("not a set")
    (tmp_path / "fw3_10000.rules").write_text(LINES)  # not compressed: not a set this reads
    assert classbench.sets(tmp_path) == [("acl1", 1000), ("mine", 1000), ("acl1", 10000), ("fw1", 10000),
                                         ("acl5", 10000), ("fw2", 10000)]
    assert classbench.seeds(10_000, tmp_path) == ["acl1", "fw1", "acl5", "fw2"]
    assert classbench.seeds(100_000, tmp_path) == []
    assert classbench.sets(tmp_path / "absent") == []


def test_a_set_reads_in_file_order_with_ports_only_where_packets_have_them():
    cols = classbench.parse(LINES + "@0.0.0.0/0\t0.0.0.0/0\t53 : 53\t0 : 65535\t0x01/0xFF\t0x0000/0x0000\t\n")
    # line 2 (any protocol, source ports 1024-65535) is three rules: TCP, UDP, SCTP, one priority
    assert cols.rule_id.tolist() == [1, 2, 3, 4, 5, 6]
    assert (cols.order >> 32).tolist() == [0, 1, 1, 1, 2, 3]
    assert cols.action.tolist() == [classbench.ACTIONS[i % 2] for i in (0, 1, 1, 1, 2, 3)]
    assert cols.proto_any.tolist() == [False] * 6
    assert cols.proto.tolist() == [6, 6, 17, 132, 47, 1]
    assert (int(cols.dport_lo[0]), int(cols.dport_hi[0])) == (80, 80)
    assert [(int(cols.sport_lo[i]), int(cols.sport_hi[i])) for i in range(1, 4)] == [(1024, 65535)] * 3
    assert (int(cols.sport_lo[5]), int(cols.sport_hi[5])) == (0, 65535)  # ICMP has no ports to compare
    assert cols.src_len.tolist() == [16, 0, 0, 0, 0, 0] and cols.dst_len.tolist() == [0, 24, 24, 24, 0, 0]
    any_wildcard = classbench.parse("@0.0.0.0/0\t0.0.0.0/0\t0 : 65535\t0 : 65535\t0x00/0x00\t0x0000/0x0000\n")
    assert any_wildcard.proto_any.tolist() == [True]  # any protocol, any port: one rule


def test_a_prefix_with_host_bits_is_refused_naming_its_line():
    with pytest.raises(ValueError, match="line 2: dst prefix 192.0.2.1/24: not an IPv4 prefix without host"):
        classbench.parse(LINES.replace("192.0.2.0/24", "192.0.2.1/24"))
    with pytest.raises(ValueError, match="line 1: src prefix 10.1.0.300/16"):
        classbench.parse(LINES.replace("10.1.0.0/16", "10.1.0.300/16"))
    with pytest.raises(ValueError, match="line 2: dst prefix 192.0.2/24"):  # not four numbers: its own line
        classbench.parse(LINES.replace("192.0.2.0/24", "192.0.2/24"))
    with pytest.raises(ValueError, match="line 3: src prefix 2001:db8::1/32: .*host bits"):
        classbench.parse(LINES.replace("@0.0.0.0/0\t0.0.0.0/0\t0 : 65535\t0 : 65535\t0x2F",
                                       "@2001:db8::1/32\t::/0\t0 : 65535\t0 : 65535\t0x2F"))
    with pytest.raises(ValueError, match="line 3: dst prefix 0.0.0.0/0: .*different families"):
        classbench.parse(LINES.replace("@0.0.0.0/0\t0.0.0.0/0\t0 : 65535\t0 : 65535\t0x2F",
                                       "@2001:db8::/32\t0.0.0.0/0\t0 : 65535\t0 : 65535\t0x2F"))


def test_an_ipv6_set_reads_as_the_same_rules_of_family_6():
    v6 = classbench.parse("@2001:db8:a::/48\t::/0\t0 : 65535\t443 : 443\t0x06/0xFF\t0x0000/0x0000\n"
                          "@::/0\t2001:db8::5/128\t0 : 65535\t0 : 65535\t0x3A/0xFF\t0x0000/0x0000\n")
    assert v6.family.tolist() == [6, 6]
    assert bytes(v6.src_addr[0]) == bytes.fromhex("20010db8000a") + bytes(10)
    assert v6.src_len.tolist() == [48, 0]
    assert bytes(v6.dst_addr[1]) == bytes.fromhex("20010db8") + bytes(11) + b"\x05" and v6.dst_len[1] == 128
    assert v6.proto.tolist() == [6, 58] and (int(v6.dport_lo[0]), int(v6.dport_hi[0])) == (443, 443)
