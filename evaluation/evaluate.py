"""`findial eval`: score an NLU bundle on any corpus file; JSON, Markdown and HTML reports, plots; MLflow; registry tags."""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from findial import gates as gate_check, registry, tracking
from findial.policy import Policy, load as load_policy
from findial.data.corpus import fingerprint, load_corpus
from findial.data.labelbook import Glossary, LabelBook
from findial.data.pii import default_masker, redact_json

from . import plots, tables
from .html_report import render_html
from .metrics import evaluate_dialogues
from .multi_turn import multi_turn_breakdown
from .report import render_markdown


@dataclass
class EvalResult:
    metrics: dict
    gates: dict
    report_json: Path
    report_md: Path
    run_id: str
    data_fingerprint: str
    model: tuple[str, str] | None
    report_html: Path | None = None
    files: dict = field(default_factory=dict)  # name -> path of every file written (reports, plots)


def error_rows(gold: list[dict], pred: list[dict], limit: int = 2000) -> list[dict]:
    """User turns whose intent, entities or state are wrong: text (masked), gold, predicted, confidence."""
    masker = default_masker()
    rows = []
    for g, p in zip(gold, pred):
        for gt, pt in zip(g["turns"], p["turns"]):
            if gt["speaker"] != "user":
                continue
            gold_ents = sorted((e["start"], e["end"], e["label"], e.get("term_id")) for e in gt.get("entities", []))
            pred_ents = sorted((e["start"], e["end"], e["label"], e.get("term_id")) for e in pt.get("entities", []))
            if (
                gt.get("intent") == pt.get("intent")
                and gold_ents == pred_ents
                and gt.get("state", {}) == pt.get("state", {})
            ):
                continue
            rows.append(
                {
                    "dialogue_id": g["id"],
                    "lang": g["lang"],
                    "text": masker.mask(gt["text"], gt.get("entities")),
                    "gold_intent": gt.get("intent"),
                    "pred_intent": pt.get("intent"),
                    "confidence": pt.get("confidence"),
                    "gold_entities": gold_ents,
                    "pred_entities": pred_ents,
                    "gold_state": gt.get("state"),
                    "pred_state": pt.get("state"),
                }
            )
            if len(rows) >= limit:
                return rows
    return rows


@dataclass
class Predictions:
    """A model's predictions on a corpus file, with what a report needs to say where they came from."""

    model_ref: str
    registered: tuple[str, str] | None
    labelbook: LabelBook
    gold: list[dict]
    pred: list[dict]
    data_file: str
    data_fingerprint: str
    eval_set: str
    seconds: float


def predict(model_ref: str, data_file: str | Path, eval_set: str | None = None, device: str = "auto") -> Predictions:
    """Resolve the bundle (downloaded to a temporary folder), load the corpus with its label book, predict."""
    from findial.training.inference import NLUPipeline

    device = _device(device)
    with tempfile.TemporaryDirectory(prefix="findial-eval-") as tmp:
        bundle, registered = registry.resolve_model(model_ref, tmp)
        labelbook = LabelBook.load(bundle / "ontology.yaml")
        glossary = Glossary.load(bundle / "glossary.yaml")
        gold = load_corpus(data_file, labelbook, glossary)
        data_fp = fingerprint(gold, bundle / "ontology.yaml", bundle / "glossary.yaml")
        nlu = NLUPipeline(bundle / "intent", bundle / "ner", device, labelbook, glossary)
        t0 = time.perf_counter()
        pred = nlu.predict_dialogues(gold)
        seconds = time.perf_counter() - t0
    return Predictions(
        model_ref, registered, labelbook, gold, pred, str(data_file), data_fp, eval_set or Path(data_file).stem, seconds
    )


def build_report(p: Predictions, gates: dict[str, float]) -> dict:
    """Metrics, gates, per-intent table, confusion counts, confidence histograms, per-language/branch breakdowns."""
    metrics = evaluate_dialogues(p.gold, p.pred, p.labelbook)
    breakdowns = {"lang": tables.breakdown(p.gold, p.pred, p.labelbook, "lang", gates)}
    if any(d.get("branch") for d in p.gold):
        breakdowns["branch"] = tables.breakdown(p.gold, p.pred, p.labelbook, "branch", gates)
    return {
        "model": p.model_ref,
        "registered": list(p.registered) if p.registered else None,
        "eval_set": p.eval_set,
        "data_file": p.data_file,
        "data_fingerprint": p.data_fingerprint,
        "metrics": metrics,
        "gates": gate_check.check(gates, metrics),
        "prediction_seconds": round(p.seconds, 2),
        "turns_per_second": round(metrics.get("n_user_turns", 0) / max(p.seconds, 1e-9), 1),
        "intents": tables.intent_table(p.gold, p.pred, p.labelbook),
        "confidence": tables.confidence_summary(p.gold, p.pred),
        "confusion": tables.intent_confusion(p.gold, p.pred, p.labelbook),
        "breakdowns": breakdowns,
        "multi_turn": multi_turn_breakdown(p.gold, p.pred, list(p.labelbook.state_slots)),
    }


def write_report(report: dict, p: Predictions, out: str | Path, html_errors: int = 50) -> dict[str, Path]:
    """report.json, report.md, errors.jsonl, the PNG plots and report.html under ``out``; returns name -> path.

    Adds ``plots`` (plot -> file name) and ``n_errors`` to ``report``.
    """
    out = Path(out)
    errors = error_rows(p.gold, p.pred)
    pngs = {
        "intent_confusion": plots.confusion_png(report["confusion"], out / "intent_confusion.png"),
        "confidence_histogram": plots.confidence_png(report["confidence"], out / "confidence_histogram.png"),
    }
    report["plots"] = {name: path.name for name, path in pngs.items()}
    report["n_errors"] = len(errors)
    files = {
        "report_json": tracking.atomic_write_text(
            out / "report.json", json.dumps(redact_json(report), indent=2, ensure_ascii=False)
        ),
        "report_md": tracking.atomic_write_text(out / "report.md", render_markdown(report)),
        "errors": tracking.atomic_write_text(
            out / "errors.jsonl", "".join(json.dumps(redact_json(r), ensure_ascii=False) + "\n" for r in errors)
        ),
        "report_html": tracking.atomic_write_text(
            out / "report.html",
            render_html(
                report,
                {
                    "Intent confusion matrix": pngs["intent_confusion"],
                    "Intent confidence (correct vs incorrect)": pngs["confidence_histogram"],
                },
                errors,
                html_errors,
            ),
        ),
    }
    return {**files, **pngs}


def breakdown_metrics(report: dict) -> dict[str, float]:
    """The breakdowns as flat MLflow metric names: by_lang.zh.intent_accuracy, ..."""
    flat = tracking.flatten(
        {
            f"by_{key}": {
                re.sub(r"[^\w.\- /]", "_", g): {k: v for k, v in row.items() if k != "gates_passed"}
                for g, row in groups.items()
            }
            for key, groups in report.get("breakdowns", {}).items()
        }
    )
    return {k: v for k, v in flat.items() if v is not None}


def evaluate(
    model_ref: str,
    data_file: str | Path,
    gates=None,
    eval_set: str | None = None,
    report_dir: str | Path | None = None,
    device: str = "auto",
    experiment: str = "findial-eval",
    policy: Policy | None = None,
) -> EvalResult:
    """Score ``model_ref`` on ``data_file``; ``gates`` (metric -> minimum or ``Gate``; default: the policy's NLU
    gates) are reported. A registered version's metrics are recorded on it, unless ``eval_set`` is a policy set
    and the data is not the file it binds: then ``policy.EvalSetMismatch``, before anything is written."""
    policy = policy or load_policy()
    gates = policy.gates_for("nlu") if gates is None else gates
    p = predict(model_ref, data_file, eval_set, device)
    if p.registered:
        policy.check_recordable("nlu", p.eval_set, p.data_fingerprint, data_file)
    report = build_report(p, gates)
    metrics, gate_table, registered, data_fp = report["metrics"], report["gates"], p.registered, p.data_fingerprint
    files = write_report(report, p, report_dir or tempfile.mkdtemp(prefix="findial-report-"))
    tags = {"findial.eval_set": p.eval_set, "findial.data_fingerprint": data_fp, "findial.model": model_ref}
    if registered:
        tags.update({"findial.registered_model": registered[0], "findial.model_version": registered[1]})
    import mlflow

    with tracking.run(experiment, f"eval-{p.eval_set}", tags=tags) as active:
        tracking.log_metrics(metrics)
        tracking.log_metrics(breakdown_metrics(report))
        tracking.log_metrics({f"gate.{k}.passed": float(v["passed"]) for k, v in gate_table.items()})
        for f in files.values():
            mlflow.log_artifact(str(f), "report")
        run_id = active.info.run_id
    if registered:
        registry.record_evaluation(registered[0], registered[1], p.eval_set, metrics, data_fp, run_id)
    return EvalResult(
        metrics,
        gate_table,
        files["report_json"],
        files["report_md"],
        run_id,
        data_fp,
        registered,
        files["report_html"],
        files,
    )


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
