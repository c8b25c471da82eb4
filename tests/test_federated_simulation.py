"""A real federation on this machine: `findial fed simulate`, Flower's simulation runtime on Ray, 3 branches.

One run covers: FedProx, central DP (client clipping + server noise, budget on the registered version),
a branch that fails in round 2 (the round still completes and is applied), per-round MLflow logging,
the registered bundle with its federation tags and gate metrics, no planted PII in anything written
or printed, a checkpoint per round and a resume from round 1 (same state, same MLflow run, epsilon composed
on), and no Ray process left behind.
"""

import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from test_federated import CARD, ID_NUMBER, PHONE, planted_corpus

BRANCHES = ["shanghai", "beijing", "shenzhen"]


def _processes_with(marker: str) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker.encode() in (p / "environ").read_bytes():
                    found.append(int(p.name))
            except OSError:
                pass
    return found


def test_simulation_of_three_branches_survives_a_dropped_branch(tmp_path):
    corpus = planted_corpus(tmp_path, branch="beijing")
    home = tmp_path / "home"
    marker = f"findial-fed-test-{uuid.uuid4().hex}"
    env = {**os.environ, "FINDIAL_HOME": str(home), "FINDIAL_TEST_MARKER": marker}
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "findial.cli",
            "fed",
            "simulate",
            f"branches={','.join(BRANCHES)}",
            "rounds=2",
            "model=tiny",
            "data=custom",
            f"data.train_file={corpus}",
            f"data.val_file={corpus}",
            "federated=fedprox",
            "privacy.mode=central",
            "privacy.noise_multiplier=0.5",
            "privacy.clipping_norm=5.0",
            "+faults.shenzhen=2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=tmp_path,
    )
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"simulation took {seconds:.0f}s")

    summary = json.loads(next(home.glob("runs/*-federated/federation.json")).read_text(encoding="utf-8"))
    r1, r2 = summary["rounds_report"]
    assert sorted(r1["participants"]) == sorted(BRANCHES) and r1["failed"] == [] and r1["applied"]
    assert sorted(r2["participants"]) == ["beijing", "shanghai"] and r2["failed"] == ["shenzhen"] and r2["applied"]
    assert r2["bytes_received"] < r1["bytes_received"] and r1["bytes_sent"] == r2["bytes_sent"] > 0
    assert set(r2["branch_eval"]) == set(BRANCHES)  # the dropped branch is back for evaluation
    privacy = summary["privacy"]
    from findial.federated.privacy import gdp_epsilon

    assert privacy["mode"] == "central" and privacy["releases"] == 2
    # noise 0.5 * C / 2 (min_train_clients) on means of 3, then 2 replies of sensitivity 2C/n: z_eff = 0.5 * n / 4
    assert privacy["noise_multipliers_accounted"] == [0.375, 0.25]
    assert privacy["epsilon"] == gdp_epsilon(math.sqrt(1 / 0.375**2 + 1 / 0.25**2), 1e-5)

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home}/mlflow.db", registry_uri=f"sqlite:///{home}/mlflow.db")
    version = summary["registered_version"]
    tags = client.get_model_version("findial-nlu", version).tags
    assert tags["findial.federated.rounds"] == "2" and tags["findial.federated.strategy"] == "fedprox"
    assert tags["findial.federated.branches"] == ",".join(BRANCHES)
    assert tags["findial.privacy.mode"] == "central"
    assert float(tags["findial.privacy.epsilon"]) == privacy["epsilon"] and float(tags["findial.privacy.delta"]) == 1e-5
    assert "eval.custom-test.terminology_f1" in tags and "eval.custom-test.multi_turn_accuracy" in tags
    run_id = summary["mlflow_run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "round.bytes_sent")] == [1, 2]
    assert [m.value for m in client.get_metric_history(run_id, "round.branches_failed")] == [0.0, 1.0]
    assert len(client.get_metric_history(run_id, "branch.shenzhen.intent_accuracy")) == 2
    assert len(client.get_metric_history(run_id, "global.intent_accuracy")) == 2
    assert len(client.get_metric_history(run_id, "privacy.epsilon")) == 2

    # the federated bundle goes through the same promotion gates
    promote = subprocess.run(
        [sys.executable, "-m", "findial.cli", "promote", f"version={version}", "eval_set=custom-test"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert "terminology_f1" in promote.stdout and ("REFUSED" in promote.stdout or "PROMOTED" in promote.stdout)

    # a checkpoint per round; resuming from round 1 redoes round 2 on the same state, in the same MLflow run
    (fed_dir,) = home.glob("runs/*-federated")
    assert (fed_dir / "checkpoints" / "latest").read_text().strip() == "round-002"
    assert {p.name for p in (fed_dir / "checkpoints").iterdir()} == {"round-001", "round-002", "latest"}
    resumed = subprocess.run(
        [*proc.args, f"resume={fed_dir / 'checkpoints' / 'round-001'}", "registry.register=false"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    again = json.loads(
        next(p for p in home.glob("runs/*-federated/federation.json") if p.parent != fed_dir).read_text()
    )
    assert again["mlflow_run_id"] == run_id and again["rounds_report"][0] == r1
    # the dropped branch fails again; a node that never replied since the resume is known by its node id only
    resumed_r2 = again["rounds_report"][1]
    assert resumed_r2["round"] == 2 and sorted(resumed_r2["participants"]) == ["beijing", "shanghai"]
    assert len(resumed_r2["failed"]) == 1 and resumed_r2["applied"]
    assert again["privacy"]["noise_multipliers_accounted"] == [0.375, 0.25]  # composed on, not restarted
    assert again["privacy"]["epsilon"] == privacy["epsilon"]
    assert [m.step for m in client.get_metric_history(run_id, "round.bytes_sent")] == [1, 2, 2]
    # another aggregation than the checkpoint's is refused, naming the key
    other = subprocess.run(
        [*proc.args, "federated=fedavg", f"resume={fed_dir}"], capture_output=True, text=True, env=env, timeout=300
    )
    assert other.returncode != 0 and "other settings for aggregation" in other.stderr

    console = proc.stdout + proc.stderr + resumed.stdout + resumed.stderr
    files = [p for p in home.rglob("*") if p.is_file()]
    leaks = [str(p) for p in files if any(s.encode() in p.read_bytes() for s in (ID_NUMBER[:17], CARD, PHONE))]
    assert leaks == [] and not any(s in console for s in (ID_NUMBER[:17], CARD, PHONE))

    deadline = time.monotonic() + 30
    while (left := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == [], f"processes left behind: {left}"
