"""A small multi-tenant Dramatiq app with the mollifier; see ``examples/README.md``."""
