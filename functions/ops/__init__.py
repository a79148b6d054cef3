"""Operator commands and scheduled producers: the ``mailplane`` CLI (``cli.py`` and its ``cli_*`` groups), status,
drift, plan, dlq, demo, and the producers that publish events: rotate-due (key.rotate), probe (node.down/node.up)
and node.retire. Uses ``functions.runtime`` to publish and to run the worker; delivery never imports this package.
"""
