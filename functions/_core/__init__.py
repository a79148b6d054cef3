"""The core of mailplane, in two groups that are kept apart (tests/test_layout.py enforces it):

* ``model/``: the mail platform: records, the desired record set (mailset), plans, DKIM keys and their rotation,
  gateway nodes, deletion, the per-domain state, the verification gate, the ports of the mail systems
  (Mailcow, PMG, DNS) and the bundle of ports a handler gets. It may use ``platform``.
* ``platform/``: the event platform: envelope and schemas, errors, settings, domain-name normalisation, the
  retry policy, the idempotency ledger, per-subject leases, outcomes and the object-store port. It never imports
  ``model``: a change to retries never touches the DKIM model, and the other way round.

Nothing here does I/O on its own; adapters do, behind the ports.
"""
