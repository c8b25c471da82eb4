"""The serving paths of one bundle side by side, in one run on one machine: accuracy and load.

    python benchmarks/serving_paths.py --bundle BUNDLE [--gated GATED_BUNDLE] [--paths ...]
        [--concurrency 1 8 32] [--duration 15] [--threads 1] [--accuracy validation test] [--out FILE]

Paths (``--paths``, default all that apply):

- ``default-torch``: the bundle as ``findial serve`` runs it by default (members on every turn, torch);
- ``default-onnx``: the same under ``runtime=onnx`` (the e5 models in ONNX Runtime; members on torch);
- ``gated-torch``, ``gated-onnx``: ``--gated``, the bundle with its ``member_gate`` (``findial.training.member_gate``:
  members only where the e5 models are unsure, chosen on the validation split);
- ``none-torch``, ``none-onnx``: the bundle's e5 models without members (as ``members=none``
  serves);
- ``baseline``: a plain ``transformers.pipeline("text-classification")`` per request on the backbone
  (``load_benchmark.py``'s naive service: no batching, masking or audit; its head is untrained, so it has no
  accuracy to report: it is the cost reference).

Accuracy (``--accuracy``: natural splits by name or corpus files): ``NLUPipeline.predict_dialogues`` +
``evaluate_dialogues``, what ``findial eval`` scores, per path and split. The members' outputs are computed once
per turn and shared between the paths (they run on torch in every path and read the turn alone).

Load: each path's server (``findial serve`` over the path's bundle and runtime; one at a time) is driven
with ``load_benchmark.drive`` at each concurrency. Results (p50/p95/p99 ms, req/s, and the accuracies) are
printed and written as JSON (atomically) to ``--out`` (default ``benchmarks/results/<date>-serving-paths.json``).
The client shares the machine with the server, and a shared machine is noisy: compare paths within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load_benchmark as lb  # noqa: E402

from findial.training.member_gate import HEADLINE  # the metrics a serving path must keep

PATHS = (
    "default-torch",
    "default-onnx",
    "gated-torch",
    "gated-onnx",
    "none-torch",
    "none-onnx",
    "baseline",
)


def without_members(bundle: Path, target: Path) -> Path:
    """A copy of ``bundle`` holding its e5 models alone: no ``members/`` and none listed (``members=none``)."""
    from findial.tracking import atomic_directory

    with atomic_directory(target) as tmp:
        shutil.copytree(bundle, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("members"))
        for task in ("intent", "ner"):
            f = tmp / task / "findial_model.json"
            meta = json.loads(f.read_text(encoding="utf-8"))
            meta.pop("members", None)
            meta.pop("member_gate", None)
            f.write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    return target


def path_spec(name: str, bundles: dict[str, Path]) -> tuple[Path, str] | None:
    """(bundle, runtime) of a path; None for the baseline."""
    if name == "baseline":
        return None
    kind, runtime = name.split("-", 1)
    return bundles[kind], runtime


def data_file(split: str) -> Path:
    p = Path(split)
    if p.suffix == ".jsonl":
        return p
    from findial.data.natural import __file__ as natural

    return Path(natural).parent / f"{split}.jsonl"


def request_texts(split: str) -> list[str]:
    """The user turns' texts of a corpus split (``load_benchmark.drive`` sends them in turn)."""
    from findial.data.corpus import load_corpus

    texts = [t["text"] for d in load_corpus(data_file(split)) for t in d["turns"] if t["speaker"] == "user"]
    if not texts:
        raise SystemExit(f"--texts {split}: no user turns")
    return texts


def accuracy(paths: list[str], bundles: dict[str, Path], splits: list[str], log=print) -> dict:
    """{path: {split: {metric: value, seconds, member shares}}} for every non-baseline path."""
    from findial.data.corpus import load_corpus
    from findial.data.labelbook import Glossary, LabelBook
    from findial.evaluation.metrics import evaluate_dialogues
    from findial.training.inference import NLUPipeline
    from findial.training.member_gate import MemberCache

    out: dict = {}
    shared: dict = {}  # task -> the member objects (wrapped once, their outputs cached across paths)
    for name in paths:
        spec = path_spec(name, bundles)
        if spec is None:
            continue
        bundle, runtime = spec
        labelbook = LabelBook.load(bundle / "ontology.yaml")
        glossary = Glossary.load(bundle / "glossary.yaml")
        pipe = NLUPipeline(bundle / "intent", bundle / "ner", "cpu", labelbook, glossary, runtime=runtime)
        if pipe.intent.members or pipe.ner.members:
            if not shared:
                cache = MemberCache(pipe)
                shared = {"intent": pipe.intent.members, "ner": pipe.ner.members, "cache": cache}
            pipe.intent.members, pipe.ner.members = shared["intent"], shared["ner"]
        out[name] = {}
        for split in splits:
            gold = load_corpus(data_file(split), labelbook, glossary)
            if shared:
                shared["cache"].reset()
            t0 = time.perf_counter()
            pred = pipe.predict_dialogues(gold)
            seconds = time.perf_counter() - t0
            m = evaluate_dialogues(gold, pred, labelbook)
            row = {k: m[k] for k in HEADLINE}
            row["n_user_turns"] = m["n_user_turns"]
            row["seconds"] = round(seconds, 1)  # members' outputs may come from the cache: not a speed figure
            if shared and (pipe.intent.members or pipe.ner.members):
                n = m["n_user_turns"] or 1
                row["intent_member_share"] = round(shared["cache"].asked["intent"] / n, 4)
                row["ner_member_share"] = round(shared["cache"].asked["ner"] / n, 4)
            out[name][Path(split).stem] = row
            log(f"accuracy {name:<15} {Path(split).stem:<11} " + " ".join(f"{k} {row[k]}" for k in HEADLINE))
        del pipe
    return out


def load(paths: list[str], bundles: dict[str, Path], args, work: Path, log=print) -> list[dict]:
    env = {**os.environ, "FINDIAL_HOME": str(work / "home")}
    results = []
    for name in paths:
        spec = path_spec(name, bundles)
        port = lb.free_port()
        if spec is None:
            backbone = lb.backbone_dir(bundles["default"])
            cmd = [sys.executable, lb.__file__, "--serve-baseline", "--backbone", str(backbone), "--port", str(port)]
            cmd += ["--torch-threads", str(args.threads)]
            base, route = f"http://127.0.0.1:{port}", "/classify"
        else:
            bundle, runtime = spec
            cmd = [sys.executable, "-m", "findial.cli", "serve", f"port={port}", f"model_ref={bundle}"]
            cmd += ["poll_interval_s=0", f"torch_threads={args.threads}", f"runtime={runtime}", "log_level=warning"]
            cmd += list(args.override)
            base, route = f"http://127.0.0.1:{port}", "/v1/understand"
        logf = work / f"{name}.log"
        proc = lb.start(cmd, env, logf)
        try:
            t0 = time.perf_counter()
            lb.wait_ready(proc, base + "/readyz", logf, args.start_timeout)
            ready_s = round(time.perf_counter() - t0, 1)
            for c in args.concurrency:
                res = asyncio.run(lb.drive(base + route, c, args.duration, args.max_requests, args.warmup))
                res.update(path=name, ready_s=ready_s)
                results.append(res)
                log(
                    f"load {name:<15} c={c:<3} {res['requests']:>6} req {res['errors']:>3} err  p50 {res['p50_ms']:>7.1f}"
                    f"  p95 {res['p95_ms']:>7.1f}  p99 {res['p99_ms']:>7.1f} ms  {res['throughput_rps']:>6.1f} req/s"
                )
        finally:
            lb.stop(proc)
    return results


def table(load_rows: list[dict], acc: dict, split: str | None) -> str:
    lines = [
        f"| path | c | p50 ms | p95 ms | p99 ms | req/s | errors |{' multi-turn | intent | entity F1 | term F1 |' if split else ''}",
        f"|---|---|---|---|---|---|---|{'---|---|---|---|' if split else ''}",
    ]
    for r in load_rows:
        a = acc.get(r["path"], {}).get(split, {}) if split else {}
        extra = ""
        if split:
            extra = (
                " "
                + " | ".join(
                    str(a.get(k, "n/a"))
                    for k in ("multi_turn_accuracy", "intent_accuracy", "entity_micro_f1", "terminology_f1")
                )
                + " |"
            )
        lines.append(
            f"| {r['path']} | {r['concurrency']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
            f"{r['throughput_rps']} | {r['errors']} |{extra}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="a bundle directory (with its members: the default)")
    p.add_argument("--gated", type=Path, default=None, help="the bundle with its member_gate (member_gate.py --out)")
    p.add_argument("--paths", nargs="+", default=None, choices=PATHS)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--max-requests", type=int, default=3000)
    p.add_argument("--warmup", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch_threads (torch and onnxruntime) of every server")
    p.add_argument("--accuracy", nargs="*", default=["validation", "test"], help="natural split names or files")
    p.add_argument("--no-load", action="store_true", help="accuracy only")
    p.add_argument("--override", nargs="*", default=[], help="findial serve overrides for every findial path")
    p.add_argument(
        "--texts",
        default="validation",
        help="request texts: the user turns of a natural split (by name) or corpus file, one per request in turn "
        "(stateless, no context: so the gate sees the split's mix of sure and unsure turns); 'fixed': "
        "load_benchmark.TEXTS",
    )
    p.add_argument("--start-timeout", type=float, default=900)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from findial.tracking import atomic_write_text

    paths = args.paths or [n for n in PATHS if args.gated or not n.startswith("gated")]
    if any(n.startswith("gated") for n in paths) and not args.gated:
        p.error("the gated paths need --gated")
    work = Path(tempfile.mkdtemp(prefix="findial-paths-"))
    bundles = {"default": args.bundle, "none": without_members(args.bundle, work / "bundle-none")}
    if args.gated:
        bundles["gated"] = args.gated
    if args.texts != "fixed":
        lb.TEXTS[:] = request_texts(args.texts)
    started = dt.datetime.now(dt.timezone.utc)
    log = lambda s: print(s, flush=True)  # noqa: E731
    import torch

    torch.set_num_threads(args.threads)
    acc = accuracy(paths, bundles, args.accuracy, log) if args.accuracy else {}
    try:
        rows = [] if args.no_load else load(paths, bundles, args, work, log)
    except BaseException:
        print(f"server logs kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    result = {
        "started": started.isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "bundle": str(args.bundle),
        "gated": str(args.gated) if args.gated else None,
        "threads": args.threads,
        "duration_s": args.duration,
        "texts": args.texts,
        "n_texts": len(lb.TEXTS),
        "accuracy": acc,
        "load": rows,
        "note": "one run, one machine, client beside the server; a shared machine is noisy: compare paths within a run",
    }
    split = Path(args.accuracy[0]).stem if args.accuracy else None
    print("\n" + table(rows, acc, split))
    out = args.out or Path(__file__).parent / "results" / f"{started:%Y-%m-%d}-serving-paths.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
