"""Tidegate's benchmark suite (issue 5): `make bench` or `python -m testbed.bench [--quick]`.

One module per benchmark, each with `NAME`, `TITLE` and `run(profile) -> Section`:

    cost           per-packet cost of the XDP program, BPF_PROG_TEST_RUN (ns/packet)
    drop           drop rate of a denied flow on veth: Tidegate vs iptables, nftables, xdp-filter
    decap          VxLAN decap throughput: the kernel's vxlan device vs Tidegate at XDP
    control_plane  applying rules and single updates through the daemon's gRPC API

and the parts they share: `common` (profile, values, result model), `rules` (random realistic
rule sets rendered for every engine), `programs` (the floor and the test-run harness), `lpm`
(LPM trie path lengths, the ACL profile), `load` (namespaces, trafgen, receive CPU), `engines`
(the filters compared), `report` (BENCHMARKS.md and plots) and `runner` (the command line).
"""
