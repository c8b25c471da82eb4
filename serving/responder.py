"""Response generation: ``POST /v1/respond`` calls a ``Responder``.

By default it is the response model behind the registry's serving alias,
``responder.model_ref: models:/findial-response@champion`` (``findial train
task=response`` registers a version, ``findial eval task=response`` scores it,
``findial promote model_name=findial-response`` moves the alias). A
``PromotedResponder`` polls that alias like the NLU model (a ``ModelHolder``
with the response loader) and swaps a newly promoted version in without a
restart; the reply names the registered model and version. While no version
holds the alias, ``/v1/respond`` answers ``503 no_response_model``;
``responder.model_ref: null`` turns response generation off.

A custom responder takes precedence: ``responder.target=pkg.module:make`` is
called with ``responder.options`` as keyword arguments and returns an object
with ``name``, ``version`` and ``respond(understanding, history) -> str``.
``understanding`` is the masked understanding of the user's turn (what
``/v1/understand`` returns) and ``history`` the masked preceding turns
(``[{"speaker", "text"}]``). A response that trips a compliance rule is withheld
and the turn handed off.

``responder.kind: grounded`` answers from the knowledge base instead (``serving/kb.py``): a deterministic
template over the best article's sentences with its citation, no GPU and no registered model needed.
Such a responder returns a ``Reply`` (text or None, cited article ids, the KB version, the hand-off reason
when it does not answer); the service checks a reply that cites articles against them and the dialogue
(``findial.data.kb.facts.check_grounding``) and withholds it, hand-off reason ``ungrounded``, when a figure
in it (an amount, percentage, count of days, date) is in neither.
"""

from __future__ import annotations

import asyncio
import importlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class Responder(Protocol):
    name: str
    version: str

    def respond(self, understanding: dict, history: list[dict]) -> str | Reply: ...  # Reply: a grounded one


class ResponderError(ValueError):
    pass


@dataclass(frozen=True)
class Reply:
    """What a grounded responder returns instead of a plain string."""

    text: str | None  # None: no answer, hand the turn off (``handoff_reason``)
    citations: tuple[str, ...] = ()  # ids of the KB articles the text is drawn from
    kb_version: str | None = None
    handoff_reason: str | None = None  # e.g. no_kb_answer (retrieval confidence too low), ungrounded
    sources: tuple[dict, ...] = ()  # the cited articles ({id, title, body, ...}): what the checker reads


def load_responder(target: str | None, options: dict | None = None) -> Responder | None:
    if not target:
        return None
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ResponderError(f"responder.target: expected 'module:callable', got {target!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ResponderError(f"responder.target: cannot import {target!r}: {exc}") from None
    responder = factory(**(options or {}))
    if not isinstance(responder, Responder):
        raise ResponderError(
            f"responder.target: {target!r} returned {type(responder).__name__}, which lacks "
            "name, version or respond(understanding, history)"
        )
    return responder


def load_response(
    model_dir: Path, device: str, ident: tuple[str, str] | None = None, grounded: dict | None = None, **decoding
) -> Responder:
    """The ``ModelHolder`` loader of a response package: named by its registered name and version. A grounded
    package (``findial.data.kb.package``) answers from the KB named by ``grounded`` (``kb``, ``kb_index``,
    ``kb_encoder``, ``poll_interval_s``: the ``responder.kb*`` settings)."""
    from findial.data.kb.package import is_grounded
    from findial.training.generation.responder import make

    if is_grounded(model_dir):
        from .kb import load_registered

        return load_registered(model_dir, ident, **(grounded or {}))

    name, version = ident or (None, None)
    return make(str(model_dir), device, name=name, version=version, **decoding)


class PromotedResponder:
    """The response model behind ``ref`` (a registry alias, polled; a fixed version or a package directory)."""

    def __init__(self, holder):
        self.holder = holder

    def current(self) -> Responder | None:
        """The responder in use now (take it once per turn: a swap may follow), None while none is loaded."""
        model = self.holder.current
        return model.pipeline if model is not None else None

    async def start(self) -> None:
        self.holder.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.holder.stop)

    def info(self) -> dict:
        model = self.holder.current
        return {
            "ref": self.holder.ref,
            "name": model.name if model else None,
            "version": model.version if model else None,
            "last_error": self.holder.last_error,
        }

    def unavailable(self) -> str:
        """Why there is nothing to answer with, and how to promote a response model."""
        from .model_store import parse_alias

        name = (parse_alias(self.holder.ref) or ("findial-response",))[0]
        return (
            f"no response model promoted behind {self.holder.ref}: evaluate a version "
            f"(findial eval task=response model_ref=models:/{name}/N eval_set=SET) and promote it "
            f"(findial promote model_name={name} version=N eval_set=SET); it is picked up without a restart"
        )


def build_responder(settings) -> Responder | PromotedResponder | None:
    """The responder of a ``ServeSettings`` (both backends): ``responder.target`` (a custom "module:callable")
    wins; else with ``responder.kind: grounded`` the KB responder (``serving/kb.py``); else the model behind
    ``responder.model_ref``; else none (``/v1/respond`` answers 503)."""
    cfg = settings.responder
    if cfg.target:
        return load_responder(cfg.target, cfg.options)
    if cfg.kind == "grounded":
        from .kb import KBResponder

        return KBResponder.from_settings(settings)
    if not cfg.model_ref:
        return None
    from .model_store import ModelHolder

    return PromotedResponder(
        ModelHolder(
            cfg.model_ref,
            settings.download_dir,
            settings.device,
            settings.poll_interval_s,
            loader=partial(
                load_response,
                grounded={
                    "kb": cfg.kb,
                    "kb_index": cfg.kb_index,
                    "kb_encoder": cfg.kb_encoder,
                    "poll_interval_s": settings.poll_interval_s,
                },
                **cfg.options,
            ),
            kind="response",
        )
    )
