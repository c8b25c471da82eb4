"""Seeded generator of the bundled bilingual dialogue corpus (see README.md and build.py)."""
