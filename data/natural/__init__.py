"""The hand-written natural corpus: authoring sources (``sources/<writer>/*.jsonl``) and their build.

See ``data/natural/README.md`` for how it was written and split; ``authoring.py`` for the format.
"""
