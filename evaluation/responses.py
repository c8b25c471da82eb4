"""Score a response package on the agent turns of a corpus file; gated like the NLU models.

    evaluate_responses("runs/.../response/package", "data/corpus/test.jsonl", report_dir="out")

Each agent turn is generated from its preceding turns and the gold intent and state of the last user
turn (``intent_source="gold"``; the NLU predictions a server would feed can be scored by passing
``predictions``: dialogues predicted by ``NLUPipeline.predict_dialogues``). Metrics are those of
``findial.evaluation.generation_metrics``; the report (report.json, report.md, replies.jsonl, all
masked) is written to ``report_dir``; gates (the promotion policy's response gates, ``configs/policy.yaml``,
by default) are checked with ``findial.gates.check``, the check promotion applies to the ``eval.<eval_set>.<metric>`` tags.
``evaluate_response_model("models:/findial-response/3", ...)`` scores a registered version and records
its metrics on it (``registry.record_evaluation``), as ``findial eval`` does for an NLU bundle.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from findial import gates as gate_check, registry, tracking
from findial.data.corpus import fingerprint, load_corpus
from findial.data.kb import package as grounded_package
from findial.data.labelbook import Glossary, LabelBook
from findial.data.pii import default_masker, redact_json
from findial.policy import load as load_policy
from findial.training.generation.data import response_records
from findial.training.generation.responder import Responder, check_reply

from . import generation_metrics as gm


@dataclass
class ResponseEvalResult:
    metrics: dict
    gates: dict
    failures: list
    report_json: Path | None = None
    report_md: Path | None = None
    files: dict = field(default_factory=dict)
    run_id: str | None = None
    data_fingerprint: str | None = None


def score_replies(rows: list[dict], glossary: Glossary, rules) -> dict:
    """Metrics of generated replies. ``rows``: {"generated", "raw", "reference", "context", "state", "lang"}."""
    masker = default_masker()
    hyps, refs = [r["generated"] for r in rows], [r["reference"] for r in rows]
    n = len(rows)
    per_rule: dict[str, int] = {}
    violations = ref_violations = 0
    for r in rows:
        hits = {h.rule for h in rules.check(r["generated"])}
        violations += bool(hits)
        for h in hits:
            per_rule[h] = per_rule.get(h, 0) + 1
        ref_violations += bool(rules.check(r["reference"]))
    pii_generated = sum(not masker.is_clean(r["raw"]) for r in rows)
    pii_leaked = sum(not masker.is_clean(r["generated"]) for r in rows)
    metrics = {
        "replies": n,
        "bleu": gm.corpus_bleu(hyps, refs),
        "chrf": gm.corpus_chrf(hyps, refs),
        "rouge_l": gm.mean_rouge_l(hyps, refs),
        **gm.term_scores(rows, glossary),
        "pii_generated": pii_generated,
        "pii_leaked": pii_leaked,
        "pii_clean_rate": 1 - pii_leaked / n if n else 1.0,
        "compliance_violations": violations,
        "compliance_by_rule": per_rule,
        "compliance_clean_rate": 1 - violations / n if n else 1.0,
        "reference_compliance_violations": ref_violations,
        "empty_replies": sum(not h.strip() for h in hyps),
        "mean_reply_chars": sum(len(h) for h in hyps) / n if n else 0.0,
    }
    for lang in sorted({r["lang"] for r in rows}):
        sub = [r for r in rows if r["lang"] == lang]
        h, f = [r["generated"] for r in sub], [r["reference"] for r in sub]
        metrics[f"by_lang.{lang}"] = {
            "replies": len(sub),
            "bleu": gm.corpus_bleu(h, f),
            "chrf": gm.corpus_chrf(h, f),
            "rouge_l": gm.mean_rouge_l(h, f),
        }
    return metrics


def generate_replies(
    responder: Responder,
    dialogues: list[dict],
    context_turns: int,
    predictions: list[dict] | None = None,
    limit: int | None = None,
) -> list[dict]:
    records = response_records(dialogues, context_turns)
    if predictions is not None:  # the intent and state the NLU models predicted, in place of gold
        predicted = {(r["dialogue_id"], r["turn_index"]): r for r in response_records(predictions, context_turns)}
        records = [
            {
                **r,
                "intent": predicted[(r["dialogue_id"], r["turn_index"])]["intent"],
                "state": predicted[(r["dialogue_id"], r["turn_index"])]["state"],
            }
            for r in records
        ]
    rows = []
    for r in records[:limit]:
        raw, truncated = responder.generate(r["history"], r["intent"], r["state"], r["lang"])
        out = check_reply(raw, responder.rules, responder.masker)
        rows.append(
            {
                "dialogue_id": r["dialogue_id"],
                "turn_index": r["turn_index"],
                "lang": r["lang"],
                "context": [t["text"] for t in r["history"]],
                "intent": r["intent"],
                "state": r["state"],
                "reference": r["response"],
                "raw": raw,
                "generated": out["text"],
                "flags": out["flags"] + (["truncated"] if truncated else []),
            }
        )
    return rows


def evaluate_responses(
    package: str | Path,
    data_file: str | Path,
    gates: dict[str, float] | None = None,
    eval_set: str | None = None,
    report_dir: str | Path | None = None,
    device: str = "cpu",
    limit: int | None = None,
    predictions: list[dict] | None = None,
    log_mlflow: bool = False,
    responder: Responder | None = None,
    registered: tuple[str, str] | None = None,
    model_ref: str | None = None,
    **decoding,
) -> ResponseEvalResult:
    """Generate every agent turn of ``data_file``, score, write the report, check the gates.

    ``registered`` (name, version): the registered model ``package`` was downloaded from; the metrics
    are then recorded on that version (tags ``eval.<eval_set>.<metric>``, with ``log_mlflow``)."""
    started = time.perf_counter()
    responder = responder or Responder(package, device, **decoding)
    package = Path(package)
    glossary = Glossary.load(package / "glossary.yaml") if (package / "glossary.yaml").is_file() else Glossary.load()
    labelbook = LabelBook.load(package / "ontology.yaml") if (package / "ontology.yaml").is_file() else LabelBook.load()
    dialogues = load_corpus(data_file, labelbook, glossary)
    eval_set = eval_set or Path(data_file).stem
    policy, data_fp = load_policy(), fingerprint(dialogues)
    if registered:
        policy.check_recordable("response", eval_set, data_fp, data_file)
    rows = generate_replies(responder, dialogues, int(responder.meta.get("context_turns", 6)), predictions, limit)
    if not rows:
        raise ValueError(f"{data_file}: no agent turns to score")
    metrics = score_replies(rows, glossary, responder.rules)
    metrics["seconds_per_reply"] = (time.perf_counter() - started) / len(rows)
    gate_table = gate_check.check(policy.gates_for("response") if gates is None else gates, metrics)
    result = ResponseEvalResult(metrics, gate_table, gate_check.failures(gate_table), data_fingerprint=data_fp)
    report = {
        "package": model_ref or str(package),
        "registered": list(registered) if registered else None,
        "data_file": str(data_file),
        "eval_set": eval_set,
        "data_fingerprint": result.data_fingerprint,
        "backbone": responder.meta.get("backbone_name"),
        "decoding": responder.decoding,
        "metrics": metrics,
        "gates": result.gates,
        "failures": result.failures,
    }
    if report_dir is not None:
        result.files = _write_report(report, rows, Path(report_dir))
        result.report_json, result.report_md = result.files["report_json"], result.files["report_md"]
    if log_mlflow:
        record_response_eval(result, report, eval_set, registered)
    return result


def record_response_eval(
    result: ResponseEvalResult, report: dict, eval_set: str, registered: tuple[str, str] | None
) -> None:
    """Log the evaluation as a ``findial-response-eval`` MLflow run (metrics, masked report); with
    ``registered`` (name, version) record its metrics on that version too."""
    tags_run = {
        "findial.task": "response",
        "findial.eval_set": eval_set,
        "findial.data_fingerprint": report["data_fingerprint"],
        "findial.model": report["package"],
    }
    if registered:
        tags_run.update({"findial.registered_model": registered[0], "findial.model_version": registered[1]})
    with tracking.run("findial-response-eval", f"eval-response-{eval_set}", tags=tags_run) as active:
        tracking.log_metrics({k: v for k, v in result.metrics.items() if isinstance(v, (int, float))})
        tracking.log_json(redact_json(report), "report.json")
        result.run_id = active.info.run_id
    if registered:
        assert result.data_fingerprint is not None  # evaluate_response_model sets it
        registry.record_evaluation(
            registered[0], registered[1], eval_set, result.metrics, result.data_fingerprint, result.run_id
        )


def evaluate_response_model(
    model_ref: str,
    data_file: str | Path | None,
    gates: dict[str, float] | None = None,
    eval_set: str | None = None,
    report_dir: str | Path | None = None,
    device: str = "cpu",
    limit: int | None = None,
    index_dir: str | Path | None = None,
) -> ResponseEvalResult:
    """Score a response package directory or a registered version (models:/NAME/VERSION, models:/NAME@ALIAS,
    downloaded to a temporary folder); logged to MLflow, and recorded on the version when registered. A grounded
    package (``findial.data.kb.package``) is scored on the KB's labelled queries instead (``evaluation/grounded.py``;
    ``data_file`` is not read)."""
    with tempfile.TemporaryDirectory(prefix="findial-eval-") as tmp:
        package, registered = registry.resolve_model(model_ref, tmp, expect="response")
        if grounded_package.is_grounded(package):  # the KB responder: scored on the KB's labelled queries
            from .grounded import evaluate_grounded

            return evaluate_grounded(
                package,
                eval_set or "bundled-test",
                report_dir,
                gates=gates,
                index_dir=index_dir,
                registered=registered,
                model_ref=model_ref,
                log_mlflow=True,
            )
        if data_file is None:
            raise ValueError(f"{model_ref}: a generative response model is scored on a corpus file: give data_file")
        return evaluate_responses(
            package,
            data_file,
            gates,
            eval_set=eval_set,
            report_dir=report_dir,
            device=device,
            limit=limit,
            log_mlflow=True,
            registered=registered,
            model_ref=model_ref,
        )


def _write_report(report: dict, rows: list[dict], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    clean_rows = [{k: v for k, v in r.items() if k != "raw"} for r in rows]  # raw may hold unmasked PII
    files = {
        "report_json": tracking.atomic_write_text(
            out / "report.json", json.dumps(redact_json(report), indent=2, ensure_ascii=False, default=str)
        ),
        "replies": tracking.atomic_write_text(
            out / "replies.jsonl", "".join(json.dumps(redact_json(r), ensure_ascii=False) + "\n" for r in clean_rows)
        ),
        "report_md": tracking.atomic_write_text(out / "report.md", render_markdown(report, clean_rows)),
    }
    return files


def render_markdown(report: dict, rows: list[dict], samples: int = 10) -> str:
    m = report["metrics"]
    lines = [
        f"# Response generation: {report['eval_set']}",
        "",
        f"package `{report['package']}` (backbone {report['backbone']}), {m['replies']} agent turns of "
        f"`{report['data_file']}`, decoding {report['decoding']}",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for k in (
        "bleu",
        "chrf",
        "rouge_l",
        "term_recall",
        "term_grounding",
        "pii_generated",
        "pii_leaked",
        "pii_clean_rate",
        "compliance_violations",
        "compliance_clean_rate",
        "reference_compliance_violations",
        "empty_replies",
        "mean_reply_chars",
        "seconds_per_reply",
    ):
        v = m.get(k)
        lines.append(f"| {k} | {'-' if v is None else (f'{v:.4f}' if isinstance(v, float) else v)} |")
    if m.get("compliance_by_rule"):
        lines += ["", "Compliance hits by rule: " + ", ".join(f"{k} {v}" for k, v in m["compliance_by_rule"].items())]
    if m.get("ungrounded_terms"):
        lines += ["", "Ungrounded glossary terms: " + ", ".join(f"{k} {v}" for k, v in m["ungrounded_terms"].items())]
    lines += ["", "## Gates", "", "| metric | value | bound | |", "|---|---|---|---|"]
    for k, g in report["gates"].items():
        v = g["value"]
        lines.append(
            f"| {k} | {'-' if v is None else f'{v:.4f}'} | {g['bound']} | {'pass' if g['passed'] else 'FAIL'} |"
        )
    lines += ["", "## Sample replies", ""]
    for r in rows[:samples]:
        lines += [
            f"- `{r['dialogue_id']}#{r['turn_index']}` customer: {r['context'][-1] if r['context'] else ''}",
            f"  - reference: {r['reference']}",
            f"  - generated: {r['generated']}" + (f" (flags: {', '.join(r['flags'])})" if r["flags"] else ""),
        ]
    return redact_json("\n".join(lines) + "\n")


def eval_command(cfg, out_dir: Path) -> ResponseEvalResult:
    """``findial eval task=response model_ref=models:/findial-response/N`` (or ``package=DIR``, which wins),
    reported against the promotion policy's response gates."""
    device = cfg.get("device") or "cpu"
    try:
        result = evaluate_response_model(
            cfg.get("package") or cfg.model_ref,
            cfg.data_file,
            None,
            eval_set=cfg.eval_set,
            report_dir=cfg.report_dir or out_dir,
            device=device,
            limit=cfg.get("limit"),
            index_dir=Path(cfg.paths.home) / "kb-index" if cfg.get("paths") else None,  # shared with findial serve
        )
    except registry.WrongModelKind as exc:  # e.g. the default model_ref, the NLU champion
        raise SystemExit(
            f"findial eval task=response: {exc}; name a response model with "
            "model_ref=models:/findial-response/N or package=DIR"
        ) from None
    if result.report_md is not None:  # a report directory is always given here
        print(result.report_md.read_text(encoding="utf-8"))
    print(f"report: {result.report_json}")
    return result
