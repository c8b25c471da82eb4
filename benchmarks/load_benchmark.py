"""Load benchmark of POST /v1/understand on loopback, beside a naive baseline service.

    python benchmarks/load_benchmark.py --model PATH_OR_REF [--concurrency 1 8 32] [--duration 10]

Two servers are started on 127.0.0.1, each in its own process:

- findial: ``findial serve`` over the bundle (batching, PII masking, hand-off rules, audit log and
  all: the whole request path);
- baseline: what a naive service does: a FastAPI endpoint that calls a plain
  ``transformers.pipeline("text-classification")`` once per request, loaded from the same backbone
  directory (one model, no batching, no masking, no audit).

Each is driven by ``c`` concurrent closed-loop clients (asyncio + aiohttp) for ``--duration`` seconds
or ``--max-requests`` requests, whichever ends first, after a warm-up. It prints p50/p95/p99
latency and throughput per server and concurrency (and writes them as JSON with ``--out``).
The client shares the machine with the servers: on a small box its own CPU use is part of the picture.

``--model`` is a bundle directory, or a registry reference (``models:/findial-nlu@champion``,
resolved with ``--tracking-uri``, default ``sqlite:///$FINDIAL_HOME/mlflow.db``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_bundle(ref: str, tracking_uri: str | None, workdir: Path) -> Path:
    if not ref.startswith("models:/"):
        return Path(ref)
    from findial import registry, tracking

    home = os.environ.get("FINDIAL_HOME", "findial-runs")
    tracking.configure(tracking_uri or f"sqlite:///{os.path.abspath(home)}/mlflow.db", workdir / "artifacts")
    bundle, _ = registry.resolve_model(ref, workdir / "download")
    return bundle


def backbone_dir(bundle: Path) -> Path:
    from findial.training.package import read_meta, resolve_backbone

    return resolve_backbone(read_meta(bundle / "intent")["backbone"])


# ------------------------------------------------------------------------------------------- baseline
def baseline_app(backbone: str, torch_threads: int):
    """A naive service: one text-classification pipeline, called once per request."""
    import torch
    import transformers
    from fastapi import Body, FastAPI

    torch.set_num_threads(torch_threads)
    transformers.logging.set_verbosity_error()
    pipe = transformers.pipeline("text-classification", model=backbone, tokenizer=backbone, device=-1)
    app = FastAPI()

    @app.post("/classify")
    def classify(text: str = Body(..., embed=True)):  # a plain def: FastAPI runs it in its thread pool
        return pipe(text)[0]

    @app.get("/readyz")
    def ready():
        return {"ready": True}

    return app


def serve_baseline(args) -> None:
    import uvicorn

    uvicorn.run(baseline_app(args.backbone, args.torch_threads), host="127.0.0.1", port=args.port, log_level="warning")


# ------------------------------------------------------------------------------------------- load
async def drive(url: str, concurrency: int, duration: float, max_requests: int, warmup: int) -> dict:
    """``concurrency`` closed-loop clients (aiohttp: light on the CPU the servers need) for a bounded run."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        for i in range(warmup):
            async with client.post(url, json={"text": TEXTS[i % len(TEXTS)]}) as r:
                r.raise_for_status()
                await r.read()
        latencies: list[float] = []
        counts = {"issued": 0, "errors": 0}
        start = time.perf_counter()
        deadline = start + duration

        async def worker(k: int):
            while time.perf_counter() < deadline and counts["issued"] < max_requests:
                counts["issued"] += 1
                text = TEXTS[(counts["issued"] + k) % len(TEXTS)]
                t0 = time.perf_counter()
                try:
                    async with client.post(url, json={"text": text}) as r:
                        await r.read()
                        ok = r.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    counts["errors"] += 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(round(p / 100 * (len(latencies) - 1))))] * 1000

    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": counts["errors"],
        "seconds": round(elapsed, 2),
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(pct(50), 1),
        "p95_ms": round(pct(95), 1),
        "p99_ms": round(pct(99), 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1),
    }


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"server not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(args) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="findial-bench-"))
    try:
        results = _run(args, work)
    except BaseException:
        print(f"server logs kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return results


def _run(args, work: Path) -> list[dict]:
    bundle = resolve_bundle(args.model, args.tracking_uri, work)
    backbone = backbone_dir(bundle)
    env = {**os.environ, "FINDIAL_HOME": str(work / "home")}
    targets = {}
    if "findial" in args.targets:
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "findial.cli",
            "serve",
            f"port={port}",
            f"model_ref={bundle}",
            "poll_interval_s=0",
            f"torch_threads={args.torch_threads}",
            "log_level=warning",
            *args.override,
        ]
        targets["findial"] = (cmd, f"http://127.0.0.1:{port}", "/v1/understand")
    if "baseline" in args.targets:
        port = free_port()
        cmd = [
            sys.executable,
            __file__,
            "--serve-baseline",
            "--backbone",
            str(backbone),
            "--port",
            str(port),
            "--torch-threads",
            str(args.torch_threads),
        ]
        targets["baseline"] = (cmd, f"http://127.0.0.1:{port}", "/classify")
    results = []
    for name, (cmd, base, path) in targets.items():  # one server at a time: they would share the CPU
        log = work / f"{name}.log"
        proc = start(cmd, env, log)
        try:
            wait_ready(proc, base + "/readyz", log, args.start_timeout)
            for c in args.concurrency:
                res = asyncio.run(drive(base + path, c, args.duration, args.max_requests, args.warmup))
                res["server"] = name
                results.append(res)
                print(
                    f"{name:<9} c={c:<3} {res['requests']:>6} req  {res['errors']:>3} err  "
                    f"p50 {res['p50_ms']:>8.1f} ms  p95 {res['p95_ms']:>8.1f} ms  p99 {res['p99_ms']:>8.1f} ms  "
                    f"{res['throughput_rps']:>7.1f} req/s",
                    flush=True,
                )
        finally:
            stop(proc)
    return results


def table(results: list[dict]) -> str:
    lines = [
        "| server | concurrency | requests | errors | p50 ms | p95 ms | p99 ms | req/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['server']} | {r['concurrency']} | {r['requests']} | {r['errors']} | {r['p50_ms']} | "
            f"{r['p95_ms']} | {r['p99_ms']} | {r['throughput_rps']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="bundle directory or models:/NAME@ALIAS | models:/NAME/VERSION")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    p.add_argument("--max-requests", type=int, default=2000, help="requests per concurrency level at most")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--torch-threads", type=int, default=1, help="the same for both servers")
    p.add_argument("--override", nargs="*", default=[], help="findial serve overrides, e.g. batching.max_wait_ms=5")
    p.add_argument("--targets", nargs="+", default=["findial", "baseline"], choices=["findial", "baseline"])
    p.add_argument("--start-timeout", type=float, default=300)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backbone", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_baseline:
        return serve_baseline(args)
    if not args.model:
        p.error("--model is required")
    results = run(args)
    print("\n" + table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
