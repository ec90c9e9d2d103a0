"""dataplane.protocols: the names the models accept are the ones with numbers, and the numbers
are IANA's (as the C library knows them)."""

from __future__ import annotations

import socket
from typing import get_args

from dataplane import protocols


def test_every_name_the_models_accept_has_a_number_in_the_same_order():
    assert list(get_args(protocols.ProtocolName)) == list(protocols.NUMBERS)
    assert protocols.PORTED <= set(protocols.NUMBERS)
    assert {n: p for p, n in protocols.NAMES.items()} == protocols.NUMBERS


def test_numbers_are_ianas():
    assert protocols.NUMBERS == {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP,
                                 "sctp": socket.IPPROTO_SCTP, "icmp": socket.IPPROTO_ICMP,
                                 "icmpv6": socket.IPPROTO_ICMPV6}
