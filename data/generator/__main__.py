"""python -m findial.data.generator --out data/corpus --seed 13 [--scale 1.0]"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .build import generate_corpus


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m findial.data.generator",
                                description="Generate the bundled bilingual dialogue corpus.")
    p.add_argument("--out", type=Path, default=Path("data/corpus"), help="output folder")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the number of dialogues")
    p.add_argument("--train-supplement", type=float, help="extra train dialogues that also draw the train-only "
                                                            "templates, as a share of train (default: corpus.yaml)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    summary = generate_corpus(args.out, seed=args.seed, scale=args.scale,
                              train_supplement=args.train_supplement)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(summary, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
