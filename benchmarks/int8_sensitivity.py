"""Which layers of the e5 models cost accuracy under int8 (ONNX Runtime), on a validation split.

    python benchmarks/int8_sensitivity.py --bundle BUNDLE [--data VALIDATION.jsonl] [--threads 1] [--out FILE]

The bundle's e5 intent and NER models (members left out) are exported to ONNX (``runtime=onnx``, cached) and
scored on ``--data`` (``evaluate_dialogues``, as ``findial eval`` scores) in float32 (the reference) and in
variants of int8:

- ``dynamic-all``: every weight MatMul of both models in dynamic int8 (onnxruntime ``quantize_dynamic``,
  weights per output channel, activations per tensor and batch): what was measured to lose multi-turn accuracy;
- ``dynamic-<model>-<kind>``: only one kind of MatMul of one model (``qkv``, ``attn_out``, ``ffn_in``,
  ``ffn_out``, every layer), the rest float: each kind's own cost;
- ``dynamic-<model>-layer<N>``: only layer N of one model;
- ``dynamic-keep-<...>``: everything but the kinds and layers found costly (``--keep``, default: chosen from
  the runs above: those whose loss on any headline metric exceeds ``--budget``);
- ``weight-only-int8``: ``MatMulNBits`` 8-bit weights in blocks of 32, int8 activations per block
  (accuracy level 4) and float compute (level 1).

Each row has the headline metrics, their largest drop against float32 and the wall seconds of the e5 models
over the split (one thread: a speed indication, not a serving figure). JSON to ``--out`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from findial.training.member_gate import HEADLINE  # the metrics a serving path must keep

KINDS = {
    "qkv": ("/attention/self/query/", "/attention/self/key/", "/attention/self/value/"),
    "attn_out": ("/attention/output/dense/",),
    "ffn_in": ("/intermediate/dense/",),
    "ffn_out": ("/output/dense/MatMul",),  # the layer's output/dense (attention/output/dense is attn_out)
}


def nodes_of(nodes: list[str], kind: str | None = None, layer: int | None = None) -> list[str]:
    out = []
    for n in nodes:
        if kind and not any(k in n for k in KINDS[kind]):
            continue
        if kind == "ffn_out" and "/attention/output/" in n:
            continue
        if layer is not None and f"/layer.{layer}/" not in n:
            continue
        out.append(n)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--data", default=None, help="default: the natural validation split")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budget", type=float, default=0.002, help="a variant losing more than this on a metric is costly")
    p.add_argument("--keep", nargs="*", default=None, help="model:kind or model:layerN kept in float (default: found)")
    p.add_argument("--skip-layers", action="store_true", help="only the per-kind runs, not the per-layer ones")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    import torch

    from findial.data.corpus import load_corpus
    from findial.data.labelbook import Glossary, LabelBook
    from findial.evaluation.metrics import evaluate_dialogues
    from findial.tracking import atomic_write_text
    from findial.training import onnx_runtime as ox
    from findial.training.inference import NLUPipeline

    torch.set_num_threads(args.threads)
    data = args.data or str(Path(ox.__file__).resolve().parents[1] / "data" / "natural" / "validation.jsonl")
    if "test" in Path(data).stem:
        p.error("choose what to quantise on a validation split, never the test split")
    bundle = args.bundle
    labelbook, glossary = LabelBook.load(bundle / "ontology.yaml"), Glossary.load(bundle / "glossary.yaml")
    gold = load_corpus(data, labelbook, glossary)
    pipe = NLUPipeline(bundle / "intent", bundle / "ner", "cpu", labelbook, glossary, runtime="onnx")
    pipe.intent.members, pipe.ner.members = [], []
    models = {"intent": pipe.intent, "ner": pipe.ner}
    float_modules = {m: pred.module for m, pred in models.items()}
    nodes = {m: ox.matmul_nodes(mod.path) for m, mod in float_modules.items()}
    work = Path(tempfile.mkdtemp(prefix="findial-int8-"))
    rows: list[dict] = []

    def score(name: str, files: dict[str, Path]) -> dict:
        for m, pred in models.items():
            f = files.get(m)
            pred.module = ox.OnnxModule(f, float_modules[m].names) if f else float_modules[m]
        t0 = time.perf_counter()
        pred_d = pipe.predict_dialogues(gold)
        seconds = time.perf_counter() - t0
        met = evaluate_dialogues(gold, pred_d, labelbook)
        row = {"variant": name, **{k: met[k] for k in HEADLINE}, "seconds": round(seconds, 1)}
        if rows:
            ref = rows[0]
            row["max_drop"] = round(max(ref[k] - row[k] for k in HEADLINE if row[k] is not None), 4)
        rows.append(row)
        print(f"{name:<28} " + " ".join(f"{k[:12]} {row[k]:.4f}" for k in HEADLINE) + f"  {row.get('max_drop', 0):+.4f}"
              f"  {seconds:.1f}s", flush=True)  # fmt: skip
        for f in files.values():
            if f and f.parent == work:
                f.unlink(missing_ok=True)
        return row

    def dyn(m: str, only=None, keep=()) -> Path:
        dst = work / f"{m}-{len(rows)}.onnx"
        return ox.quantize_int8(float_modules[m].path, dst, keep_float=keep, only=only)

    score("float32", {})
    score("dynamic-all", {m: dyn(m) for m in models})
    for m in models:
        score(f"dynamic-{m}-all", {m: dyn(m)})
    for m in models:
        for kind in KINDS:
            sel = nodes_of(nodes[m], kind=kind)
            score(f"dynamic-{m}-{kind}", {m: dyn(m, only=sel)})
    if not args.skip_layers:
        n_layers = 1 + max(int(n.split("/layer.")[1].split("/")[0]) for n in nodes["intent"] if "/layer." in n)
        for m in models:
            for layer in range(n_layers):
                score(f"dynamic-{m}-layer{layer}", {m: dyn(m, only=nodes_of(nodes[m], layer=layer))})
    if args.keep is None:
        costly = [r["variant"] for r in rows[1:] if r.get("max_drop", 0) > args.budget and r["variant"].count("-") == 2]
        keep = [v.split("-", 1)[1].replace("-", ":", 1) for v in costly if not v.endswith("-all")]
    else:
        keep = args.keep
    files = {}
    for m in models:
        exclude = []
        for spec in keep:
            km, what = spec.split(":")
            if km != m:
                continue
            exclude += (
                nodes_of(nodes[m], layer=int(what[5:])) if what.startswith("layer") else nodes_of(nodes[m], kind=what)
            )
        files[m] = dyn(m, keep=tuple(exclude)) if len(exclude) < len(nodes[m]) else None
    keep_row = score("dynamic-keep-" + (",".join(keep) or "none"), files)
    keep_row["keep_float"] = keep
    for level in (4, 1):
        try:
            wfiles = {
                m: ox.quantize_weights_int8(float_modules[m].path, work / f"{m}-w8-{level}.onnx", level) for m in models
            }
        except ImportError as exc:
            print(f"weight-only int8 skipped: {exc}", file=sys.stderr)
            break
        score(f"weight-only-int8-acc{level}", wfiles)
    result = {"bundle": str(bundle), "data": data, "threads": args.threads, "budget": args.budget, "rows": rows}
    out = args.out or Path(__file__).parent / "results" / f"{time.strftime('%Y-%m-%d')}-int8-sensitivity.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
