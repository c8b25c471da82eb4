"""Metrics over dialogues in the corpus format (``data/spec/corpus-format.md``).

``gold`` and ``pred`` are lists of dialogues with the same ids and the same turn
structure (speaker sequence); the user turns of ``pred`` carry the predicted
``intent``, ``entities``, ``state``, ``emotion`` (and optionally ``confidence``,
not used here). A mismatch in ids or turns raises ``ValueError``.

Conventions (applied everywhere):

- A metric with no support is None, never 0, so a gate can tell "missing" from
  "failed": accuracies with no eligible turn; precision, recall and F1 when
  there is neither a gold nor a predicted mention.
- Otherwise zero-division gives 0.0: precision with no predictions (but some
  gold) is 0.0, recall with no gold (but some predictions) is 0.0, and F1 is 0.0
  when precision + recall is 0.
- Span matching is strict and multiset-based: a predicted mention is a true
  positive only if an unmatched gold mention of the same turn has the same key
  (start, end, label[, term_id]); duplicates count as often as they occur.
- A missing predicted field (intent, emotion) is simply wrong. States are
  compared as whole dicts, slots whose value is None being treated as absent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache

from findial.data.labelbook import LabelBook

Dialogue = dict


def _user_turns(gold: Sequence[Dialogue], pred: Sequence[Dialogue]) -> Iterator[tuple[str, int, int, dict, dict]]:
    """(dialogue id, turn index, user-turn index within the dialogue, gold turn, predicted turn)."""
    by_id = {d["id"]: d for d in pred}
    if len(by_id) != len(pred):
        raise ValueError("predictions: duplicate dialogue ids")
    missing = [d["id"] for d in gold if d["id"] not in by_id]
    extra = set(by_id) - {d["id"] for d in gold}
    if missing or extra:
        raise ValueError(
            f"predictions do not match gold: missing ids {missing[:5]}, unexpected ids {sorted(extra)[:5]}"
        )
    for g in gold:
        p = by_id[g["id"]]
        if [t["speaker"] for t in g["turns"]] != [t["speaker"] for t in p["turns"]]:
            raise ValueError(f"dialogue {g['id']!r}: predicted turns do not match the gold turn structure")
        k = 0
        for i, (gt, pt) in enumerate(zip(g["turns"], p["turns"])):
            if gt["speaker"] == "user":
                yield g["id"], i, k, gt, pt
                k += 1


def prf(tp: int, n_gold: int, n_pred: int) -> dict:
    """precision / recall / f1 / support (= n_gold) / predicted, with the conventions above."""
    if n_gold == 0 and n_pred == 0:
        return {"precision": None, "recall": None, "f1": None, "support": 0, "predicted": 0}
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f1, "support": n_gold, "predicted": n_pred}


def _ratio(hits: int, n: int) -> float | None:
    return hits / n if n else None


def _mentions(gold, pred, key) -> tuple[Counter, Counter]:
    """Multisets of (dialogue id, turn index, *key(entity)) for gold and predicted mentions."""
    g_c: Counter = Counter()
    p_c: Counter = Counter()
    for did, i, _, gt, pt in _user_turns(gold, pred):
        for counter, turn in ((g_c, gt), (p_c, pt)):
            for e in turn.get("entities") or ():
                k = key(e)
                if k is not None:
                    counter[(did, i, *k)] += 1
    return g_c, p_c


@lru_cache(maxsize=1)
def _default_terminology_labels() -> frozenset[str]:
    return LabelBook.load().terminology_labels


def terminology_prf(gold: Sequence[Dialogue], pred: Sequence[Dialogue], labels: Iterable[str] | None = None) -> dict:
    """Strict micro P/R/F1 over terminology mentions: (start, end, label, term_id) must all match.

    ``labels`` defaults to the ``terminology: true`` labels of the bundled label book.
    """
    labels = frozenset(_default_terminology_labels() if labels is None else labels)

    def key(e):
        return (e["start"], e["end"], e["label"], e.get("term_id")) if e["label"] in labels else None

    g_c, p_c = _mentions(gold, pred, key)
    return prf(sum((g_c & p_c).values()), sum(g_c.values()), sum(p_c.values()))


def entity_prf_per_label(
    gold: Sequence[Dialogue], pred: Sequence[Dialogue], labels: Iterable[str] = ()
) -> dict[str, dict]:
    """Strict (start, end, label) P/R/F1 per label, plus a "micro" entry over all labels.

    Reports every label in ``labels`` and every label seen in gold or predictions.
    """
    g_c, p_c = _mentions(gold, pred, lambda e: (e["start"], e["end"], e["label"]))
    tp_c = g_c & p_c
    per: dict[str, list[int]] = {lab: [0, 0, 0] for lab in labels}
    for idx, counter in enumerate((tp_c, g_c, p_c)):
        for k, n in counter.items():
            per.setdefault(k[-1], [0, 0, 0])[idx] += n
    out = {lab: prf(*counts) for lab, counts in per.items()}
    out["micro"] = prf(sum(tp_c.values()), sum(g_c.values()), sum(p_c.values()))
    return out


def _field_pairs(gold, pred, field: str) -> list[tuple[object, object]]:
    """(gold, predicted) values of ``field`` over user turns that have a gold value."""
    return [(gt[field], pt.get(field)) for *_, gt, pt in _user_turns(gold, pred) if gt.get(field) is not None]


def intent_accuracy(gold: Sequence[Dialogue], pred: Sequence[Dialogue]) -> float | None:
    pairs = _field_pairs(gold, pred, "intent")
    return _ratio(sum(g == p for g, p in pairs), len(pairs))


def intent_macro_f1(gold: Sequence[Dialogue], pred: Sequence[Dialogue]) -> float | None:
    """Unweighted mean of per-intent F1 over the union of intents in gold and predictions.

    Same as sklearn ``f1_score(y_true, y_pred, average="macro")``: per intent
    F1 = 2TP / (2TP + FP + FN), so an intent only ever predicted (or only in
    gold and never predicted) counts with F1 = 0. Over user turns with a gold
    intent; a missing prediction is a false negative that adds no intent.
    """
    pairs = _field_pairs(gold, pred, "intent")
    if not pairs:
        return None
    tp: Counter = Counter()
    fp: Counter = Counter()
    fn: Counter = Counter()
    for g, p in pairs:
        if g == p:
            tp[g] += 1
        else:
            fn[g] += 1
            if p is not None:
                fp[p] += 1
    intents = set(tp) | set(fp) | set(fn)
    return sum(2 * tp[i] / (2 * tp[i] + fp[i] + fn[i]) for i in intents) / len(intents)


def emotion_accuracy(gold: Sequence[Dialogue], pred: Sequence[Dialogue]) -> float | None:
    """Over user turns with a gold emotion."""
    pairs = _field_pairs(gold, pred, "emotion")
    return _ratio(sum(g == p for g, p in pairs), len(pairs))


def _state(turn: dict) -> dict:
    return {k: v for k, v in (turn.get("state") or {}).items() if v is not None}


def joint_state_accuracy(gold: Sequence[Dialogue], pred: Sequence[Dialogue]) -> float | None:
    """Share of user turns with a gold state whose whole predicted state equals it."""
    hits = n = 0
    for *_, gt, pt in _user_turns(gold, pred):
        if gt.get("state") is not None:
            n += 1
            hits += _state(gt) == _state(pt)
    return _ratio(hits, n)


def _multi_turn(gold, pred) -> tuple[int, int]:
    hits = n = 0
    for _, _, k, gt, pt in _user_turns(gold, pred):
        if k >= 1 and gt.get("intent") is not None and gt.get("state") is not None:
            n += 1
            hits += gt["intent"] == pt.get("intent") and _state(gt) == _state(pt)
    return hits, n


def multi_turn_accuracy(gold: Sequence[Dialogue], pred: Sequence[Dialogue]) -> float | None:
    """Over user turns with at least one earlier user turn in the same dialogue (and a
    gold intent and state): the share where the predicted intent AND the whole
    predicted state equal gold."""
    return _ratio(*_multi_turn(gold, pred))


def evaluate_dialogues(gold: Sequence[Dialogue], pred: Sequence[Dialogue], labelbook: LabelBook) -> dict:
    """Every metric above in one dict; None marks a metric with no support."""
    n_user = sum(1 for _ in _user_turns(gold, pred))  # also validates the alignment
    term = terminology_prf(gold, pred, labelbook.terminology_labels)
    entities = entity_prf_per_label(gold, pred, labelbook.entities)
    return {
        "n_dialogues": len(gold),
        "n_user_turns": n_user,
        "n_multi_turn": _multi_turn(gold, pred)[1],
        "terminology_precision": term["precision"],
        "terminology_recall": term["recall"],
        "terminology_f1": term["f1"],
        "terminology_support": term["support"],
        "multi_turn_accuracy": multi_turn_accuracy(gold, pred),
        "intent_accuracy": intent_accuracy(gold, pred),
        "intent_macro_f1": intent_macro_f1(gold, pred),
        "emotion_accuracy": emotion_accuracy(gold, pred),
        "joint_state_accuracy": joint_state_accuracy(gold, pred),
        "entity_micro_f1": entities["micro"]["f1"],
        "entities": entities,
    }
