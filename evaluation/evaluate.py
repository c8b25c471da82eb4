"""`findial eval`: score an NLU bundle on any corpus file; JSON + Markdown reports; MLflow; registry tags."""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from findial import registry, tracking
from findial.data.corpus import fingerprint, load_corpus
from findial.data.labelbook import Glossary, LabelBook
from findial.data.pii import default_masker, redact_json

from .metrics import evaluate_dialogues
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


def gate_results(metrics: dict, gates: dict[str, float]) -> dict:
    out = {}
    for name, minimum in gates.items():
        value = metrics.get(name)
        out[name] = {"value": value, "minimum": minimum,
                     "passed": value is not None and value >= minimum}
    return out


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
            if gt.get("intent") == pt.get("intent") and gold_ents == pred_ents and \
                    gt.get("state", {}) == pt.get("state", {}):
                continue
            rows.append({"dialogue_id": g["id"], "lang": g["lang"], "text": masker.mask(gt["text"], gt.get("entities")),
                         "gold_intent": gt.get("intent"), "pred_intent": pt.get("intent"),
                         "confidence": pt.get("confidence"), "gold_entities": gold_ents, "pred_entities": pred_ents,
                         "gold_state": gt.get("state"), "pred_state": pt.get("state")})
            if len(rows) >= limit:
                return rows
    return rows


def evaluate(model_ref: str, data_file: str | Path, gates: dict[str, float], eval_set: str | None = None,
             report_dir: str | Path | None = None, device: str = "auto", experiment: str = "findial-eval") -> EvalResult:
    from findial.training.inference import NLUPipeline

    device = _device(device)
    with tempfile.TemporaryDirectory(prefix="findial-eval-") as tmp:
        bundle, registered = registry.resolve_model(model_ref, tmp)
        labelbook = LabelBook.load(bundle / "ontology.yaml")
        glossary = Glossary.load(bundle / "glossary.yaml")
        gold = load_corpus(data_file, labelbook, glossary)
        data_fp = fingerprint(gold, bundle / "ontology.yaml", bundle / "glossary.yaml")
        eval_set = eval_set or Path(data_file).stem
        nlu = NLUPipeline(bundle / "intent", bundle / "ner", device, labelbook, glossary)
        t0 = time.perf_counter()
        pred = nlu.predict_dialogues(gold)
        seconds = time.perf_counter() - t0
    metrics = evaluate_dialogues(gold, pred, labelbook)
    gate_table = gate_results(metrics, gates)
    report = {"model": model_ref, "registered": list(registered) if registered else None, "eval_set": eval_set,
              "data_file": str(data_file), "data_fingerprint": data_fp, "metrics": metrics, "gates": gate_table,
              "prediction_seconds": round(seconds, 2),
              "turns_per_second": round(metrics.get("n_user_turns", 0) / max(seconds, 1e-9), 1)}
    out = Path(report_dir or tempfile.mkdtemp(prefix="findial-report-"))
    report_json = tracking.atomic_write_text(out / "report.json", json.dumps(redact_json(report), indent=2,
                                                                             ensure_ascii=False))
    report_md = tracking.atomic_write_text(out / "report.md", render_markdown(report))
    errors = error_rows(gold, pred)
    errors_file = tracking.atomic_write_text(out / "errors.jsonl", "".join(
        json.dumps(redact_json(r), ensure_ascii=False) + "\n" for r in errors))
    tags = {"findial.eval_set": eval_set, "findial.data_fingerprint": data_fp, "findial.model": model_ref}
    if registered:
        tags.update({"findial.registered_model": registered[0], "findial.model_version": registered[1]})
    import mlflow

    with tracking.run(experiment, f"eval-{eval_set}", tags=tags) as active:
        tracking.log_metrics(metrics)
        tracking.log_metrics({f"gate.{k}.passed": float(v["passed"]) for k, v in gate_table.items()})
        for f in (report_json, report_md, errors_file):
            mlflow.log_artifact(str(f), "report")
        run_id = active.info.run_id
    if registered:
        registry.record_evaluation(registered[0], registered[1], eval_set, metrics, data_fp, run_id)
    return EvalResult(metrics, gate_table, report_json, report_md, run_id, data_fp, registered)


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
