"""Choose where a bundle's ensemble members run (``member_gate``), on a validation split, and write it in.

    python -m findial.training.member_gate BUNDLE --data VALIDATION.jsonl --out GATED_BUNDLE
        [--tolerance 0.002] [--max-changed 0.005] [--runtime torch|onnx] [--report gate.json]

The Gemma members cost about five times the e5 models on CPU, and on most turns they do not change the
answer: where the e5 model is sure, the mean of the probabilities keeps its choice. A gate runs them only
where the e5 model's margin (top-1 minus top-2 probability; the intent's, or a NER text's least sure
word's) is below a threshold (``member_rows``, ``EntityPredictor.member_texts``).

How the thresholds are chosen, on ``--data`` only (the natural validation split; never the test split):
the members' outputs for each turn are computed once (they read the turn alone) and reused for every
candidate; each candidate intent threshold (NER members always on) and each NER threshold (intent
members always on) is scored with ``evaluate_dialogues``, as ``findial eval`` scores, and compared turn by
turn with members-always; the cheapest (fewest member calls) with every headline metric within
``--tolerance`` of members-always and at most ``--max-changed`` of the user turns with another intent or
other entities than members-always (a changed answer can cost at most its turn: the changed share bounds
the turn-level loss whichever way the changes go, where the metrics of a split this small can rise by chance
while the gate changes many answers) is taken per task, and the
pair is scored again (if it misses the tolerance, the larger of the two thresholds' neighbours is tried, up to
members-always). The result goes into a copy of the bundle (``--out``, written atomically): each package's
``findial_model.json`` gets ``member_gate: {by, below, chosen_on, data_fingerprint}``; register that
copy as a new version to serve it. ``--report`` writes every candidate's metrics and member share.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HEADLINE = (
    "terminology_f1",
    "multi_turn_accuracy",
    "intent_accuracy",
    "entity_micro_f1",
    "joint_state_accuracy",
    "emotion_accuracy",
)
GRID = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)


class MemberCache:
    """Memoises the members of a pipeline: the intent members' ``probabilities`` and the NER members'
    ``word_probabilities`` per turn (keyed by what the member reads), and counts the turns asked."""

    def __init__(self, pipeline):
        self.asked = {"intent": 0, "ner": 0}
        for mem in pipeline.intent.members:
            self._wrap_intent(mem)
        for mem in pipeline.ner.members:
            self._wrap_ner(mem)

    def reset(self) -> None:
        self.asked = {"intent": 0, "ner": 0}

    def _wrap_intent(self, mem) -> None:
        import torch

        original, store, meta = mem.probabilities, {}, mem.meta
        keep = meta.get("context_turns", 3)

        def key(r):
            ctx = tuple((r.get("context") or [])[-keep:]) if keep else ()
            prev = r.get("previous_intent") if meta.get("previous_intent") else None
            return json.dumps([r["text"], ctx, prev], ensure_ascii=False, default=str)

        def probabilities(rows):
            keys = [key(r) for r in rows]
            missing = {k: r for k, r in zip(keys, rows) if k not in store}
            if missing:
                ip, ep = original(list(missing.values()))
                for i, k in enumerate(missing):
                    store[k] = (ip[i], ep[i] if ep is not None else None)
            self.asked["intent"] += len(rows)
            ip = torch.stack([store[k][0] for k in keys])
            ep = torch.stack([store[k][1] for k in keys]) if store[keys[0]][1] is not None else None
            return ip, ep

        mem.probabilities = probabilities

    def _wrap_ner(self, mem) -> None:
        original, store = mem.word_probabilities, {}

        def word_probabilities(texts):
            missing = [t for t in dict.fromkeys(texts) if t not in store]
            if missing:
                store.update(zip(missing, original(missing)))
            self.asked["ner"] += len(texts)
            return [store[t] for t in texts]

        mem.word_probabilities = word_probabilities


def answers(pred: list[dict]) -> list[tuple]:
    """Per user turn: (intent, entities, state), what a gate may change."""
    return [
        (
            t.get("intent"),
            tuple(sorted((e["start"], e["end"], e["label"], e.get("term_id")) for e in t.get("entities", []))),
            tuple(sorted((t.get("state") or {}).items())),
        )
        for d in pred
        for t in d["turns"]
        if t["speaker"] == "user"
    ]


def score(pipeline, cache: MemberCache, gold, labelbook, intent_gate, ner_gate, reference=None) -> dict:
    """Metrics (``evaluate_dialogues``) and member shares of one gate pair on ``gold``; with ``reference``
    (``answers`` of members-always), the shares of user turns whose intent / entities / state differ from it."""
    from findial.evaluation.metrics import evaluate_dialogues

    pipeline.intent.member_gate, pipeline.ner.member_gate = intent_gate, ner_gate
    cache.reset()
    t0 = time.perf_counter()
    pred = pipeline.predict_dialogues(gold)
    seconds = time.perf_counter() - t0
    m = evaluate_dialogues(gold, pred, labelbook)
    n = m["n_user_turns"] or 1
    row = {
        "intent_gate": intent_gate,
        "ner_gate": ner_gate,
        **{k: m[k] for k in HEADLINE},
        "intent_member_share": round(cache.asked["intent"] / n, 4),
        "ner_member_share": round(cache.asked["ner"] / n, 4),
        "seconds": round(seconds, 1),
    }
    mine = answers(pred)
    if reference is not None:
        for k, name in enumerate(("intent", "entities", "state")):
            row[f"{name}_changed"] = round(sum(a[k] != b[k] for a, b in zip(mine, reference)) / n, 4)
    row["_answers"] = mine
    return row


def within(row: dict, ref: dict, tolerance: float, max_changed: float | None = None) -> bool:
    """Every headline metric within ``tolerance`` of ``ref``'s and, with ``max_changed``, at most that share of
    user turns with another intent or other entities than members-always."""
    if max_changed is not None and max(row.get("intent_changed", 0), row.get("entities_changed", 0)) > max_changed:
        return False
    return all(row[k] is None or ref[k] is None or row[k] >= ref[k] - tolerance - 1e-9 for k in HEADLINE)


def choose(
    pipeline, gold, labelbook, tolerance: float = 0.002, grid=GRID, log=print, max_changed: float | None = 0.005
) -> dict:
    """{"always", "never", "intent": [...], "ner": [...], "chosen": {...}} (see the module docstring)."""
    cache = MemberCache(pipeline)
    off = {"by": "margin", "below": 0.0}

    def run(ig, ng):
        row = score(pipeline, cache, gold, labelbook, ig, ng, ref)
        row.pop("_answers")
        return row

    ref = None
    always = score(pipeline, cache, gold, labelbook, None, None)
    ref = always.pop("_answers")
    log(f"members always: {always}")
    never = run(off, off)
    log(f"members never:  {never}")
    rows: dict[str, list[dict]] = {"intent": [], "ner": []}
    for t in grid:
        g = {"by": "margin", "below": t}
        rows["intent"].append(run(g, None))
        rows["ner"].append(run(None, g))
        log(f"intent gate {t}: {rows['intent'][-1]}")
        log(f"ner gate {t}:    {rows['ner'][-1]}")

    def cheapest(task: str, start: int = 0):
        share = f"{task}_member_share"
        ok = [
            (r[share], i) for i, r in enumerate(rows[task]) if i >= start and within(r, always, tolerance, max_changed)
        ]
        return min(ok)[1] if ok else None  # an index into grid; None: only members-always keeps the metrics

    ci, cn = cheapest("intent"), cheapest("ner")
    while True:
        ig = None if ci is None else {"by": "margin", "below": grid[ci]}
        ng = None if cn is None else {"by": "margin", "below": grid[cn]}
        both = run(ig, ng)
        log(f"combined {ig} {ng}: {both}")
        if within(both, always, tolerance, max_changed) or (ci is None and cn is None):
            break
        # widen the gate that runs its members less often: the next larger threshold, or always
        if cn is None or (ci is not None and grid[ci] <= grid[cn]):
            ci = ci + 1 if ci is not None and ci + 1 < len(grid) else None
        else:
            cn = cn + 1 if cn is not None and cn + 1 < len(grid) else None
    return {
        "always": always,
        "never": never,
        **rows,
        "chosen": both,
        "tolerance": tolerance,
        "max_changed": max_changed,
    }


def write_gated(bundle: Path, out: Path, intent_gate: dict | None, ner_gate: dict | None, info: dict) -> Path:
    """A copy of ``bundle`` with the gates in its packages' meta (atomically)."""
    from findial.tracking import atomic_directory

    with atomic_directory(out) as tmp:
        shutil.copytree(bundle, tmp, dirs_exist_ok=True)
        for task, gate in (("intent", intent_gate), ("ner", ner_gate)):
            f = tmp / task / "findial_model.json"
            meta = json.loads(f.read_text(encoding="utf-8"))
            meta.pop("member_gate", None)
            if gate is not None:
                meta["member_gate"] = {**gate, **info}
            f.write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    from findial.data.corpus import fingerprint, load_corpus
    from findial.data.labelbook import Glossary, LabelBook
    from findial.tracking import atomic_write_text
    from findial.training.inference import NLUPipeline

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--data", required=True, help="the validation split (never the test split)")
    p.add_argument("--out", type=Path, help="write the gated bundle here")
    p.add_argument("--tolerance", type=float, default=0.002, help="the largest loss of a headline metric")
    p.add_argument(
        "--max-changed",
        type=float,
        default=0.005,
        help="the largest share of user turns whose intent or entities may differ from members-always (<0: no limit)",
    )
    p.add_argument("--runtime", default="torch", choices=["torch", "onnx"])
    p.add_argument("--threads", type=int, default=None, help="torch / onnxruntime threads")
    p.add_argument("--report", type=Path, help="every candidate's metrics, as JSON")
    args = p.parse_args(argv)
    if "test" in Path(args.data).stem:
        p.error(f"--data {args.data}: thresholds are chosen on a validation split, never a test split")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    labelbook = LabelBook.load(args.bundle / "ontology.yaml")
    glossary = Glossary.load(args.bundle / "glossary.yaml")
    gold = load_corpus(args.data, labelbook, glossary)
    pipeline = NLUPipeline(
        args.bundle / "intent", args.bundle / "ner", "cpu", labelbook, glossary, runtime=args.runtime
    )
    if not pipeline.intent.members and not pipeline.ner.members:
        p.error(f"{args.bundle}: the bundle has no ensemble members to gate")
    result = choose(
        pipeline,
        gold,
        labelbook,
        args.tolerance,
        log=lambda s: print(s, file=sys.stderr, flush=True),
        max_changed=None if args.max_changed < 0 else args.max_changed,
    )
    info = {
        "chosen_on": str(args.data),
        "data_fingerprint": fingerprint(gold, args.bundle / "ontology.yaml", args.bundle / "glossary.yaml"),
        "tolerance": args.tolerance,
        "max_changed": None if args.max_changed < 0 else args.max_changed,
    }
    result["info"] = info
    if args.report:
        atomic_write_text(args.report, json.dumps(result, indent=2) + "\n")
    if args.out:
        write_gated(args.bundle, args.out, result["chosen"]["intent_gate"], result["chosen"]["ner_gate"], info)
    print(json.dumps({"chosen": result["chosen"], "always": result["always"], "never": result["never"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
