"""`findial release start|status|promote|rollback|shadow` as a user runs it (subprocesses), on the shipped policy.

The registry and bundles are tests/test_release.py's (v1 steady = champion, v2 hands off, v3 another intent).
TEST-ONLY: v1 and v3 get an evaluation recorded on the policy's `generated-test` set (its bound fingerprint,
passing figures) without running one; v2 has none, so the shipped gates refuse it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_release import NAME, loaded, mlflow_client, registry_home, serving, settings_for, wait_for  # noqa: F401

# in the isolated process with test_release.py: after its servers, an in-process response-model load in a later
# test failed with meta tensors (cause not found; see the marker in pyproject.toml)
pytestmark = pytest.mark.isolated


def findial(home, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "findial.cli", *args],
        capture_output=True,
        text=True,
        cwd=home,
        env={**os.environ, "FINDIAL_HOME": str(home), "MLFLOW_TRACKING_USERNAME": "release-tester"},
        timeout=300,
    )


def test_a_gray_release_through_the_command_line(registry_home, tmp_path):  # noqa: F811
    from findial import audit, registry, tracking
    from findial.policy import load

    home = registry_home
    tracking.configure(f"sqlite:///{home}/mlflow.db", home / "mlartifacts")
    fp = load().eval_sets["nlu"]["generated-test"]
    for v in ("1", "3"):  # TEST-ONLY: recorded, not measured
        registry.record_evaluation(
            NAME, v, "generated-test", {"terminology_f1": 0.95, "multi_turn_accuracy": 0.9}, fp, "run-test"
        )
    client = mlflow_client(home)
    log = home / "audit" / "promotions.jsonl"

    refused = findial(home, "release", "start", "version=2", "eval_set=generated-test", "share=0.1")
    assert refused.returncode == 1, refused.stderr
    assert "REFUSED findial-nlu v2 -> @challenger" in refused.stdout and "terminology_f1: missing" in refused.stderr
    assert "challenger" not in client.get_registered_model(NAME).aliases
    last = audit.records(log)[-1]
    assert last["action"] == "release.start" and last["promoted"] is False and last["user"] == "release-tester"

    for args, message in (
        (["version=999", "eval_set=generated-test"], "has no version 999"),
        (["version=3", "eval_set=generated-test", "share=1.5"], "share: must be within [0, 1]"),
        (["version=3", "eval_set=generated-test", "user=someone"], "unrecognized arguments: --user"),
    ):
        bad = findial(home, "release", "start", *args)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr

    started = findial(
        home,
        "release",
        "start",
        "--version",
        "3",
        "--eval-set",
        "generated-test",
        "--share",
        "0.5",
        "--min-sample",
        "20",
    )
    assert started.returncode == 0, started.stderr
    assert "STARTED findial-nlu v3 -> @challenger at 50% of sessions (champion v1)" in started.stdout
    assert client.get_registered_model(NAME).aliases["challenger"] == 3
    tag = json.loads(client.get_registered_model(NAME).tags["findial.release"])
    assert tag["share"] == 0.5 and tag["auto_rollback"]["min_sample"] == 20 and tag["started_by"] == "release-tester"

    settings = settings_for(home, tmp_path, "cli")
    with serving(settings) as http:
        wait_for(lambda: loaded(http, "challenger") == "3", 60, "the challenger was not loaded")
        for i in range(120):
            assert http.post(f"/v1/dialogue/cli-{i}", json={"text": "我的信用卡丢了"}).status_code == 200
    audit_file = settings.audit.path

    status = findial(home, "release", "status", "--audit", audit_file, "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    turns = {v: f["turns"] for v, f in report["versions"].items()}
    assert set(turns) == {"1", "3"} and sum(turns.values()) == 120 and min(turns.values()) >= 20
    assert report["versions"]["3"]["role"] == "challenger" and report["versions"]["1"]["handoff_rate"] == 0.0
    cmp = report["comparison"]["handoff_rate"]
    assert cmp["n_champion"] == turns["1"] and cmp["n_challenger"] == turns["3"] and cmp["p_value"] == 1.0
    assert report["auto_rollback"]["decided"] and report["auto_rollback"]["failures"] == []
    text = findial(home, "release", "status", "--audit", audit_file).stdout
    assert "challenger v3 at 50%" in text and "two-proportion z-test" in text and "p=" in text

    promoted = findial(home, "release", "promote", "--eval-set", "generated-test", "--audit", audit_file)
    assert promoted.returncode == 0, promoted.stderr
    assert (
        "PROMOTED findial-nlu v3 -> @champion (was v1)" in promoted.stdout
        and "gray.challenger_turns" in promoted.stdout
    )
    aliases = client.get_registered_model(NAME).aliases
    assert aliases["champion"] == 3 and "challenger" not in aliases

    nothing = findial(home, "release", "rollback")
    assert nothing.returncode == 0 and "nothing to roll back" in nothing.stdout
    assert findial(home, "release", "start", "version=1", "eval_set=generated-test", "share=0.2").returncode == 0
    rolled = findial(home, "release", "rollback", "--reason", "looked worse")
    assert rolled.returncode == 0 and "ROLLED BACK findial-nlu v1" in rolled.stdout
    assert "challenger" not in client.get_registered_model(NAME).aliases

    actions = [r.get("action") for r in audit.records(log)]
    assert actions[-5:] == ["release.start", "release.start", "release.promote", "release.start", "release.rollback"]
    verify = findial(home, "audit", "verify")
    assert verify.returncode == 0 and "intact" in verify.stdout, verify.stderr
