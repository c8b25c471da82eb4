"""The bundled bilingual knowledge base (``articles.jsonl``) and its labelled query set (``queries.jsonl``).

Format: ``data/kb/README.md``; loader and validator: ``findial.data.kb.load``.
"""
