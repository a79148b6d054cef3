"""The mail-platform model: what a domain, a key and a gateway node are, and how each event changes them.

One logic module per handler (the rule is in ``functions/__init__.py``): provisioning (domain.created), deletion
(domain.deleted), rotation (key.rotate), failover (node.down, node.up). The other modules are shared by those and by
the operator commands: records, mailset, plans, verify, keys, state, nodes, ports.
"""
