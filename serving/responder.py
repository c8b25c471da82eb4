"""Response generation is pluggable: ``POST /v1/respond`` calls a ``Responder``.

No response model ships with findial yet, so by default there is none and
``/v1/respond`` answers ``503 no_response_model`` ("no response model promoted").
To plug one in, name a callable in the config (``responder.target=pkg.module:make``);
it is called with ``responder.options`` as keyword arguments and returns an
object with ``name``, ``version`` and ``respond(understanding, history) -> str``.
``understanding`` is the masked understanding of the user's turn (what
``/v1/understand`` returns) and ``history`` the masked preceding turns
(``[{"speaker", "text"}]``). A response that trips a compliance rule is withheld
and the turn handed off.
"""
from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable


@runtime_checkable
class Responder(Protocol):
    name: str
    version: str

    def respond(self, understanding: dict, history: list[dict]) -> str: ...


class ResponderError(ValueError):
    pass


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
        raise ResponderError(f"responder.target: {target!r} returned {type(responder).__name__}, which lacks "
                             "name, version or respond(understanding, history)")
    return responder
