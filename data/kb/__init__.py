"""The bundled bilingual knowledge base (``articles.jsonl``), its labelled query set (``queries.jsonl``) and
retrieval over it.

- ``load``      format checks: ``load_kb``, ``load_queries``, ``kb_version`` (format: ``data/kb/README.md``)
- ``encoder``   multilingual-e5 embeddings (query / passage prefixes, mean pooling, L2)
- ``bm25``      Okapi BM25 (zh character bigrams, en words)
- ``index``     ``Retriever``: an incrementally rebuilt FAISS index directory, hybrid dense + BM25 search
- ``metrics``   recall@k and MRR; ``scoring``: per-language scores of the labelled queries (``findial kb eval``)
- ``grounded``  the template responder: the best article's most relevant sentences, cited
- ``facts``     ``check_grounding``: every amount, rate, period and date of a reply must come from a cited article
                or the dialogue
"""
