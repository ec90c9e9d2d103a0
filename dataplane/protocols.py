"""The IP protocols a policy can name: their names, IANA numbers (the IPv4 protocol field, the
IPv6 next header) and which of them carry ports the data plane reads.

The one place for these in Python: the policy models, the tracer's filter, the CLI and the event
formatting read them here; the API's Protocol enum (proto/) mirrors them, checked by
tests/unit/control/rpc/test_proto_abi.py.
"""

from __future__ import annotations

from typing import Literal

# In the order the models and the CLI list them.
ProtocolName = Literal["tcp", "udp", "sctp", "icmp", "icmpv6"]
NUMBERS: dict[str, int] = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58}
NAMES: dict[int, str] = {number: name for name, number in NUMBERS.items()}
NUMBER_MAX = 255  # the IPv4 protocol field and the IPv6 next header are one byte
PORTED = frozenset({"tcp", "udp", "sctp"})  # their destination port is read (and matched)
ICMP = frozenset({"icmp", "icmpv6"})  # their type and code are read (and matched)
ICMP_NUMBERS = frozenset(NUMBERS[name] for name in ICMP)
TCP = NUMBERS["tcp"]  # its flags are read (a rule's `syn`)
