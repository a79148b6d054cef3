"""Shared core of mailplane: errors, configuration, names, records, plans and ports (no I/O here)."""
