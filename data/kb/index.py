"""A dense (e5 + FAISS) and BM25 index of a knowledge base, rebuilt incrementally, searched with fusion.

An index directory holds ``manifest.json`` (format, ``kb_version``, the embedding model's id and path, one
``{id, lang, hash}`` per FAISS row), ``vectors.faiss`` (an ``IndexFlatIP`` of unit vectors: inner product is
cosine) and ``docs.jsonl`` (id, lang, title, body: what BM25 and ``findial kb search`` read). It is written
through ``findial.tracking.atomic_directory``, so a failed build leaves the previous index as it was.

``index(articles, index_dir)`` embeds only the articles whose content hash (of the embedded text) is new or
changed, reuses the stored vectors of the others and drops removed ones; a different model re-embeds all.

``search`` ranks the articles of the query's language (all, without one) by a fusion of the dense and BM25
scores: ``weighted`` (a weighted sum of min-max normalised scores, ``weight`` the dense share: 1.0 is dense
alone, 0.0 BM25 alone) or ``rrf`` (weighted reciprocal rank fusion, k = 60). The defaults are what the
validation queries chose (``benchmarks/kb_retrieval.py``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import faiss

from findial.tracking import atomic_directory

from .bm25 import BM25
from .encoder import Encoder, model_id

FORMAT = 1
FUSIONS = ("weighted", "rrf")
DEFAULT_FUSION, DEFAULT_WEIGHT = "weighted", 0.8  # chosen on the validation queries: benchmarks/kb_retrieval.py
RRF_K = 60


def passage(article: dict) -> str:
    """The text embedded for an article (after the ``"passage: "`` prefix)."""
    return f"{article['title']}\n{article['body']}"


def content_hash(article: dict) -> str:
    return hashlib.sha256(passage(article).encode("utf-8")).hexdigest()[:16]


def fuse(dense: np.ndarray, sparse: np.ndarray, fusion: str = DEFAULT_FUSION, weight: float = DEFAULT_WEIGHT):
    """Fused scores of the same candidates under two scorers (higher is better)."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion {fusion!r} is not one of {list(FUSIONS)}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight {weight} is not in [0, 1]")
    if fusion == "rrf":

        def rrf(s):
            ranks = np.empty(len(s))
            ranks[np.argsort(-s, kind="stable")] = np.arange(1, len(s) + 1)
            return 1.0 / (RRF_K + ranks)

        return weight * rrf(dense) + (1 - weight) * rrf(sparse)

    def minmax(s):
        span = s.max() - s.min() if len(s) else 0.0
        return (s - s.min()) / span if span > 0 else np.zeros_like(s)

    return weight * minmax(dense) + (1 - weight) * minmax(sparse)


class Retriever:
    """Build with ``index(articles, index_dir)`` or open one with ``Retriever.load(index_dir)``; then ``search``.

    ``encoder_path``: the embedding model's directory (default: the bundled e5-small; for ``load``, the one
    the manifest names).
    """

    def __init__(
        self,
        encoder_path: str | Path | None = None,
        fusion: str = DEFAULT_FUSION,
        weight: float = DEFAULT_WEIGHT,
        batch_size: int = 16,
    ):
        fuse(np.zeros(1), np.zeros(1), fusion, weight)  # check the settings now
        self.encoder_path = Path(encoder_path) if encoder_path is not None else None
        self.fusion, self.weight, self.batch_size = fusion, weight, batch_size
        self._encoder: Encoder | None = None
        self._bm25: dict = {}
        self.manifest: dict = {}  # empty until index() or Retriever.load()
        self.docs: list[dict] = []
        self.vectors: faiss.Index | None = None

    # -- building ---------------------------------------------------------------------------------------------
    def _path(self) -> Path:
        if self.encoder_path is None:
            from findial.training.backbones import e5_small

            self.encoder_path = e5_small()
        return self.encoder_path

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = Encoder(self._path(), batch_size=self.batch_size)
        return self._encoder

    def embed(self, texts: list[str], kind: str) -> np.ndarray:
        return self.encoder.embed(texts, kind)

    def index(self, articles: list[dict], index_dir: str | Path) -> dict:
        """(Re)build ``index_dir`` for ``articles``; returns ``{"embedded", "reused", "removed", "articles"}``."""
        import faiss

        from findial.data.kb.load import kb_version

        if not articles:
            raise ValueError("no articles to index")
        index_dir = Path(index_dir)
        mid = model_id(self._path())
        old = _read_old(index_dir, mid)
        hashes = [content_hash(a) for a in articles]
        todo = [i for i, (a, h) in enumerate(zip(articles, hashes)) if old.get(a["id"], (None, None))[0] != h]
        fresh = self.embed([passage(articles[i]) for i in todo], "passage") if todo else None
        dim = fresh.shape[1] if fresh is not None else next(iter(old.values()))[1].shape[0]
        vectors = np.zeros((len(articles), dim), dtype=np.float32)
        redo = set(todo)
        for i, a in enumerate(articles):
            if i not in redo:
                vectors[i] = old[a["id"]][1]
        if todo:
            vectors[todo] = fresh
        flat = faiss.IndexFlatIP(dim)
        flat.add(vectors)
        ids = {a["id"] for a in articles}
        manifest = {
            "format": FORMAT,
            "kb_version": kb_version(articles),
            "model_id": mid,
            "model_path": str(self._path()),
            "dim": dim,
            "articles": [{"id": a["id"], "lang": a["lang"], "hash": h} for a, h in zip(articles, hashes)],
        }
        with atomic_directory(index_dir) as tmp:
            faiss.write_index(flat, str(tmp / "vectors.faiss"))
            with (tmp / "docs.jsonl").open("w", encoding="utf-8") as fh:
                for a in articles:
                    doc = {k: a[k] for k in ("id", "lang", "title", "body")}
                    fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
            (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
        self._open(index_dir)
        return {
            "articles": len(articles),
            "embedded": len(todo),
            "reused": len(articles) - len(todo),
            "removed": len(set(old) - ids),
            "kb_version": manifest["kb_version"],
        }

    # -- searching --------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, index_dir: str | Path, encoder_path: str | Path | None = None, **kw) -> "Retriever":
        r = cls(encoder_path, **kw)
        manifest = r._open(Path(index_dir))
        if r.encoder_path is None:
            r.encoder_path = Path(manifest["model_path"])
        if model_id(r.encoder_path) != manifest["model_id"]:
            raise ValueError(
                f"{index_dir}: built with {manifest['model_id']}, not {model_id(r.encoder_path)}; "
                "rebuild it (findial kb index)"
            )
        return r

    def _open(self, index_dir: Path) -> dict:
        """Read the index in ``index_dir``; its manifest."""
        import faiss

        if not (index_dir / "manifest.json").is_file():
            raise FileNotFoundError(f"{index_dir}: no index here (build one: findial kb index)")
        manifest = json.loads((index_dir / "manifest.json").read_text(encoding="utf-8"))
        self.manifest = manifest
        self.docs = [json.loads(line) for line in (index_dir / "docs.jsonl").open(encoding="utf-8")]
        self.vectors = faiss.read_index(str(index_dir / "vectors.faiss"))
        self._bm25 = {}
        return manifest

    def candidates(self, query: str, lang: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The ids of the articles in ``lang`` (all without it), with their dense and BM25 scores."""
        if not self.manifest or self.vectors is None:
            raise RuntimeError("no index: call index() or Retriever.load() first")
        rows = [i for i, d in enumerate(self.docs) if lang is None or d["lang"] == lang]
        if not rows:
            return [], np.zeros(0), np.zeros(0)
        q = self.embed([query], "query")
        n = self.vectors.ntotal
        sims, found = self.vectors.search(q, n)
        dense_all = np.zeros(n, dtype=np.float64)
        dense_all[found[0]] = sims[0]
        if lang not in self._bm25:
            self._bm25[lang] = BM25([passage(self.docs[i]) for i in rows])
        return (
            [self.docs[i]["id"] for i in rows],
            dense_all[rows],
            np.asarray(self._bm25[lang].scores(query), dtype=np.float64),
        )

    def ranking(
        self, query: str, lang: str | None = None, fusion: str | None = None, weight: float | None = None
    ) -> list[tuple[str, float]]:
        ids, dense, sparse = self.candidates(query, lang)
        return rank(ids, dense, sparse, fusion or self.fusion, self.weight if weight is None else weight)

    def search(self, query: str, lang: str | None = None, k: int = 5) -> list[tuple[str, float]]:
        """The top ``k`` ``(article id, score)``, best first, among the articles in ``lang`` (all without it)."""
        return self.ranking(query, lang)[:k]


def rank(ids: list[str], dense: np.ndarray, sparse: np.ndarray, fusion: str, weight: float) -> list[tuple[str, float]]:
    """``(id, fused score)`` best first (ties keep the index order)."""
    if not ids:
        return []
    scores = fuse(dense, sparse, fusion, weight)
    return [(ids[i], float(scores[i])) for i in np.argsort(-scores, kind="stable")]


def _read_old(index_dir: Path, mid: str) -> dict[str, tuple[str, np.ndarray]]:
    """``{id: (hash, vector)}`` of an existing index built with model ``mid`` ({} otherwise)."""
    import faiss

    try:
        manifest = json.loads((index_dir / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT or manifest.get("model_id") != mid:
            return {}
        vectors = faiss.read_index(str(index_dir / "vectors.faiss"))
        stored = vectors.reconstruct_n(0, vectors.ntotal)
    except (OSError, ValueError, RuntimeError):
        return {}
    return {a["id"]: (a["hash"], stored[i]) for i, a in enumerate(manifest["articles"]) if i < len(stored)}
