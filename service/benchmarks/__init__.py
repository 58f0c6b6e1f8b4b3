"""Measurements behind the figures in docs/SERVICE.md; run as scripts, never imported by the server."""
