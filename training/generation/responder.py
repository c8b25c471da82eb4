"""Generate the agent's reply with a trained response package, masked and checked against the rules.

    r = Responder("runs/.../response/package", device="cpu")
    r.respond([{"speaker": "user", "text": "我的信用卡丢了"}], intent="card_lost_report",
              state={"product": "credit_card"})
    -> {"text": "...", "flags": [...], "lang": "zh"}

Flags: ``pii_masked`` (the generation contained personal data, now replaced by ``[LABEL]``),
``compliance:<rule id>`` (a rule of the package's rule list fired: the reply must not be sent),
``empty`` (nothing was generated), ``truncated`` (the token limit cut the reply).
``make(package_dir, device)`` adapts it to the serving ``Responder`` protocol (``serving/responder.py``), which
serves the version behind ``models:/findial-response@champion`` by default.
"""

from __future__ import annotations

from pathlib import Path

import torch

from findial.data.pii import PIIMasker, default_masker

from .package import load_response_model
from .prompts import detect_lang, prompt_ids, stop_token_ids
from .rules import RuleSet

DECODING_KEYS = (
    "num_beams",
    "max_new_tokens",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "length_penalty",
    "max_time_s",
)


def mask_generation(text: str, masker: PIIMasker | None = None) -> tuple[str, bool]:
    """(masked text, whether anything was masked): personal data never leaves the Responder."""
    masked = (masker or default_masker()).mask(text)
    return masked, masked != text


def check_reply(text: str, rules: RuleSet, masker: PIIMasker | None = None) -> dict:
    """Mask a raw generation and check it: {"text", "flags"} as the Responder returns it."""
    flags = []
    text = text.strip()
    masked, changed = mask_generation(text, masker)
    if changed:
        flags.append("pii_masked")
    if not masked:
        flags.append("empty")
    flags += rules.flags(masked)
    return {"text": masked, "flags": flags}


class Responder:
    """A response package loaded for inference. Decoding settings default to the package's."""

    def __init__(self, package_dir: str | Path, device: str = "cpu", rules: str | Path | None = None, **decoding):
        unknown = set(decoding) - set(DECODING_KEYS)
        if unknown:
            raise ValueError(f"unknown decoding setting(s) {sorted(unknown)}; expected some of {DECODING_KEYS}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.package_dir = Path(package_dir)
        self.module, self.tokenizer, self.meta = load_response_model(self.package_dir, self.device)
        self.model = self.module.model
        self.decoding = {**self.meta.get("generation", {}), **decoding}
        self.rules = RuleSet.load(rules or self.package_dir / "rules.yaml")
        self.masker = default_masker()
        self.stop_ids = stop_token_ids(self.tokenizer, self.meta.get("stop_tokens"))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]

    def prompt(self, history: list[dict], intent: str | None, state: dict | None, lang: str) -> list[int]:
        """The prompt's token ids; personal data in the history is masked before the model sees it."""
        history = [{"speaker": t["speaker"], "text": self.masker.mask(str(t["text"]))} for t in history]
        m = self.meta
        budget = m["max_length"] - int(self.decoding.get("max_new_tokens", 64))
        return prompt_ids(self.tokenizer, history, intent, state, lang, m["system_prompt"], max(budget, 16))

    @torch.inference_mode()
    def generate(self, history: list[dict], intent: str | None, state: dict | None, lang: str) -> tuple[str, bool]:
        """The raw decoded generation (unmasked: use :meth:`respond`) and whether the limit cut it."""
        ids = self.prompt(history, intent, state, lang)
        d = self.decoding
        x = torch.tensor([ids], device=self.device)
        max_new = int(d.get("max_new_tokens", 64))
        out = self.model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            num_beams=int(d.get("num_beams", 1)),
            max_new_tokens=max_new,
            repetition_penalty=float(d.get("repetition_penalty", 1.0)),
            no_repeat_ngram_size=int(d.get("no_repeat_ngram_size", 0)),
            length_penalty=float(d.get("length_penalty", 1.0)),
            max_time=d.get("max_time_s"),
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
        )
        new = out[0, len(ids) :].tolist()
        ended = any(t in self.stop_ids for t in new)
        new = new[: next((i for i, t in enumerate(new) if t in self.stop_ids), len(new))]
        text = self.tokenizer.decode(new, skip_special_tokens=True).rstrip("\ufffd")  # a character cut by the limit
        return text, (not ended and len(new) >= max_new)

    def respond(
        self, history: list[dict], intent: str | None = None, state: dict | None = None, lang: str | None = None
    ) -> dict:
        """The reply to the last turn of ``history`` ([{"speaker", "text"}], oldest first)."""
        if not history:
            raise ValueError("history: at least the customer's turn is needed")
        lang = lang or detect_lang(next((t["text"] for t in reversed(history) if t["speaker"] == "user"), ""))
        raw, truncated = self.generate(history, intent, state or {}, lang)
        out = check_reply(raw, self.rules, self.masker)
        if truncated:
            out["flags"].append("truncated")
        return {**out, "lang": lang}


class ServingResponder:
    """The serving protocol (``name``, ``version``, ``respond(understanding, history) -> str``).

    A reply that breaks a compliance rule is replaced by the rule file's fallback text for its
    language, so it can never reach a customer even if the server's own rules differ.
    """

    def __init__(self, responder: Responder, name: str | None = None, version: str | None = None):
        self.responder = responder
        meta = responder.meta  # a package directory outside the registry is named after its backbone and run
        self.name = name or f"findial-response-{meta.get('backbone_name', 'lm')}"
        self.version = version or str(meta.get("train_run_id") or meta.get("data_fingerprint") or "local")[:12]

    def respond(self, understanding: dict, history: list[dict]) -> str:
        turns = list(history) + [{"speaker": "user", "text": understanding.get("text", "")}]
        out = self.responder.respond(
            turns, understanding.get("intent"), understanding.get("state") or {}, understanding.get("lang")
        )
        if any(f.startswith("compliance:") for f in out["flags"]):
            fallback = self.responder.rules.fallback
            return fallback.get(out["lang"]) or fallback.get("en") or ""
        return out["text"]


def make(
    package_dir: str, device: str = "cpu", name: str | None = None, version: str | None = None, **decoding
) -> ServingResponder:
    """Factory for ``serve`` configs: ``responder.target=findial.training.generation.responder:make``;
    ``serving.responder.load_response`` builds the registered model with it (its registered name and version)."""
    return ServingResponder(Responder(package_dir, device, **decoding), name, version)
