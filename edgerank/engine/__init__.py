"""Batching, admission and ranking shared by the CLI and the daemon."""
