"""Smooth per-tenant enqueue bursts in Dramatiq through a fair Redis buffer."""

__version__ = "0.1.0.dev0"
