"""Which backbone reads an unseen phrasing best? A probe over the bundled corpus.

Fine-tunes one intent classifier of the turn alone (LoRA on attention and feed-forward layers, mean
pooling, a linear head, AdamW with the head at 10x the adapters' step, label smoothing 0.1, batch 32)
on the train split's turns before a dialogue has its first task, and scores the first task turns of
validation and test, whose templates training never saw. Same recipe for every backbone, so the
figures compare the pretrained models, not settings. Prints the accuracies; ``--out`` writes them and
the predictions as JSON.

    python benchmarks/first_turn_probe.py --backbone e5_small --epochs 2
    python benchmarks/first_turn_probe.py --backbone gemma3 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModel, AutoTokenizer

from findial.data.corpus import load_corpus

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
NON_TASK = {"greeting", "thanks", "goodbye", "affirm", "deny", "request_human_agent", "out_of_scope"}


def first_turns(split: str) -> list[tuple[str, str, bool]]:
    """(text, intent, is a task turn) for the user turns before a dialogue's first task, that one included."""
    out = []
    for d in load_corpus(CORPUS / f"{split}.jsonl"):
        task = None
        for t in d["turns"]:
            if t["speaker"] != "user":
                continue
            if task is None:
                out.append((t["text"], t["intent"], t["intent"] not in NON_TASK))
            if t["intent"] not in NON_TASK:
                task = t["intent"]
    return out


def backbone(name: str):
    if name == "e5_small":  # LoRA on the top 6 of 12 layers, as the default intent model
        from findial.training.backbones import e5_small

        return e5_small(), ["query", "key", "value", "dense"], list(range(6, 12)), {"add_pooling_layer": False}
    if name == "gemma3":
        from findial.training.generation.backbones import gemma3

        return gemma3(), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], None, {}
    raise SystemExit(f"--backbone {name!r}: expected e5_small or gemma3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="e5_small")
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    train, val, test = first_turns("train"), first_turns("validation"), first_turns("test")
    intents = sorted({r[1] for r in train})
    index = {k: i for i, k in enumerate(intents)}
    path, targets, layers, kwargs = backbone(args.backbone)
    tok = AutoTokenizer.from_pretrained(path)
    base = AutoModel.from_pretrained(path, **kwargs)
    model = get_peft_model(
        base, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=targets, layers_to_transform=layers)
    )
    head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(base.config.hidden_size, len(intents)))
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-3},
            {"params": head.parameters(), "lr": 1e-2},
        ],
        weight_decay=0.01,
    )
    bs = 32
    steps = int(math.ceil(len(train) / bs) * args.epochs)
    warm = int(0.06 * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1, (s + 1) / max(1, warm)) * max(0.0, (steps - s) / max(1, steps - warm))
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def embed(texts):
        e = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        h = model(input_ids=e["input_ids"], attention_mask=e["attention_mask"]).last_hidden_state
        m = e["attention_mask"].unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1)

    t0, step, order = time.time(), 0, list(range(len(train)))
    while step < steps:
        random.shuffle(order)  # length-bucketed batches in a shuffled order
        pools = [sorted(order[i : i + bs * 50], key=lambda j: len(train[j][0])) for i in range(0, len(order), bs * 50)]
        batches = [p[i : i + bs] for p in pools for i in range(0, len(p), bs)]
        random.shuffle(batches)
        for b in batches[: steps - step]:
            model.train(), head.train()
            loss = loss_fn(head(embed([train[j][0] for j in b])), torch.tensor([index[train[j][1]] for j in b]))
            loss.backward(), opt.step(), sched.step(), opt.zero_grad()
            step += 1
    seconds = time.time() - t0
    print(f"{args.backbone}: trained {steps} steps in {seconds:.0f}s")

    @torch.inference_mode()
    def score(data, name):
        model.eval(), head.eval()
        preds = []
        for i in range(0, len(data), 64):
            preds += [intents[k] for k in head(embed([r[0] for r in data[i : i + 64]])).argmax(-1).tolist()]
        task = [(p, r[1]) for p, r in zip(preds, data) if r[2]]
        acc = sum(p == y for p, y in task) / len(task)
        print(f"{args.backbone} {name}: first task turns {acc:.3f} ({len(task)})")
        return acc, preds

    result = {"backbone": args.backbone, "epochs": args.epochs, "train_rows": len(train), "train_seconds": seconds}
    for split, data in (("validation", val), ("test", test)):
        acc, preds = score(data, split)
        result[split] = {"first_task_turn_accuracy": acc, "predictions": preds}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
