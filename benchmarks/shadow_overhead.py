"""What shadow scoring costs the reply path: POST /v1/understand latency with and without a shadow model.

    python benchmarks/shadow_overhead.py [--champion BUNDLE] [--shadow BUNDLE] [--concurrency 1 4] [--requests 300]

One ``findial serve`` process (the whole request path: routing by the release plan, masking, hand-off,
audit) runs over a temporary sqlite registry holding the two bundles (default: two tiny randomly
initialised ones, built in seconds; pass the real champion's bundle directory twice for real figures).
Phases alternate in the same server: shadow off, on, off, on, ... (``--rounds``), the ``shadow`` alias set
and removed between them with the release step (``findial release shadow``), each phase after the
server has loaded the plan and the shadow queue is empty. Each phase sends ``--requests`` stateless
requests from ``c`` closed-loop client threads and measures client-side latency. It prints p50/p95 per
phase kind and concurrency, the on/off ratios (from the same run: the machine may be shared), how many
turns the shadow scored (once its queue has drained after the phase) and how many copies it dropped
(``--out``: the same as JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "我的信用卡昨天丢了，怎么挂失？",
    "How much is the annual fee on the platinum card?",
    "房贷现在LPR是多少",
    "I want to transfer 5000 USD to my account at HSBC next Friday",
    "帮我查一下这个月的账单和最低还款额",
    "Can I redeem my money market fund today?",
    "转账失败了，钱扣了但是对方没收到，你们什么时候处理？",
    "what's the interest rate for a three year time deposit",
]
NAME = "findial-nlu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_bundles(out: Path) -> tuple[Path, Path]:
    """Two tiny random bundles (different seeds): a champion and a shadow of different behaviour."""
    from hydra import compose, initialize_config_module

    from findial.federated.models import build_task_models
    from findial.registry import make_bundle
    from findial.runtime import setup
    from findial.training.package import save_package

    setup()
    mini = REPO / "tests" / "fixtures" / "mini.jsonl"
    bundles = []
    for seed in (1, 2):
        with initialize_config_module("findial.configs", version_base="1.3"):
            cfg = compose(
                "fed",
                overrides=[
                    f"paths.home={out}",
                    "model=tiny",
                    "data=custom",
                    f"data.train_file={mini}",
                    f"data.val_file={mini}",
                    f"seed={seed}",
                ],
            )
        models = build_task_models(cfg, cache=False)
        labels = {"ontology.yaml": cfg.labels.ontology, "glossary.yaml": cfg.labels.glossary}
        packages = {
            t: save_package(models.modules[t], models.metas[t], out / f"seed{seed}" / t, files=labels)
            for t in ("intent", "ner")
        }
        bundles.append(make_bundle(packages["intent"], packages["ner"], out / f"seed{seed}" / "bundle", {"seed": seed}))
    return bundles[0], bundles[1]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))]


def phase(base: str, concurrency: int, requests: int) -> list[float]:
    latencies, lock, counter = [], threading.Lock(), iter(range(requests))

    def client(k: int):
        with httpx.Client(base_url=base, timeout=120) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                r = http.post("/v1/understand", json={"text": f"{TEXTS[i % len(TEXTS)]} {i}"})
                dt = (time.perf_counter() - t0) * 1000
                if r.status_code != 200:
                    raise RuntimeError(f"request failed: {r.status_code} {r.text[:200]}")
                with lock:
                    latencies.append(dt)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def shadow_figures(http: httpx.Client) -> tuple[float, float]:
    scored = dropped = 0.0
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("findial_shadow_turns_total{"):
            scored += float(line.rsplit(" ", 1)[1])
        elif line.startswith("findial_shadow_dropped_total "):
            dropped = float(line.rsplit(" ", 1)[1])
    return scored, dropped


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--champion", help="bundle directory (default: a tiny random one)")
    p.add_argument("--shadow", help="bundle directory (default: another tiny random one)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    p.add_argument("--requests", type=int, default=300, help="requests per phase")
    p.add_argument("--rounds", type=int, default=2, help="off/on pairs per concurrency")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--out", help="write the figures as JSON")
    args = p.parse_args()

    from findial import registry, tracking
    from findial.serving import release_steps

    work = Path(tempfile.mkdtemp(prefix="shadow-bench-"))
    champion, shadow = (Path(args.champion), Path(args.shadow)) if args.champion else tiny_bundles(work / "bundles")
    if args.champion and not args.shadow:
        shadow = champion
    tracking.configure(f"sqlite:///{work}/mlflow.db", work / "mlartifacts")
    v1 = registry.register(champion, NAME, {})
    v2 = registry.register(shadow, NAME, {})
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(NAME, "champion", v1)  # benchmark set-up, not a promotion
    port = free_port()
    log = (work / "serve.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "findial.cli",
            "serve",
            f"port={port}",
            "poll_interval_s=0.5",
            "responder.model_ref=null",
        ],
        cwd=work,
        env={**os.environ, "FINDIAL_HOME": str(work)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=base, timeout=60)
    audit_log = work / "audit" / "promotions.jsonl"
    rows = []
    try:

        def ready() -> bool:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited: see {work / 'serve.log'}")
            try:
                return http.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 300, "the server")
        phase(base, 1, args.warmup)

        def set_shadow(on: bool) -> None:
            release_steps.set_shadow(NAME, v2 if on else None, audit_log)

            def applied() -> bool:
                rel = http.get("/healthz").json()["release"]
                loaded = rel["roles"]["shadow"]["loaded"]
                return (rel["shadow"] == v2 and loaded == v2) if on else rel["shadow"] is None

            wait_for(applied, 120, "the shadow plan")
            if on:
                phase(base, 1, 10)  # the shadow's first batches warm it up
            wait_for(lambda: http.get("/healthz").json()["release"]["shadow_queue"] == 0, 120, "the shadow queue")

        for c in args.concurrency:
            lat = {"off": [], "on": []}
            for _ in range(args.rounds):
                for kind in ("off", "on"):
                    set_shadow(kind == "on")
                    before = shadow_figures(http)
                    lat[kind] += phase(base, c, args.requests)
                    after = shadow_figures(http)
                    if kind == "on":  # the copies still queued are scored after the phase (off the reply path)
                        wait_for(lambda: http.get("/healthz").json()["release"]["shadow_queue"] == 0, 300, "the queue")
                        time.sleep(0.5)
                        after = shadow_figures(http)
                        lat.setdefault("scored", []).append(after[0] - before[0])
                        lat.setdefault("dropped", []).append(after[1] - before[1])
            set_shadow(False)
            row = {"concurrency": c, "requests_per_phase": args.requests, "rounds": args.rounds}
            for kind in ("off", "on"):
                row[f"{kind}_p50_ms"] = round(statistics.median(lat[kind]), 2)
                row[f"{kind}_p95_ms"] = round(percentile(lat[kind], 0.95), 2)
            row["p50_ratio"] = round(row["on_p50_ms"] / row["off_p50_ms"], 3)
            row["p95_ratio"] = round(row["on_p95_ms"] / row["off_p95_ms"], 3)
            row["shadow_scored"] = int(sum(lat["scored"]))
            row["shadow_dropped"] = int(sum(lat["dropped"]))
            rows.append(row)
    finally:
        http.close()
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    bundle = "tiny random bundles" if not args.champion else f"{champion} / {shadow}"
    print(f"shadow overhead on POST /v1/understand ({bundle}; {os.cpu_count()} CPUs)")
    print("| c | off p50 ms | on p50 ms | p50 ratio | off p95 ms | on p95 ms | p95 ratio | shadowed | dropped |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['concurrency']} | {r['off_p50_ms']} | {r['on_p50_ms']} | {r['p50_ratio']} | {r['off_p95_ms']} | "
            f"{r['on_p95_ms']} | {r['p95_ratio']} | {r['shadow_scored']} | {r['shadow_dropped']} |"
        )
    if args.out:
        tracking.atomic_write_text(args.out, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
