"""Adapters: the only code that talks to Mailcow, PMG, DNS and the object store."""
