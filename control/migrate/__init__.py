"""`tidegate import`: take over an iptables/nftables policy gradually.

The pipeline, one module per stage (data flows one way):

    iptables.py / nft.py / ipset.py   the tools' own output -> ir.Ruleset (parsed rules)
    flatten.py                        user-defined chains inlined (RETURN kept) -> per-hook stages
    translate.py                      order safety + capability table -> a Plan: the Tidegate ACL,
                                      each source rule's fate, what stays in netfilter
    residual.py                       the netfilter rules to keep, in the tools' own input format
    report.py                         the table (text and JSON) of every source rule's fate
    command.py                        the CLI command (`tidegate import`)

Nothing here talks to the daemon except command.py, through the daemon's normal ApplyPolicy.
"""
