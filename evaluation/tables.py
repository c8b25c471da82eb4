"""Report tables computed from gold and predicted dialogues.

- ``intent_table``: precision / recall / F1 / support per intent (user turns with a gold intent);
- ``intent_confusion``: gold x predicted intent counts, labels grouped by label-book domain;
- ``confidence_summary``: intent confidence histograms of correct vs incorrect predictions;
- ``breakdown``: the headline metrics on the dialogues of each language, branch, ...

Every function takes the same aligned ``gold`` / ``pred`` lists as ``metrics.evaluate_dialogues``
(a mismatch raises ``ValueError``) and returns plain JSON-ready values.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from findial.data.labelbook import LabelBook
from findial.gates import as_gates

from .metrics import _user_turns, evaluate_dialogues, prf

NO_PREDICTION = "(none)"
NO_BRANCH = "(none)"
BREAKDOWN_METRICS = (
    "n_dialogues",
    "n_user_turns",
    "terminology_f1",
    "multi_turn_accuracy",
    "intent_accuracy",
    "intent_macro_f1",
    "entity_micro_f1",
    "joint_state_accuracy",
    "emotion_accuracy",
)


def _intent_pairs(gold: Sequence[dict], pred: Sequence[dict]) -> list[tuple[str, str | None, float | None]]:
    """(gold intent, predicted intent, confidence) for every user turn with a gold intent."""
    return [
        (gt["intent"], pt.get("intent"), pt.get("confidence"))
        for *_, gt, pt in _user_turns(gold, pred)
        if gt.get("intent") is not None
    ]


def domain_order(labels: set[str], labelbook: LabelBook) -> list[str]:
    """``labels`` grouped by domain (domains in label-book order), label-book order inside a domain.

    Labels the label book does not know come last, alphabetically.
    """
    book = labelbook.intents
    domains = list(dict.fromkeys(labelbook.intent_domains.get(i, "") for i in book))
    rank = {i: (domains.index(labelbook.intent_domains.get(i, "")), n) for n, i in enumerate(book)}
    known = sorted((lab for lab in labels if lab in rank), key=rank.__getitem__)
    return known + sorted(lab for lab in labels if lab not in rank)


def intent_table(gold: Sequence[dict], pred: Sequence[dict], labelbook: LabelBook) -> dict[str, dict]:
    """Per intent present in gold or predictions: domain, precision, recall, f1, support, predicted.

    Ordered by domain like the label book. Same conventions as ``metrics.prf`` (an intent only
    predicted has recall 0.0, precision 0.0).
    """
    tp: Counter[str] = Counter()
    n_gold: Counter[str] = Counter()
    n_pred: Counter[str] = Counter()
    for g, p, _ in _intent_pairs(gold, pred):
        n_gold[g] += 1
        if p is not None:
            n_pred[p] += 1
        tp[g] += g == p
    labels = domain_order(set(n_gold) | set(n_pred), labelbook)
    return {
        lab: {"domain": labelbook.intent_domains.get(lab, ""), **prf(tp[lab], n_gold[lab], n_pred[lab])}
        for lab in labels
    }


def intent_confusion(gold: Sequence[dict], pred: Sequence[dict], labelbook: LabelBook) -> dict:
    """``{"labels", "domains", "matrix"}``: matrix[i][j] = turns of gold labels[i] predicted as labels[j].

    Only intents present in gold or predictions, grouped by domain; a turn without a predicted
    intent counts in a last column ``(none)`` (present only if it happens).
    """
    pairs = _intent_pairs(gold, pred)
    present = {g for g, _, _ in pairs} | {p for _, p, _ in pairs if p is not None}
    labels = domain_order(present, labelbook)
    columns = labels + ([NO_PREDICTION] if any(p is None for _, p, _ in pairs) else [])
    col = {lab: j for j, lab in enumerate(columns)}
    matrix = [[0] * len(columns) for _ in labels]
    row = {lab: i for i, lab in enumerate(labels)}
    for g, p, _ in pairs:
        matrix[row[g]][col[NO_PREDICTION if p is None else p]] += 1
    return {
        "labels": labels,
        "columns": columns,
        "domains": [labelbook.intent_domains.get(lab, "") for lab in labels],
        "matrix": matrix,
    }


def confidence_summary(gold: Sequence[dict], pred: Sequence[dict], bins: int = 10) -> dict:
    """Histogram counts of the predicted intent's confidence, split into correct and incorrect turns.

    ``edges`` has ``bins + 1`` values over [0, 1]; turns without a confidence are counted in
    ``no_confidence``. Means are None when a side is empty.
    """
    correct: list[float] = []
    wrong: list[float] = []
    missing = 0
    for g, p, conf in _intent_pairs(gold, pred):
        if conf is None:
            missing += 1
        else:
            (correct if g == p else wrong).append(float(conf))

    def hist(values: list[float]) -> list[int]:
        counts = [0] * bins
        for v in values:
            counts[min(max(int(v * bins), 0), bins - 1)] += 1
        return counts

    def mean(v):
        return sum(v) / len(v) if v else None

    return {
        "edges": [round(i / bins, 6) for i in range(bins + 1)],
        "correct": hist(correct),
        "incorrect": hist(wrong),
        "n_correct": len(correct),
        "n_incorrect": len(wrong),
        "no_confidence": missing,
        "mean_confidence_correct": mean(correct),
        "mean_confidence_incorrect": mean(wrong),
    }


def breakdown(
    gold: Sequence[dict], pred: Sequence[dict], labelbook: LabelBook, key: str, gates=None
) -> dict[str, dict]:
    """The headline metrics of ``evaluate_dialogues`` on the dialogues of each value of ``key``.

    ``key`` is a dialogue field (``lang``, ``branch``); dialogues without it are grouped under
    ``(none)``. With ``gates``, each group also gets ``gates_passed``: {metric: bool | None}
    (None when the metric has no support in that group). Groups are sorted by name.
    """
    by_id = {d["id"]: d for d in pred}
    groups: dict[str, list[dict]] = defaultdict(list)
    for d in gold:
        groups[str(d.get(key) or NO_BRANCH)].append(d)
    out = {}
    for value in sorted(groups):
        sub_gold = groups[value]
        m = evaluate_dialogues(sub_gold, [by_id[d["id"]] for d in sub_gold if d["id"] in by_id], labelbook)
        row = {k: m.get(k) for k in BREAKDOWN_METRICS}
        if gates:
            row["gates_passed"] = {k: None if m.get(k) is None else g.meets(m[k]) for k, g in as_gates(gates).items()}
        out[value] = row
    return out
