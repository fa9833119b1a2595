"""Dramatiq apps the end-to-end tests run with the real ``dramatiq`` CLI."""
