"""Inference over dialogues: intent + emotion in context, entities, linked terms, accumulated state."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from findial.data.corpus import dialogue_task, turn_records
from findial.data.labelbook import Glossary, LabelBook
from findial.data.pii import default_masker
from findial.data.state import DialogueStateTracker
from findial.data.term_linker import TermLinker
from findial.data.term_matcher import GlossaryMatcher, merge_terms

from .features import bio_viterbi, decode_spans, encode_intent, encode_ner, word_units
from .package import check_member, load_package


def for_inference(module):
    """The module as inference runs it: the LoRA adapters folded into the encoder's weights, so an
    adapted projection is one matmul instead of three. (Dynamic int8 quantisation was measured too:
    2.3x faster on CPU, but entity F1 fell from 0.93 to 0.82 on validation, so it is not offered.)"""
    if hasattr(module.encoder, "merge_and_unload"):
        module.encoder = module.encoder.merge_and_unload()
    return module


def serving_module(module, path: str | Path, meta: dict, device: str, runtime: str):
    """The folded ``module``, or with ``runtime`` onnx its ONNX Runtime stand-in
    (``onnx_runtime.onnx_module``: same inputs, same named logits)."""
    if runtime == "torch":
        return module
    from .onnx_runtime import check_runtime, onnx_module
    from .package import resolve_backbone

    check_runtime(runtime)
    return onnx_module(path, module, resolve_backbone(meta["backbone"]), device, runtime)


def member_rows(gate: dict | None, probs: torch.Tensor, rows: list[int]) -> list[int]:
    """Of ``rows`` (indices into ``probs`` [n, labels]: the main model's probabilities), those the ensemble
    members read under the package's ``member_gate`` (``{"by": "margin" | "confidence", "below": t}``): the
    rows whose top-1 minus top-2 probability (margin) or top-1 probability is below ``t``; without a gate,
    all of them."""
    if not gate or not rows:
        return list(rows)
    top = probs[rows].topk(min(2, probs.shape[-1]), dim=-1).values
    score = top[:, 0] - top[:, 1] if gate.get("by", "margin") == "margin" and top.shape[-1] > 1 else top[:, 0]
    return [i for i, s in zip(rows, score.tolist()) if s < float(gate["below"])]


def check_gate(gate, where: str) -> dict | None:
    """A package's ``member_gate`` (see ``member_rows``), checked; None: the members read every turn."""
    if gate is None:
        return None
    if not isinstance(gate, dict) or gate.get("by", "margin") not in ("margin", "confidence"):
        raise ValueError(f"{where}: member_gate must be {{by: margin|confidence, below: number}}, got {gate!r}")
    below = gate.get("below")
    if isinstance(below, bool) or not isinstance(below, (int, float)) or not 0.0 <= below <= 1.0:
        raise ValueError(f"{where}: member_gate.below must be a number within [0, 1], got {below!r}")
    return dict(gate)


def _batches(items: list, size: int, key):
    order = sorted(range(len(items)), key=lambda i: key(items[i]))
    for i in range(0, len(order), size):
        yield order[i : i + size]


def _pad(features: list[dict], pad_id: int, device) -> dict:
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        ids[i, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
        mask[i, : len(f["attention_mask"])] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def load_members(predictor, path: str | Path, meta: dict, device: str, batch_size: int, runtime: str = "torch") -> list:
    """The ensemble members a package lists (``members/<name>``), each loaded with ``predictor`` (the
    package's own predictor class) and checked against the package (``check_member``)."""
    members = [
        predictor(Path(path) / "members" / name, device, batch_size, runtime=runtime)
        for name in meta.get("members", ())
    ]
    for name, member in zip(meta.get("members", ()), members):
        check_member(name, member.meta, meta, path)
    return members


class IntentPredictor:
    """An intent package, and the ensemble members it carries (``members/<name>``, listed in its meta):
    intent packages over the same intents, usually on another backbone, reading the turn alone and trained
    on the turns of their own task (``task.turns: own_task``). On a turn before any task is predicted, or one
    the main model reads as a new task, the intent is the one with the highest mean of the models'
    probabilities; a follow-up the main model reads as the dialogue's task, and every emotion, are the main
    model's alone."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 64, runtime: str = "torch"):
        self.module, self.tokenizer, self.meta = load_package(path, device)
        self.module = serving_module(for_inference(self.module), path, self.meta, device, runtime)
        self.device, self.batch_size = device, batch_size
        self.members = load_members(IntentPredictor, path, self.meta, device, batch_size, runtime)
        self.member_gate = check_gate(self.meta.get("member_gate"), f"{path}/findial_model.json")

    @torch.inference_mode()
    def probabilities(self, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(intent, emotion or None) probabilities per turn record, this package's model alone. The record's
        context is cut to the package's own ``context_turns``."""
        m = self.meta
        keep = m.get("context_turns", 3)
        feats = [
            encode_intent(
                self.tokenizer,
                {**r, "context": (r.get("context") or [])[-keep:] if keep else [], "intent": None, "emotion": None},
                m["max_length"],
                m["intents"],
                [],
                bool(m.get("previous_intent")),
            )
            for r in rows
        ]
        intents = torch.zeros(len(rows), len(m["intents"]))
        emotions = torch.zeros(len(rows), len(m["emotions"])) if m.get("emotions") else None
        for idx in _batches(feats, self.batch_size, key=lambda f: len(f["input_ids"])):
            res = self.module(_pad([feats[i] for i in idx], self.tokenizer.pad_token_id or 0, self.device))
            intents[idx] = res["intent_logits"].float().softmax(-1).cpu()
            if emotions is not None and "emotion_logits" in res:
                emotions[idx] = res["emotion_logits"].float().softmax(-1).cpu()
        return intents, emotions

    @torch.inference_mode()
    def predict(self, rows: list[dict]) -> list[dict]:
        """Intent (+ emotion) per turn record. A model that reads the previous intent takes the row's
        ``previous_intent``: the caller's prediction for the turn before (see ``predict_dialogues``)."""
        m = self.meta
        ip, ep = self.probabilities(rows)
        own = [
            i
            for i, r in enumerate(rows)
            if not r.get("previous_intent") or m["intents"][int(ip[i].argmax())] != r["previous_intent"]
        ]
        ask = member_rows(self.member_gate, ip, own) if self.members else []
        if ask:
            ip[ask] = (ip[ask] + sum(mem.probabilities([rows[i] for i in ask])[0] for mem in self.members)) / (
                1 + len(self.members)
            )
        out: list[dict] = []
        for k in range(len(rows)):
            conf, j = ip[k].max(0)
            res = {"intent": m["intents"][j], "confidence": round(float(conf), 4)}
            if ep is not None:
                ec, ej = ep[k].max(0)
                res.update(emotion=m["emotions"][ej], emotion_confidence=round(float(ec), 4))
            out.append(res)
        return out

    def dialogue_task(self, intents) -> str | None:
        """What the model reads as the previous intent after ``intents`` (oldest first): the last one
        outside the package's ``non_task_intents``."""
        return dialogue_task(intents, self.meta.get("non_task_intents", ()))

    def predict_in_order(self, rows: list[dict]) -> list[dict]:
        """``predict`` over whole dialogues: each turn reads the dialogue task predicted so far (never
        the gold one), so turns go in waves by position, each wave one batched call."""
        if not self.meta.get("previous_intent") and not self.members:
            return self.predict(rows)
        out: list[dict] = [{} for _ in rows]
        last: dict[str, str | None] = {}
        position: dict[str, int] = {}
        waves: list[list[int]] = []
        for i, r in enumerate(rows):
            k = position[r["dialogue_id"]] = position.get(r["dialogue_id"], -1) + 1
            if k == len(waves):
                waves.append([])
            waves[k].append(i)
        for wave in waves:
            batch = [{**rows[i], "previous_intent": last.get(rows[i]["dialogue_id"])} for i in wave]
            for i, res in zip(wave, self.predict(batch)):
                out[i], d = res, rows[i]["dialogue_id"]
                last[d] = self.dialogue_task([last.get(d), res["intent"]])
        return out


class EntityPredictor:
    """A NER package, and the ensemble members it carries (``members/<name>``, listed in its meta): NER
    packages over the same tags, usually on another backbone and so another tokenizer. Each model's tag
    probabilities per word are laid on the finest common split of the text into words (a word one model
    cuts in two continues as ``I-`` for that model) and averaged there; the BIO decoding reads the mean."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 64, runtime: str = "torch"):
        self.module, self.tokenizer, self.meta = load_package(path, device)
        self.module = serving_module(for_inference(self.module), path, self.meta, device, runtime)
        self.device, self.batch_size = device, batch_size
        # terminology mentions may stand side by side; two values of another label never do
        self.side_by_side = LabelBook.load(Path(path) / "ontology.yaml").terminology_labels
        self.members = load_members(EntityPredictor, path, self.meta, device, batch_size, runtime)
        self.member_gate = check_gate(self.meta.get("member_gate"), f"{path}/findial_model.json")

    @torch.inference_mode()
    def word_outputs(self, texts: list[str]) -> list[tuple[list[tuple[int, int]], torch.Tensor, torch.Tensor | None]]:
        """Per text, this package's model alone: its words (character spans, ``word_units``), their tag
        probabilities [words, tags] and, when the package has a stand head, their stand probabilities
        [words] (each word's first token's), else None."""
        tags = self.meta["tags"]
        feats = [encode_ner(self.tokenizer, {"text": t}, self.meta["max_length"], tags) for t in texts]
        out: list = [None] * len(texts)
        for idx in _batches(feats, self.batch_size, key=lambda f: len(f["input_ids"])):
            res = self.module(_pad([feats[i] for i in idx], self.tokenizer.pad_token_id or 0, self.device))
            probs = res["tag_logits"].float().softmax(-1).cpu()
            stands = res["stand_logits"].float().sigmoid().cpu() if "stand_logits" in res else None
            for k, i in enumerate(idx):
                units = word_units(texts[i], feats[i]["offsets"])
                words = torch.tensor([j for j, (a, b) in enumerate(units) if a < b], dtype=torch.long)
                out[i] = (
                    [units[j] for j in words.tolist()],
                    probs[k, words],
                    stands[k, words] if stands is not None else None,
                )
        return out

    def member_texts(self, own: list) -> list[int]:
        """The texts (indices into ``own``, ``word_outputs``) the members read under the package's
        ``member_gate``: those with a word whose margin (or top-1 probability) is below the gate's ``below``;
        without a gate, all of them. A text without words needs no member."""
        if not self.member_gate:
            return list(range(len(own)))
        ask = []
        for i, (_, p, _) in enumerate(own):
            if len(p) and member_rows(self.member_gate, p, list(range(len(p)))):
                ask.append(i)
        return ask

    def word_probabilities(self, texts: list[str]) -> list[tuple[list[tuple[int, int]], torch.Tensor]]:
        """Per text, this package's model alone: its words and their tag probabilities (``word_outputs``)."""
        return [(words, p) for words, p, _ in self.word_outputs(texts)]

    def predict(self, texts: list[str]) -> list[list[dict]]:
        """Per text, the entities; with a stand head each carries ``stands``: the mean stand probability of
        this package's model (never a member's) over its words that the entity's span overlaps."""
        tags = self.meta["tags"]
        own = self.word_outputs(texts)
        ask = self.member_texts(own) if self.members else []
        others = {
            i: parts for i, *parts in zip(ask, *(m.word_probabilities([texts[i] for i in ask]) for m in self.members))
        }
        out: list[list[dict]] = []
        for i, text in enumerate(texts):
            own_words, own_p, stands = own[i]
            words, p = common_words([(own_words, own_p)] + others[i], tags) if i in others else (own_words, own_p)
            tag_ids = bio_viterbi(p.clamp_min(1e-12).log().numpy(), tags, [True] * len(words), self.side_by_side)
            conf = p[torch.arange(len(tag_ids)), torch.tensor(tag_ids, dtype=torch.long)]
            spans = decode_spans(text, None, tag_ids, tags, conf.tolist(), words)
            if stands is not None:
                for s in spans:
                    inside = [k for k, (a, b) in enumerate(own_words) if a < s["end"] and s["start"] < b]
                    if inside:
                        s["stands"] = round(float(stands[inside].mean()), 4)
            out.append(spans)
        return out


def common_words(parts: list[tuple[list[tuple[int, int]], torch.Tensor]], tags: list[str]):
    """Several models' (words, tag probabilities) over one text -> the same on the finest common split:
    the pieces between every word boundary of every model. A piece that starts a model's word takes that
    word's probabilities, one inside it the same with each ``B-X`` counted as ``I-X`` (the word goes on);
    a piece is the mean over the models with a word there."""
    cuts = sorted({b for words, _ in parts for span in words for b in span})
    cont = torch.arange(len(tags))
    for j, t in enumerate(tags):
        if t.startswith("B-") and "I-" + t[2:] in tags:
            cont[j] = tags.index("I-" + t[2:])
    pieces, rows = [], []
    for a, b in zip(cuts, cuts[1:]):
        found = []
        for words, p in parts:
            k = next((k for k, (s, e) in enumerate(words) if s <= a and b <= e), None)
            if k is not None:
                found.append(p[k] if words[k][0] == a else torch.zeros_like(p[k]).index_add_(0, cont, p[k]))
        if found:
            pieces.append((a, b))
            rows.append(torch.stack(found).mean(0))
    return pieces, torch.stack(rows) if rows else torch.zeros(0, len(tags))


class NLUPipeline:
    """The understanding model that gets registered, evaluated and served: intent + NER + linker + tracker."""

    def __init__(
        self,
        intent_path: str | Path,
        ner_path: str | Path,
        device: str = "cpu",
        labelbook: LabelBook | None = None,
        glossary: Glossary | None = None,
        term_matching: str | None = None,
        runtime: str = "torch",
    ):
        self.intent = IntentPredictor(intent_path, device, runtime=runtime)
        self.ner = EntityPredictor(ner_path, device, runtime=runtime)
        self.runtime = runtime
        self.labelbook = labelbook or LabelBook.load(Path(intent_path) / "ontology.yaml")
        self.glossary = glossary or Glossary.load(Path(intent_path) / "glossary.yaml")
        self.linker = TermLinker(self.glossary)
        self.matcher = GlossaryMatcher(self.glossary, self.ner.meta.get("settled_forms", ()))
        self.term_matching = term_matching or self.ner.meta.get("term_matching", "glossary")
        self.tracker = DialogueStateTracker(self.labelbook, self.ner.meta.get("stand_head", {}).get("threshold", 0.5))
        self.stateless_intents = frozenset(self.intent.meta.get("stateless_intents", ()))
        self.context_turns = self.intent.meta.get("context_turns", 3)
        self.masker = default_masker()

    def link(self, text: str, entities: list[dict]) -> tuple[list[dict], list[str]]:
        """Listed glossary forms as mentions (``term_matching``), then glossary ids for the model's other
        terminology spans. A span no glossary term fits is not a mention: it is returned as an unknown
        surface form (reported, never guessed)."""
        linked, unknown = [], []
        for e in merge_terms(
            text, entities, self.matcher.find(text), self.labelbook.terminology_labels, self.term_matching
        ):
            if e["label"] in self.labelbook.terminology_labels and e.pop("source", None) != "glossary":
                e["term_id"] = self.linker.link(text[e["start"] : e["end"]], e["label"]).term_id
                if e["term_id"] is None:
                    unknown.append(text[e["start"] : e["end"]])
                    continue
            linked.append(e)
        return linked, unknown

    def resolve_turn(
        self, text: str, entities: list[dict], state: dict, intent: str | None = None
    ) -> tuple[list[dict], dict, list[str]]:
        """One user turn's predicted entities -> (linked entities without empty fields, the state after
        the turn, the unknown terminology surface forms); ``state`` is left untouched. A turn whose
        predicted ``intent`` is one of the package's ``stateless_intents`` leaves the state as it was.
        An entity's ``stands`` (a stand head's) is read by the tracker only: it is not returned."""
        linked, unknown = self.link(text, [dict(e) for e in entities])
        if intent not in self.stateless_intents:
            state = self.tracker.update(state, linked, text)
        return [{k: v for k, v in e.items() if v is not None and k != "stands"} for e in linked], state, unknown

    def predict_dialogues(self, dialogues: list[dict]) -> list[dict]:
        """Predicted copies of the dialogues: user turns get intent, emotion, entities, state, confidences."""
        rows = turn_records(dialogues, self.context_turns)
        intents = self.intent.predict_in_order(rows)
        entities = self.ner.predict([r["text"] for r in rows])
        by_turn = {(r["dialogue_id"], r["turn_index"]): (i, e) for r, i, e in zip(rows, intents, entities)}
        preds = []
        for d in dialogues:
            p = copy.deepcopy(d)
            state: dict = {}
            for t_idx, turn in enumerate(p["turns"]):
                if turn["speaker"] != "user":
                    continue
                intent, ents = by_turn[(d["id"], t_idx)]
                ents, state, unknown = self.resolve_turn(turn["text"], ents, state, intent["intent"])
                turn.update(intent)
                turn["entities"] = ents
                # surface strings leave the pipeline masked: a card number mislabelled as DURATION stays hidden
                turn["state"] = {k: self.masker.mask(v) for k, v in state.items()}
                if unknown:
                    turn["unknown_terms"] = [self.masker.mask(u) for u in unknown]
            preds.append(p)
        return preds
