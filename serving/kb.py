"""The grounded KB responder of ``/v1/respond`` (``responder.kind: grounded``), reloaded when the KB changes.

``KBHolder`` loads the articles file (``responder.kb``, default the bundled ``data/kb/articles.jsonl``),
builds or updates the index (``responder.kb_index``, default ``$FINDIAL_HOME/kb-index``; the ``Retriever``
embeds only new and changed articles) and holds a ``GroundedResponder`` over it as ``current``. Like the
model holders it polls, every ``poll_interval_s`` seconds, here the file's mtime and size: when they change
and the content's ``kb_version`` too, the index is updated and a new responder is swapped in (one reference
assignment), without a restart; a turn keeps the responder it took. A file that fails to load or index is
logged and skipped (the old KB keeps serving) until it changes again.

``KBResponder`` is a ``PromotedResponder`` over that holder: the app starts and stops it, ``/v1/respond``
answers 503 until the first index is ready, ``/healthz`` names the KB version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .responder import PromotedResponder, Reply

if TYPE_CHECKING:
    from findial.data.kb.encoder import Encoder

log = logging.getLogger("findial.serving")
NAME = "findial-kb-grounded"


class GroundedResponder:
    """A ``Responder`` over one KB version: ``respond`` returns a ``Reply`` with the citation."""

    name = NAME

    def __init__(self, answerer, version: str):
        self.answerer, self.version = answerer, version

    def respond(self, understanding: dict, history: list[dict]) -> Reply:
        said = [t["text"] for t in history]
        a = self.answerer.answer(understanding["text"], understanding.get("lang"), understanding.get("state"), said)
        sources = tuple(self.answerer.articles[c] for c in a.citations)
        return Reply(a.text, a.citations, self.version, a.reason, sources)


@dataclass(frozen=True)
class LoadedKB:
    pipeline: GroundedResponder  # the name PromotedResponder reads
    name: str
    version: str  # kb_version
    articles: int
    loaded_at: str
    index: dict  # what Retriever.index reported (embedded, reused, removed)


class KBHolder:
    def __init__(
        self,
        articles_path: str | Path | None,
        index_dir: str | Path,
        encoder_path=None,
        poll_interval_s: float = 30.0,
        threshold: float | None = None,
        glossary=None,
        settings=None,
    ):
        from findial.data.kb.load import DEFAULT_ARTICLES

        self.path = Path(articles_path or DEFAULT_ARTICLES)
        self.index_dir, self.encoder_path = Path(index_dir), encoder_path
        self.poll_interval_s, self.threshold, self.glossary = poll_interval_s, threshold, glossary
        self.settings = settings  # a registered package's GroundedSettings (threshold, k, fusion); None: defaults
        self.ref, self.kind = str(self.path), "kb"
        self.current: LoadedKB | None = None
        self.last_error: str | None = None
        self.reloads: Counter = Counter()
        self._seen = None
        self._encoder: Encoder | None = None  # the first reload's loaded model, kept across reloads
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _stat(self):
        st = self.path.stat()
        return st.st_mtime_ns, st.st_size

    def check_once(self) -> bool:
        """Load the KB if the file changed since the last look; True when a new version was swapped in."""
        from findial.data.kb import package as grounded_package
        from findial.data.kb.grounded import DEFAULT_THRESHOLD, GroundedAnswerer
        from findial.data.kb.index import Retriever
        from findial.data.kb.load import kb_version, load_kb
        from findial.data.labelbook import Glossary

        with self._lock:
            try:
                stat = self._stat()
                if stat == self._seen:
                    return False
                self._seen = stat
                self.glossary = self.glossary or Glossary.load()
                articles = load_kb(self.path, self.glossary)
                version = kb_version(articles)
                if self.current is not None and self.current.version == version:
                    return False
                retriever = Retriever(self.encoder_path)
                retriever._encoder = self._encoder  # one loaded model across reloads (None: load it)
                stats = retriever.index(articles, self.index_dir)
                self._encoder = retriever.encoder
                if self.settings is not None:
                    answerer = grounded_package.answerer(self.settings, retriever, articles, self.glossary)
                else:
                    threshold = DEFAULT_THRESHOLD if self.threshold is None else self.threshold
                    answerer = GroundedAnswerer(retriever, articles, self.glossary, threshold)
            except Exception as exc:  # noqa: BLE001 - a bad file must not stop the server; the old KB serves
                self.last_error = f"{self.path}: {exc}"
                self.reloads["failure"] += 1
                log.error("knowledge base not loaded: %s", self.last_error)
                return False
            self.current = LoadedKB(
                GroundedResponder(answerer, version),
                NAME,
                version,
                len(articles),
                time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                stats,
            )
            self.last_error = None
            self.reloads["success"] += 1
            log.info(
                "knowledge base %s loaded from %s (%d articles; embedded %d, reused %d)",
                version,
                self.path,
                len(articles),
                stats["embedded"],
                stats["reused"],
            )
            return True

    def start(self) -> None:
        """Load now (in the background), then look at the file every ``poll_interval_s`` seconds (0: never)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="findial-kb-poller", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        self.check_once()
        while self.poll_interval_s > 0 and not self._stop.wait(self.poll_interval_s):
            self.check_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def wait_loaded(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.current is None and time.monotonic() < deadline and not self._stop.is_set():
            self._stop.wait(0.1)
        return self.current is not None


class KBResponder(PromotedResponder):
    """``/v1/respond`` over a ``KBHolder`` (started and stopped with the app)."""

    @classmethod
    def from_settings(cls, settings) -> "KBResponder":
        cfg = settings.responder
        return cls(KBHolder(cfg.kb, cfg.kb_index, cfg.kb_encoder, settings.poll_interval_s, cfg.kb_threshold))

    def info(self) -> dict:
        kb = self.holder.current
        return {
            "ref": self.holder.ref,
            "name": NAME,
            "version": kb.version if kb else None,
            "last_error": self.holder.last_error,
            "index": str(self.holder.index_dir),
        }

    def unavailable(self) -> str:
        why = f": {self.holder.last_error}" if self.holder.last_error else " (its index is being built)"
        return f"the knowledge base {self.holder.ref} is not loaded yet{why}"


class RegisteredKBResponder:
    """A registered grounded package as the response model of ``/v1/respond``: the version's settings over the
    live KB (reloaded when the file changes, like ``KBHolder`` alone); replies name the registered name and
    version, and the KB version that answered."""

    def __init__(self, holder: KBHolder, name: str, version: str):
        self.holder, self.name, self.version = holder, name, version

    def respond(self, understanding: dict, history: list[dict]) -> Reply:
        kb = self.holder.current
        if kb is None:
            raise RuntimeError(f"the knowledge base {self.holder.ref} is not loaded: {self.holder.last_error}")
        return kb.pipeline.respond(understanding, history)


def load_registered(
    model_dir: Path,
    ident: tuple[str, str] | None,
    kb=None,
    kb_index=None,
    kb_encoder=None,
    poll_interval_s: float = 30.0,
) -> RegisteredKBResponder:
    """The ``ModelHolder`` loader's grounded branch (``serving.responder.load_response``): builds or updates the
    index now, refuses an encoder other than the one the version was evaluated with, then polls the KB file."""
    from findial.data.kb import package as grounded_package
    from findial.data.kb.encoder import model_id
    from findial.data.kb.index import Retriever

    settings = grounded_package.load(model_dir)
    if settings.encoder:
        given = model_id(Retriever(kb_encoder)._path())
        if given != settings.encoder:
            raise grounded_package.PackageError(
                f"{model_dir}: the version was evaluated with encoder {settings.encoder}; "
                f"responder.kb_encoder gives {given}"
            )
    holder = KBHolder(kb, kb_index or Path(model_dir) / "kb-index", kb_encoder, poll_interval_s, settings=settings)
    holder.check_once()
    if holder.current is None:
        raise RuntimeError(holder.last_error or f"the knowledge base {holder.ref} did not load")
    holder.start()
    name, version = ident or (NAME, "local")
    return RegisteredKBResponder(holder, name, version)
