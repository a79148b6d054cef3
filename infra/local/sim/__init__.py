"""Simulators of the Mailcow and PMG HTTP APIs: one behavioural model per system, thin HTTP front-ends."""
