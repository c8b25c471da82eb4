"""The `findial` command.

Hydra subcommands take ``key=value`` overrides (and ``-m`` for multirun):

    findial run                      the main job: train intent + NER, register, evaluate, try to promote
    findial train task=ner model=minilm trainer.max_epochs=5
    findial train task=response model=smollm2   response generation; registers the package as findial-response vN
    findial eval model_ref=models:/findial-nlu/3 data_file=my.jsonl
    findial eval task=response model_ref=models:/findial-response/1 eval_set=bundled-test   (grounded: KB queries)
    findial promote version=3 eval_set=bundled-test
    findial promote model_name=findial-response version=1 eval_set=bundled-test   (response gates)
    findial compare a=models:/findial-nlu/4 b=models:/findial-nlu@champion data_file=my.jsonl
    findial serve [backend=ray replicas=2] the API over models:/findial-nlu@champion (+ findial-response@champion)
    findial robustness model_ref=models:/findial-nlu/3 data_file=my.jsonl
    findial sweep task=intent model=tiny sweep.num_samples=4   Ray Tune + ASHA; trials are MLflow child runs

Plain subcommands:

    findial data validate FILE...    check corpus files (errors name file, line and field)
    findial data generate --out DIR  regenerate the bundled corpus (seeded)
    findial data natural check PATH  check hand-written dialogues in the authoring format (data/natural)
    findial data natural build       build the natural corpus's splits from its sources
    findial fed simulate [overrides] federated training across branches: findial fed simulate rounds=2
    findial audit verify [--log F]   check the promotion audit log's hash chain (and the registry's heads)
    findial release start version=3 eval_set=bundled-test share=0.1   gray release (status, promote, rollback, shadow)
    findial kb index [--kb FILE] [--out DIR]          (re)build the knowledge-base index (only changed articles)
    findial kb search "QUERY" [--lang zh|en] [-k 5]   the best-matching articles
    findial kb eval [--split validation|test]         recall@1, recall@5 and MRR per language, as JSON
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from findial.runtime import data_path, setup

if TYPE_CHECKING:
    from findial.training.train import TrainResult

log = logging.getLogger("findial")


def _home() -> Path:
    """Where findial writes (``$FINDIAL_HOME``, default ./findial-runs), for the plain (non-Hydra) subcommands."""
    return Path(os.environ.get("FINDIAL_HOME", "findial-runs"))


def _out_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _configure_tracking(cfg: DictConfig) -> None:
    from findial import tracking

    tracking.configure(cfg.logger.tracking_uri, cfg.logger.artifact_root)


def cmd_train(cfg: DictConfig) -> None:
    from findial.training.train import train_task

    train: Callable[[DictConfig, DictConfig, Path], TrainResult] = train_task
    if cfg.task.name == "response":  # response generation: a causal LM (model=smollm2|gemma3|local_lm|tiny_lm)
        from findial.training.generation.train import train_response

        train = train_response
    _configure_tracking(cfg)
    result = train(cfg, cfg.task, _out_dir())
    print(f"trained {result.task}: package {result.package_dir} (MLflow run {result.run_id})")
    name = cfg.registry.response_model_name
    if cfg.task.name == "response" and result.run_id and name:  # rank 0 only (run_id "" on the others)
        from findial import registry

        tags = {
            "findial.task": "response",
            "findial.data_fingerprint": result.data_fingerprint,
            "findial.backbone": cfg.model.name,
            "findial.train_run_id": result.run_id,
        }
        version = registry.register(result.package_dir, name, tags)
        print(f"registered {name} v{version}")


def _member_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """Per ensemble member (``members``: intent or NER models), the run's config with ``model`` replaced by
    the member's, its backbone resolved up front so a missing package fails before any training."""
    from omegaconf import open_dict

    from findial.training.package import resolve_backbone
    from findial.typed_config import resolved

    out = {}
    for name, spec in (cfg.get("members") or {}).items():
        if spec.task.name not in ("intent", "ner"):
            raise ValueError(
                f"members.{name}.task: an ensemble member is an intent or NER model, not {spec.task.name!r}"
            )
        mcfg = cfg.copy()
        with open_dict(mcfg):
            mcfg.model = spec.model
        resolve_backbone(resolved(mcfg.model.backbone))
        if spec.model.get("licence"):
            print(
                f"ensemble member {name}: {spec.model.name} weights under the {spec.model.licence} "
                f"(members=none trains without members)",
                file=sys.stderr,
            )
        out[name] = mcfg
    return out


def cmd_run(cfg: DictConfig) -> None:
    from findial import registry
    from findial.evaluation.evaluate import evaluate
    from findial.training.train import train_task

    from findial.training.tasks import task_settings

    _refuse_policy_overrides(cfg, "run")
    members = _member_configs(cfg)
    for where, task in [
        ("tasks.intent", cfg.tasks.intent),
        ("tasks.ner", cfg.tasks.ner),
        *((f"members.{n}.task", m.members[n].task) for n, m in members.items()),
    ]:
        task_settings(task, where)  # every task setting checked before the first model trains
    _configure_tracking(cfg)
    out = _out_dir()
    results = {name: train_task(cfg, cfg.tasks[name], out) for name in ("intent", "ner")}
    member_results = {
        name: train_task(mcfg, mcfg.members[name].task, out / f"member-{name}") for name, mcfg in members.items()
    }
    if not results["intent"].run_id:  # a non-zero rank of a multi-device launch: rank 0 registers and evaluates
        return
    info: dict[str, Any] = {name: {"train_run_id": r.run_id, "metrics": r.metrics} for name, r in results.items()}
    info["members"] = {
        name: {"backbone": members[name].model.name, "train_run_id": r.run_id, "metrics": r.metrics}
        for name, r in member_results.items()
    }
    info["data_fingerprint"] = results["intent"].data_fingerprint
    info["backbone"] = cfg.model.name
    bundle = registry.make_bundle(
        results["intent"].package_dir,
        results["ner"].package_dir,
        out / "bundle",
        info,
        members={name: r.package_dir for name, r in member_results.items()},
    )
    name = cfg.registry.model_name
    tags = {
        "findial.data_fingerprint": info["data_fingerprint"],
        "findial.backbone": cfg.model.name,
        "findial.intent_run_id": results["intent"].run_id,
        "findial.ner_run_id": results["ner"].run_id,
    }
    version = registry.register(bundle, name, tags, info)
    print(f"registered {name} v{version}")
    ev = evaluate(f"models:/{name}/{version}", cfg.data.test_file, eval_set=cfg.eval_set, report_dir=out / "report")
    print(Path(ev.report_md).read_text(encoding="utf-8"))
    for eval_set, data_file in (cfg.data.get("eval_sets") or {}).items():  # recorded beside the gated set
        extra = evaluate(
            f"models:/{name}/{version}", data_file, eval_set=eval_set, report_dir=out / f"report-{eval_set}"
        )
        print(
            f"{eval_set}: "
            + ", ".join(f"{k} {extra.metrics[k]:.4f}" for k in extra.gates if extra.metrics.get(k) is not None)
            + f" ({extra.report_json.parent})"
        )
    decision = registry.promote(
        name, version, cfg.registry.alias, cfg.eval_set, audit_log=Path(cfg.paths.home) / "audit" / "promotions.jsonl"
    )
    print(decision.summary())
    print(f"reports: {ev.report_json.parent}\nMLflow: {cfg.logger.tracking_uri}")
    if cfg.registry.get("response_model_name"):
        _grounded_responder(cfg, out)


def _grounded_responder(cfg: DictConfig, out: Path) -> None:
    """Register the grounded KB responder (its settings: findial.data.kb.package), score it on the KB's test
    queries (eval set bundled-test of the response kind) and promote it through the response gates."""
    from findial import registry
    from findial.data.kb import package as grounded_package
    from findial.data.kb.encoder import model_id
    from findial.evaluation.responses import evaluate_response_model
    from findial.training.backbones import e5_small

    name = cfg.registry.response_model_name
    package = grounded_package.save(out / "response", grounded_package.GroundedSettings(encoder=model_id(e5_small())))
    version = registry.register(package, name, {"findial.task": "response", "findial.responder": "grounded"})
    print(f"registered {name} v{version} (grounded KB responder)")
    ev = evaluate_response_model(
        f"models:/{name}/{version}",
        None,
        eval_set="bundled-test",
        report_dir=out / "report-response",
        index_dir=Path(cfg.paths.home) / "kb-index",  # the index findial serve reuses
    )
    assert ev.report_md is not None  # a report directory is given
    print(ev.report_md.read_text(encoding="utf-8"))
    decision = registry.promote(
        name, version, cfg.registry.alias, "bundled-test", audit_log=Path(cfg.paths.home) / "audit" / "promotions.jsonl"
    )
    print(decision.summary())


def cmd_eval(cfg: DictConfig) -> None:
    from findial.evaluation.evaluate import evaluate
    from findial.policy import EvalSetMismatch

    _configure_tracking(cfg)
    if cfg.get("task") and cfg.task.name == "response":  # findial eval task=response model_ref=...|package=DIR
        from findial.evaluation.responses import eval_command

        eval_command(cfg, _out_dir())
        return
    try:
        ev = evaluate(
            cfg.model_ref,
            cfg.data_file,
            eval_set=cfg.eval_set,
            report_dir=cfg.report_dir or _out_dir(),
            device=cfg.device,
        )
    except EvalSetMismatch as exc:
        raise SystemExit(f"findial eval: {exc}") from None
    print(Path(ev.report_md).read_text(encoding="utf-8"))
    print(f"report: {ev.report_json}")


def _refuse_policy_overrides(cfg: DictConfig, command: str) -> None:
    from findial.policy import POLICY_FILE, promoter

    given = [k for k in ("gates", "user", "policy") if k in cfg]
    if given:
        raise SystemExit(
            f"findial {command}: {', '.join(given)} cannot be given: the gates and evaluation sets come "
            f"from the promotion policy {POLICY_FILE} (changed by review, not by argument) and the "
            f"promoter is the environment's user ({promoter()})"
        )


def cmd_promote(cfg: DictConfig) -> None:
    from findial import registry

    _refuse_policy_overrides(cfg, "promote")
    _configure_tracking(cfg)
    try:
        decision = registry.promote(cfg.model_name, str(cfg.version), cfg.alias, cfg.eval_set, audit_log=cfg.audit_log)
    except registry.PromotionError as exc:
        print(f"findial promote: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(decision.summary())
    if not decision.promoted:
        print("refused:\n  " + "\n  ".join(decision.failures), file=sys.stderr)
        raise SystemExit(1)


def cmd_robustness(cfg: DictConfig) -> None:
    from findial.evaluation.robustness import robustness
    from findial.typed_config import resolved

    _configure_tracking(cfg)
    _, _, md, run_id = robustness(
        cfg.model_ref,
        cfg.data_file,
        resolved(cfg.perturbations),
        cfg.seed,
        cfg.adversarial_file,
        list(cfg.safe_intents),
        cfg.report_dir or _out_dir(),
        cfg.device,
        cfg.experiment,
    )
    print(Path(md).read_text(encoding="utf-8"))
    print(f"report: {md.parent} (MLflow run {run_id})")


def cmd_serve(cfg: DictConfig) -> None:
    from findial.serving.server import serve_from_config
    from findial.typed_config import resolved

    serve_from_config(resolved(cfg))


def cmd_compare(cfg: DictConfig) -> None:
    from findial.evaluation.compare import compare, newest_version, render_table
    from findial.policy import load as load_policy

    _configure_tracking(cfg)
    a = cfg.a or f"models:/{cfg.model_name}/{newest_version(cfg.model_name)}"
    result = compare(
        a,
        cfg.b,
        cfg.data_file,
        load_policy().gates_for("nlu"),
        eval_set=cfg.eval_set,
        out_dir=cfg.report_dir or _out_dir(),
        device=cfg.device,
        html_errors=cfg.html_errors,
    )
    print(render_table(result.comparison))
    print(f"comparison: {result.files['compare_html']} (MLflow run {result.run_id})")


def cmd_sweep(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from findial.training.sweep import run_sweep

    _configure_tracking(cfg)
    res = run_sweep(cfg, _out_dir(), overrides=list(HydraConfig.get().overrides.task))
    cmds = res.commands()
    print(
        f"sweep {cfg.sweep.name}: {len(res.trials)} trials (MLflow parent run {res.parent_run_id})\n"
        f"best {res.best_metrics} with {res.best_params} (MLflow run {res.best_run_id})\n"
        f"best config: {res.experiment_file}\nretrain:  {cmds['train']}\n"
        f"or:       {cmds['train_experiment']}\nregister: {cmds['run_experiment']}"
    )


HYDRA_COMMANDS = {
    "train": ("train", cmd_train),
    "run": ("pipeline", cmd_run),
    "eval": ("eval", cmd_eval),
    "promote": ("promote", cmd_promote),
    "robustness": ("robustness", cmd_robustness),
    "serve": ("serve", cmd_serve),
    "compare": ("compare", cmd_compare),
    "sweep": ("sweep", cmd_sweep),
}
_WORKER_CMD = "FINDIAL_HYDRA_COMMAND"  # Lightning's multi-device launcher re-runs us with the overrides only


def cmd_data(argv: list[str]) -> int:
    from findial.data.corpus import CorpusError, load_corpus
    from findial.data.labelbook import Glossary, LabelBook

    p = argparse.ArgumentParser(prog="findial data")
    sub = p.add_subparsers(dest="action", required=True)
    v = sub.add_parser("validate", help="validate corpus files against a label book")
    v.add_argument("files", nargs="+")
    g = sub.add_parser("generate", help="regenerate the bundled corpus")
    g.add_argument("--out", default=data_path("corpus"), help="output folder")
    g.add_argument("--seed", type=int, default=13)
    g.add_argument("--scale", type=float, default=1.0, help="multiplies the number of dialogues")
    g.add_argument(
        "--train-supplement",
        type=float,
        help="extra train dialogues drawing the train-only templates, as a share of train (default: corpus.yaml)",
    )
    n = sub.add_parser("natural", help="the hand-written corpus: check authoring files, or build the splits")
    n.add_argument("natural_action", choices=["check", "build"])
    n.add_argument("paths", nargs="*", help="check: authoring files or folders of them")
    n.add_argument("--max-warnings", type=int, default=40)
    for q in (v, n):
        q.add_argument("--ontology", default=data_path("spec/ontology.yaml"))
        q.add_argument("--glossary", default=data_path("spec/glossary.yaml"))
    args = p.parse_args(argv)
    if args.action == "natural":
        return _cmd_natural(args)
    if args.action == "generate":
        from findial.data.generator.build import generate_corpus

        t0 = time.perf_counter()
        summary = generate_corpus(
            Path(args.out), seed=args.seed, scale=args.scale, train_supplement=args.train_supplement
        )
        print(json.dumps({**summary, "seconds": round(time.perf_counter() - t0, 2)}, ensure_ascii=False, indent=1))
        return 0
    lb, gl = LabelBook.load(args.ontology), Glossary.load(args.glossary)
    status = 0
    for f in args.files:
        try:
            count = len(load_corpus(f, lb, gl))
            print(f"{f}: OK ({count} dialogues)")
        except CorpusError as exc:
            print(str(exc), file=sys.stderr)
            status = 1
    return status


def cmd_audit(argv: list[str]) -> int:
    from findial import audit, registry

    p = argparse.ArgumentParser(prog="findial audit")
    sub = p.add_subparsers(dest="action", required=True)
    v = sub.add_parser("verify", help="check the promotion audit log: hash chain, and the registry's last record")
    home = _home()
    v.add_argument("--log", default=str(home / "audit" / "promotions.jsonl"), help="the audit log")
    v.add_argument(
        "--tracking-uri",
        default=f"sqlite:///{(home / 'mlflow.db').resolve()}",
        help="the MLflow store holding each model's audit head (none: check the chain only)",
    )
    args = p.parse_args(argv)
    heads = {}
    if args.tracking_uri != "none":
        import mlflow

        mlflow.set_tracking_uri(args.tracking_uri)
        mlflow.set_registry_uri(args.tracking_uri)
        heads = registry.audit_heads()
    problems = audit.verify(args.log, heads)
    for problem in problems:
        print(problem, file=sys.stderr)
    n = len(audit.records(args.log)) if not problems else "?"
    print(
        f"{args.log}: "
        + (
            f"intact ({n} records, heads of {len(heads)} registered models match)"
            if not problems
            else f"{len(problems)} problem(s)"
        )
    )
    return 1 if problems else 0


def cmd_kb(argv: list[str]) -> int:
    from findial.data.kb.load import DEFAULT_ARTICLES, DEFAULT_QUERIES, KBError, load_kb, load_queries
    from findial.data.kb.index import DEFAULT_FUSION, DEFAULT_WEIGHT, FUSIONS, Retriever

    home = _home()
    p = argparse.ArgumentParser(prog="findial kb")
    sub = p.add_subparsers(dest="action", required=True)
    i = sub.add_parser("index", help="build or update the index: embeds only new and changed articles")
    i.add_argument("--kb", default=str(DEFAULT_ARTICLES), help="the articles (JSON Lines, data/kb/README.md)")
    i.add_argument("--model", help="embedding model directory (default: the bundled e5-small)")
    s = sub.add_parser("search", help="the best-matching articles for a query")
    s.add_argument("query")
    s.add_argument("--lang", choices=["zh", "en"], help="only articles in this language")
    s.add_argument("-k", type=int, default=5)
    e = sub.add_parser("eval", help="recall@1, recall@5 and MRR per language on labelled queries")
    e.add_argument("--split", choices=["validation", "test"], default="validation")
    e.add_argument("--queries", default=str(DEFAULT_QUERIES))
    e.add_argument("--report", help="the JSON file to write (default: <index dir>/eval-<split>.json)")
    for q in (i, s, e):
        q.add_argument(
            "--out" if q is i else "--index",
            dest="index_dir",
            default=str(home / "kb-index"),
            help="the index directory",
        )
    for q in (s, e):
        q.add_argument("--model", help="embedding model directory (default: the one the index was built with)")
        q.add_argument("--fusion", choices=list(FUSIONS), default=DEFAULT_FUSION)
        q.add_argument("--weight", type=float, default=DEFAULT_WEIGHT, help="the dense share: 1 dense, 0 BM25")
    args = p.parse_args(argv)
    try:
        if args.action == "index":
            t0 = time.perf_counter()
            stats = Retriever(args.model).index(load_kb(args.kb), args.index_dir)
            print(json.dumps({**stats, "index": args.index_dir, "seconds": round(time.perf_counter() - t0, 2)}))
            return 0
        r = Retriever.load(args.index_dir, args.model, fusion=args.fusion, weight=args.weight)
        if args.action == "search":
            titles = {d["id"]: d["title"] for d in r.docs}
            for rank, (aid, score) in enumerate(r.search(args.query, args.lang, args.k), 1):
                print(f"{rank}. {aid}  {score:.4f}  {titles[aid]}")
            return 0
        from findial.data.kb.scoring import evaluate

        queries = load_queries(args.queries, r.docs, split=args.split)
        metrics = {
            "split": args.split,
            "queries_file": args.queries,
            "kb_version": r.manifest["kb_version"],
            "model_id": r.manifest["model_id"],
            "fusion": args.fusion,
            "weight": args.weight,
            **evaluate(r, queries),
        }
    except (KBError, FileNotFoundError, ValueError) as exc:
        print(f"findial kb {args.action}: {exc}", file=sys.stderr)
        return 1
    for lang in ("zh", "en"):
        m = metrics[lang]
        print(
            f"{lang}: recall@1 {m['recall@1']:.4f}  recall@5 {m['recall@5']:.4f}  MRR {m['mrr']:.4f}  "
            f"({m['queries']} queries)"
        )
    report = Path(args.report or Path(args.index_dir) / f"eval-{args.split}.json")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(metrics, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {report}")
    return 0


def _cmd_natural(args) -> int:
    from findial.data.labelbook import Glossary, LabelBook
    from findial.data.natural.authoring import convert_paths
    from findial.data.natural.build import build, summary

    lb, gl = LabelBook.load(args.ontology), Glossary.load(args.glossary)
    if args.natural_action == "build":
        print(json.dumps(build(lb, gl), ensure_ascii=False, indent=1))
        return 0
    if not args.paths:
        print("findial data natural check: name the authoring files or folders to check", file=sys.stderr)
        return 2
    dialogues, errors, warnings = convert_paths(args.paths, lb, gl)
    for w in warnings[: args.max_warnings]:
        print(f"warning: {w}")
    if len(warnings) > args.max_warnings:
        print(f"... and {len(warnings) - args.max_warnings} more warnings")
    for e in errors:
        print(f"error: {e}")
    print(json.dumps(summary(dialogues, lb, gl), ensure_ascii=False))
    print(
        f"{len(errors)} error(s), {len(warnings)} warning(s)" + ("" if errors else f"; {len(dialogues)} dialogues OK")
    )
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        raise SystemExit(0)
    setup()
    cmd, rest = argv[0], argv[1:]
    if cmd == "data":
        raise SystemExit(cmd_data(rest))
    if cmd == "audit":
        raise SystemExit(cmd_audit(rest))
    if cmd == "kb":
        raise SystemExit(cmd_kb(rest))
    if cmd == "release":
        from findial.serving.release_cli import main as release_main

        raise SystemExit(release_main(rest))
    if cmd == "fed":
        from findial.federated.command import main as fed_main

        raise SystemExit(fed_main(rest))
    if cmd not in HYDRA_COMMANDS and "=" in cmd and os.environ.get("LOCAL_RANK") and os.environ.get(_WORKER_CMD):
        cmd, rest = os.environ[_WORKER_CMD], argv  # a DDP worker that Lightning's launcher started
    if cmd not in HYDRA_COMMANDS:
        print(f"findial: unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
        raise SystemExit(2)
    import hydra

    config_name, fn = HYDRA_COMMANDS[cmd]
    os.environ[_WORKER_CMD] = cmd
    sys.argv = [sys.argv[0], *rest]  # argv[0]: what Lightning's launcher re-runs for the other devices
    hydra.main(config_path="pkg://findial.configs", config_name=config_name, version_base="1.3")(fn)()


if __name__ == "__main__":
    main()
