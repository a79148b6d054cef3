"""Runtime: worker, CLI and Lambda entry points; builds the ports once."""
