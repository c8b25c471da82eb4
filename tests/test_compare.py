"""`findial compare` on two tiny models registered by real `findial run` jobs in a temporary MLflow store."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

MINI = Path(__file__).parent / "fixtures" / "mini.jsonl"
GATES = {"terminology_f1": 0.90, "multi_turn_accuracy": 0.85}


def findial(*args, home: Path):
    return subprocess.run(
        [sys.executable, "-m", "findial.cli", *args],
        capture_output=True,
        text=True,
        cwd=home.parent,
        env={**os.environ, "FINDIAL_HOME": str(home)},
        timeout=900,
    )


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """Two versions (seeds 1 and 2) from one multirun, v1 made champion, then `findial compare` with defaults."""
    from mlflow import MlflowClient

    from findial import tracking
    from findial.cli import main

    home = tmp_path_factory.mktemp("compare") / "home"
    run = findial(
        "run",
        "-m",
        "seed=1,2",
        "experiment=smoke",
        "registry.response_model_name=null",  # the grounded KB responder step: covered by tests/test_serving.py
        "data=custom",
        f"data.train_file={MINI}",
        f"data.val_file={MINI}",
        f"data.test_file={MINI}",
        home=home,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "registered findial-nlu v1" in run.stdout and "registered findial-nlu v2" in run.stdout
    tracking.configure(f"sqlite:///{home}/mlflow.db", home / "mlartifacts")
    client = MlflowClient()
    client.set_registered_model_alias("findial-nlu", "champion", "1")
    n_eval_runs = len(client.search_runs([tracking.experiment_id("findial-eval")]))
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):  # the console command, in-process (saves a start-up)
        main(["compare", f"data_file={MINI}", f"paths.home={home}"])
    (run_dir,) = (home / "compare").iterdir()
    return {
        "home": home,
        "stdout": stdout.getvalue(),
        "dir": run_dir,
        "client": client,
        "n_eval_runs": n_eval_runs,
        "json": json.loads((run_dir / "compare.json").read_text(encoding="utf-8")),
    }


def _version_tags(client, version: str) -> dict[str, float]:
    tags = client.get_model_version("findial-nlu", version).tags
    prefix = "eval.custom-test."
    return {
        k[len(prefix) :]: float(v)
        for k, v in tags.items()
        if k.startswith(prefix) and "fingerprint" not in k and not k.endswith("run_id")
    }


def test_defaults_compare_newest_version_with_champion(compared):
    c = compared["json"]
    assert c["a"]["model"] == "models:/findial-nlu/2" and c["a"]["registered"] == ["findial-nlu", "2"]
    assert c["b"]["model"] == "models:/findial-nlu@champion" and c["b"]["registered"] == ["findial-nlu", "1"]
    assert c["same_data"] is True and c["delta"] == "a - b"


def test_values_reproduce_each_versions_own_evaluation(compared):
    """The same prediction path as `findial eval`: the pipeline's recorded metrics come out again."""
    rows = {r["metric"]: r for r in compared["json"]["metrics"]}
    recorded = {"a": _version_tags(compared["client"], "2"), "b": _version_tags(compared["client"], "1")}
    for name, row in rows.items():
        for side in ("a", "b"):
            if row[side] is None:
                assert name not in recorded[side]
            else:
                assert row[side] == pytest.approx(recorded[side][name]), (name, side)
        if row["a"] is not None and row["b"] is not None:
            assert row["delta"] == pytest.approx(row["a"] - row["b"])
    assert list(rows)[:2] == list(GATES)  # gate metrics first, each with its bound and pass/fail per side
    for gate, minimum in GATES.items():
        assert rows[gate]["bound"] == f">= {minimum}"
        for side in ("a", "b"):
            assert rows[gate][f"{side}_passed"] == (rows[gate][side] is not None and rows[gate][side] >= minimum)
    # different seeds, different models: the comparison is not comparing a model with itself
    assert any(r["delta"] for r in rows.values() if r["delta"] is not None)
    assert set(compared["json"]["breakdowns"]) == {"lang", "branch"}


def test_printed_table_is_side_by_side_with_deltas_and_gates(compared):
    out = compared["stdout"]
    assert re.search(r"^metric\s+a: findial-nlu v2\s+b: findial-nlu v1\s+delta \(a-b\)\s+gate", out, re.M)
    for r in compared["json"]["metrics"]:
        line = next(line for line in out.splitlines() if line.startswith(r["metric"] + " "))
        if isinstance(r["delta"], float):
            assert f"{r['delta']:+.4f}" in line
        if "bound" in r:
            verdicts = re.findall(r"\b(pass|FAIL|missing)\b", line)
            assert verdicts == [
                ("pass" if r["a_passed"] else "FAIL") if r["a"] is not None else "missing",
                ("pass" if r["b_passed"] else "FAIL") if r["b"] is not None else "missing",
            ]
            assert r["bound"] in line
    assert "all gates pass: a no, b no" in out  # tiny random models fail the gates


def test_files_and_one_mlflow_run_without_double_logging(compared):
    d, client = compared["dir"], compared["client"]
    from findial import tracking

    for name in (
        "compare.json",
        "compare.md",
        "compare.html",
        "a/report.html",
        "b/report.html",
        "a/intent_confusion.png",
        "b/confidence_histogram.png",
    ):
        assert (d / name).is_file(), name
    html = (d / "compare.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
    assert "terminology_f1" in html and "delta (a - b)" in html
    md = (d / "compare.md").read_text(encoding="utf-8")
    assert "| terminology_f1 |" in md and "## By lang" in md
    (run,) = client.search_runs([tracking.experiment_id("findial-compare")])
    rows = {r["metric"]: r for r in compared["json"]["metrics"]}
    assert run.data.metrics["delta.emotion_accuracy"] == pytest.approx(rows["emotion_accuracy"]["delta"])
    assert run.data.metrics["a.intent_accuracy"] == pytest.approx(rows["intent_accuracy"]["a"])
    assert (
        run.data.tags["findial.a.version"] == "findial-nlu/2" and run.data.tags["findial.b.version"] == "findial-nlu/1"
    )
    root = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"compare.json", "compare.md", "compare.html", "a", "b"} <= root
    assert {f.path for f in client.list_artifacts(run.info.run_id, "a")} >= {"a/report.html", "a/intent_confusion.png"}
    # no extra findial-eval runs and no eval.* tags for the comparison's data set name
    assert len(client.search_runs([tracking.experiment_id("findial-eval")])) == compared["n_eval_runs"] == 2
    assert not [k for k in client.get_model_version("findial-nlu", "2").tags if k.startswith("eval.mini.")]


def test_eval_runs_log_html_report_and_plots(compared):
    """`findial run`'s evaluation step logs report.html and the PNGs with the other report files."""
    from findial import tracking

    client = compared["client"]
    for run in client.search_runs([tracking.experiment_id("findial-eval")]):
        logged = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
        assert {
            "report/report.json",
            "report/report.md",
            "report/errors.jsonl",
            "report/report.html",
            "report/intent_confusion.png",
            "report/confidence_histogram.png",
        } <= logged
        assert any(k.startswith("by_lang.zh.") for k in run.data.metrics)
        assert any(k.startswith("by_branch.shanghai.") for k in run.data.metrics)


def test_unknown_alias_fails_before_predicting(compared, tmp_path):
    from findial.evaluation.compare import compare

    with pytest.raises(ValueError, match=r"b=models:/findial-nlu@nope: no such registered model version or alias"):
        compare("models:/findial-nlu/2", "models:/findial-nlu@nope", MINI, GATES, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_eval_refuses_another_file_under_the_gated_set_name(compared, capsys):
    """`findial eval data_file=my_own.jsonl eval_set=bundled-test` must not overwrite the version's real evaluation."""
    from findial.cli import main

    client = compared["client"]
    before = client.get_model_version("findial-nlu", "1").tags
    with pytest.raises(SystemExit) as info:
        main(
            [
                "eval",
                "model_ref=models:/findial-nlu/1",
                f"data_file={MINI}",
                "eval_set=bundled-test",
                f"paths.home={compared['home']}",
                "device=cpu",
            ]
        )
    assert "binds it to data fingerprint" in str(info.value) and "nothing was recorded" in str(info.value)
    assert client.get_model_version("findial-nlu", "1").tags == before
