"""The event platform: envelope, errors, settings, names, retry policy, idempotency ledger, leases, outcomes, store.

Knows nothing of mail: never imports ``functions._core.model`` (tests/test_layout.py).
"""
