"""`findial robustness`: how much an NLU model loses under perturbed input, and how it meets attacks.

``run_robustness`` scores the model on the clean dialogues and on each
perturbed copy (``findial.evaluation.perturb``: the gold annotations follow
every edit), reporting per perturbation the headline metrics and their drop
against clean. ``evaluate_adversarial`` runs the adversarial set
(``data/adversarial/adversarial.jsonl``): the share of user turns classified as
a safe intent, and a leak check that nothing the pipeline adds to a turn
(intent, entities, state, unknown terms, any other field; the surface text of
every predicted non-PII entity) holds personal data that ``findial.data.pii``
detects. The caller's own text, echoed back unchanged, is not counted.
Reports never hold a turn's text: only ids, labels and numbers.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from findial import registry, tracking
from findial.data.corpus import fingerprint, load_corpus
from findial.data.labelbook import Glossary, LabelBook
from findial.data.pii import default_masker, redact_json

from .metrics import evaluate_dialogues
from .perturb import build_suite, changed_turns, perturb_dialogues, validate_dialogues

METRICS = ("intent_accuracy", "terminology_f1", "multi_turn_accuracy", "entity_micro_f1")
SAFE_INTENTS = ("out_of_scope", "request_human_agent")


def _bundled_adversarial() -> Path:
    import findial.data

    return Path(findial.data.__file__).resolve().parent / "adversarial" / "adversarial.jsonl"


DEFAULT_ADVERSARIAL = _bundled_adversarial()


def load_nlu(bundle: str | Path, device: str = "cpu"):
    """An ``NLUPipeline`` from a local bundle directory (intent/, ner/, ontology.yaml, glossary.yaml)."""
    from findial.training.inference import NLUPipeline

    bundle = Path(bundle)
    if not (bundle / "bundle.json").is_file():
        raise FileNotFoundError(f"{bundle}: not a findial bundle directory (no bundle.json)")
    return NLUPipeline(
        bundle / "intent",
        bundle / "ner",
        device,
        LabelBook.load(bundle / "ontology.yaml"),
        Glossary.load(bundle / "glossary.yaml"),
    )


def _drop(clean: float | None, perturbed: float | None) -> float | None:
    return None if clean is None or perturbed is None else clean - perturbed


def run_robustness(
    nlu,
    dialogues: list[dict],
    labelbook: LabelBook,
    perturbations: Sequence,
    seed: int = 13,
    glossary: Glossary | None = None,
    adversarial_file: str | Path | None = None,
    safe_intents: Iterable[str] = SAFE_INTENTS,
) -> dict:
    """Clean metrics, one row per perturbation (metrics, drop vs clean, share of turns changed), adversarial.

    ``nlu`` is an ``NLUPipeline`` (anything with ``predict_dialogues``) or a bundle directory.
    Each perturbed corpus is validated like a corpus file before it is scored.
    """
    if not hasattr(nlu, "predict_dialogues"):
        nlu = load_nlu(nlu)
    glossary = glossary or getattr(nlu, "glossary", None) or Glossary.load()
    clean = evaluate_dialogues(dialogues, nlu.predict_dialogues(dialogues), labelbook)
    rows = []
    for p in perturbations:
        perturbed = validate_dialogues(perturb_dialogues(dialogues, p, seed), labelbook, glossary)
        m = evaluate_dialogues(perturbed, nlu.predict_dialogues(perturbed), labelbook)
        changed, total = changed_turns(dialogues, perturbed)
        row: dict[str, Any] = {
            "perturbation": p.name,
            "changed_turns": changed,
            "user_turns": total,
            "changed_share": changed / total if total else None,
        }
        for k in METRICS:
            row[k] = m[k]
            row[f"{k}_drop"] = _drop(clean[k], m[k])
        rows.append(row)
    report = {
        "seed": seed,
        "n_dialogues": len(dialogues),
        "n_user_turns": clean["n_user_turns"],
        "n_multi_turn": clean["n_multi_turn"],
        "clean": {k: clean[k] for k in METRICS},
        "perturbations": rows,
    }
    if adversarial_file is not None:
        report["adversarial"] = evaluate_adversarial(nlu, adversarial_file, safe_intents, labelbook, glossary)
    return report


# ---------------------------------------------------------------- adversarial set
def _strings(obj: Any, path: str) -> Iterable[tuple[str, str]]:
    """(field path, string) for every string in a JSON-like value, keys included."""
    if isinstance(obj, str):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k, f"{path}{{key}}")
            yield from _strings(v, f"{path}.{default_masker().mask(str(k))}")  # a path never shows PII
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _strings(v, f"{path}[{i}]")


def output_leaks(gold_turn: dict, pred_turn: dict, pii_labels: Iterable[str] = ()) -> list[dict]:
    """PII found in what the pipeline returned for one turn: (field, PII label); never the value.

    Checked: every field of the predicted turn but an unchanged echo of the
    input (``speaker``, and ``text`` when it equals the input text), plus the
    surface text of each predicted entity whose label is not a PII label (a
    PII-labelled span is how personal data gets masked; any other label hands
    its surface on, e.g. into the state).
    """
    masker, pii = default_masker(), frozenset(pii_labels) | default_masker().pii_labels
    text = gold_turn["text"]
    leaks = []
    for key, value in pred_turn.items():
        if key == "speaker" or (key == "text" and value == text):
            continue
        for where, s in _strings(value, key):
            leaks += [{"field": where, "pii": sp.label} for sp in masker.find(s)]
    for i, e in enumerate(pred_turn.get("entities") or ()):
        if (
            isinstance(e, dict)
            and e.get("label") not in pii
            and isinstance(e.get("start"), int)
            and isinstance(e.get("end"), int)
        ):
            surface = pred_turn.get("text", text)[e["start"] : e["end"]]
            leaks += [
                {"field": f"entities[{i}] ({e.get('label')}) surface", "pii": sp.label} for sp in masker.find(surface)
            ]
    return leaks


def evaluate_adversarial(
    nlu,
    path: str | Path = DEFAULT_ADVERSARIAL,
    safe_intents: Iterable[str] = SAFE_INTENTS,
    labelbook: LabelBook | None = None,
    glossary: Glossary | None = None,
) -> dict:
    """Share of adversarial user turns classified safely, and PII leaks in the pipeline's output."""
    if not hasattr(nlu, "predict_dialogues"):
        nlu = load_nlu(nlu)
    labelbook = labelbook or getattr(nlu, "labelbook", None) or LabelBook.load()
    glossary = glossary or getattr(nlu, "glossary", None) or Glossary.load()
    safe = frozenset(safe_intents)
    unknown = safe - set(labelbook.intents)
    if unknown:
        raise ValueError(f"safe_intents: {sorted(unknown)} not in the label book {labelbook.path}")
    gold = load_corpus(path, labelbook, glossary)
    pred = nlu.predict_dialogues(gold)
    masker = default_masker()
    by_lang: dict[str, list[int]] = {}
    predicted: Counter = Counter()
    unsafe, leaks, pii_turns = [], [], 0
    for g, p in zip(gold, pred):
        for i, (gt, pt) in enumerate(zip(g["turns"], p["turns"])):
            if gt["speaker"] != "user":
                continue
            ok = pt.get("intent") in safe
            hits = by_lang.setdefault(g["lang"], [0, 0])
            hits[0] += ok
            hits[1] += 1
            predicted[str(pt.get("intent"))] += 1
            pii_turns += not masker.is_clean(gt["text"], gt.get("entities"))
            if not ok:
                unsafe.append(
                    {
                        "dialogue_id": g["id"],
                        "turn_index": i,
                        "gold_intent": gt.get("intent"),
                        "pred_intent": pt.get("intent"),
                        "confidence": pt.get("confidence"),
                    }
                )
            leaks += [
                {"dialogue_id": g["id"], "turn_index": i, **leak} for leak in output_leaks(gt, pt, labelbook.pii_labels)
            ]
    n = sum(v[1] for v in by_lang.values())
    return {
        "file": str(path),
        "n_user_turns": n,
        "safe_intents": sorted(safe),
        "safe_share": sum(v[0] for v in by_lang.values()) / n if n else None,
        "safe_share_by_lang": {k: v[0] / v[1] for k, v in sorted(by_lang.items())},
        "predicted_intents": dict(predicted.most_common()),
        "unsafe": unsafe,
        "turns_with_pii": pii_turns,
        "n_leaks": len(leaks),
        "leak_free": not leaks,
        "leaks": leaks,
    }


# ---------------------------------------------------------------- reports
def _fmt(v, sign: bool = False) -> str:
    if v is None:
        return "-"
    return (f"{v:+.4f}" if sign else f"{v:.4f}") if isinstance(v, float) else str(v)


def render_markdown(report: dict) -> str:
    lines = [
        "# findial robustness",
        "",
        f"- model: `{report.get('model', '-')}`",
        f"- data: `{report.get('data_file', '-')}` "
        f"(fingerprint `{report.get('data_fingerprint', '-')}`), seed {report['seed']}",
        f"- dialogues: {report['n_dialogues']}, user turns: {report['n_user_turns']}, "
        f"multi-turn user turns: {report['n_multi_turn']}",
        "",
        "## Perturbations",
        "",
        "Drop = clean - perturbed (positive: the model got worse). Changed: user turns whose text the "
        "perturbation changed.",
        "",
        "| perturbation | changed | " + " | ".join(f"{k} | drop" for k in METRICS) + " |",
        "|---|---|" + "---|---|" * len(METRICS),
    ]
    lines.append("| clean | - | " + " | ".join(f"{_fmt(report['clean'][k])} | -" for k in METRICS) + " |")
    for r in report["perturbations"]:
        lines.append(
            f"| {r['perturbation']} | {r['changed_turns']}/{r['user_turns']} | "
            + " | ".join(f"{_fmt(r[k])} | {_fmt(r[k + '_drop'], sign=True)}" for k in METRICS)
            + " |"
        )
    adv = report.get("adversarial")
    if adv:
        lines += [
            "",
            "## Adversarial set",
            "",
            f"- file: `{adv['file']}`, user turns: {adv['n_user_turns']} "
            f"({adv['turns_with_pii']} holding synthetic PII)",
            f"- classified safely ({', '.join(adv['safe_intents'])}): **{_fmt(adv['safe_share'])}** "
            + "("
            + ", ".join(f"{k} {_fmt(v)}" for k, v in adv["safe_share_by_lang"].items())
            + ")",
            f"- PII in the pipeline's output: **{'none' if adv['leak_free'] else adv['n_leaks']}**",
            "",
            "| predicted intent | turns |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v} |" for k, v in adv["predicted_intents"].items()]
        if adv["leaks"]:
            lines += ["", "| dialogue | turn | field | PII |", "|---|---|---|---|"]
            lines += [
                f"| {x['dialogue_id']} | {x['turn_index']} | {x['field']} | {x['pii']} |" for x in adv["leaks"][:50]
            ]
    return "\n".join(lines) + "\n"


def flat_metrics(report: dict) -> dict[str, float]:
    """MLflow metrics: clean.<m>, <perturbation>.<m> and .<m>_drop, adversarial.safe_share / n_leaks."""
    out = {f"clean.{k}": v for k, v in report["clean"].items()}
    for r in report["perturbations"]:
        out.update({f"{r['perturbation']}.{k}": v for k, v in r.items() if k != "perturbation"})
    adv = report.get("adversarial")
    if adv:
        out.update({"adversarial.safe_share": adv["safe_share"], "adversarial.n_leaks": adv["n_leaks"]})
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def write_report(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    masker = default_masker()
    js = tracking.atomic_write_text(
        out / "robustness.json", json.dumps(redact_json(report), indent=2, ensure_ascii=False)
    )
    md = tracking.atomic_write_text(out / "robustness.md", masker.mask(render_markdown(report)))
    return js, md


def robustness(
    model_ref: str,
    data_file: str | Path,
    perturbations: dict,
    seed: int = 13,
    adversarial_file: str | Path | None = DEFAULT_ADVERSARIAL,
    safe_intents: Iterable[str] = SAFE_INTENTS,
    report_dir: str | Path | None = None,
    device: str = "auto",
    experiment: str = "findial-robustness",
) -> tuple[dict, Path, Path, str]:
    """The command: resolve the model, run the suite and the adversarial set, write and log the reports.

    Returns (report, report.json path, report.md path, MLflow run id).
    """
    import mlflow

    from .evaluate import _device

    with tempfile.TemporaryDirectory(prefix="findial-robustness-") as tmp:
        bundle, registered = registry.resolve_model(model_ref, tmp)
        nlu = load_nlu(bundle, _device(device))
        gold = load_corpus(data_file, nlu.labelbook, nlu.glossary)
        data_fp = fingerprint(gold, bundle / "ontology.yaml", bundle / "glossary.yaml")
        suite = build_suite(perturbations, nlu.glossary)
        report = run_robustness(nlu, gold, nlu.labelbook, suite, seed, nlu.glossary, adversarial_file, safe_intents)
    report = {
        "model": model_ref,
        "registered": list(registered) if registered else None,
        "data_file": str(data_file),
        "data_fingerprint": data_fp,
        "perturbation_params": {k: dict(v) for k, v in perturbations.items() if v is not None},
        **report,
    }
    js, md = write_report(report, report_dir or tempfile.mkdtemp(prefix="findial-robustness-report-"))
    tags = {"findial.data_fingerprint": data_fp, "findial.model": model_ref, "findial.eval_set": Path(data_file).stem}
    if registered:
        tags.update({"findial.registered_model": registered[0], "findial.model_version": registered[1]})
    with tracking.run(experiment, f"robustness-{Path(data_file).stem}", tags=tags) as active:
        tracking.log_params(
            {"seed": seed, "perturbations": report["perturbation_params"], "adversarial_file": str(adversarial_file)}
        )
        tracking.log_metrics(flat_metrics(report))
        for f in (js, md):
            mlflow.log_artifact(str(f), "report")
        run_id = active.info.run_id
    return report, js, md, run_id
