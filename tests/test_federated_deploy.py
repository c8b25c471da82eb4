"""scripts/fed_deploy.sh from a clean shell: SuperLink + 3 SuperNodes with TLS and node authentication,
a branch killed mid-run, a completed federation, and nothing left running or lying around afterwards."""

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from test_federated import MINI

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.slow
def test_deployment_script_runs_a_federation_and_cleans_up(tmp_path):
    marker = f"findial-deploy-test-{uuid.uuid4().hex}"
    user_home, tmp, runs = tmp_path / "user", tmp_path / "tmp", tmp_path / "runs"
    for d in (user_home, tmp):
        d.mkdir()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(user_home),
        "TMPDIR": str(tmp),
        "FINDIAL_HOME": str(runs),
        "BRANCHES": "shanghai,beijing,shenzhen",
        "DROP_BRANCH": "shenzhen",
        "DROP_ROUND": "2",
        "FINDIAL_TEST_MARKER": marker,
        "FED_TIMEOUT": "1500",
        # a branch's data and privacy are its own (node config); data.* in the overrides is the server's
        **{f"NODE_CONFIG_{b}": f"train-file='{MINI}' val-file='{MINI}'" for b in ("shanghai", "shenzhen")},
        "NODE_CONFIG_beijing": f"train-file='{MINI}' val-file='{MINI}' privacy-mode='local' privacy-local-epsilon=50.0",
    }
    proc = subprocess.run(
        [
            "bash",
            str(ROOT / "scripts" / "fed_deploy.sh"),
            "model=tiny",
            "data=custom",
            f"data.train_file={MINI}",
            f"data.val_file={MINI}",
            "rounds=2",
            "timeouts.round_s=120",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "TLS, SuperNode authentication on" in proc.stdout
    assert "drill: stopping SuperNode shenzhen" in proc.stderr

    summary = json.loads(next(runs.glob("federated/*/federation.json")).read_text(encoding="utf-8"))
    r1, r2 = summary["rounds_report"]
    assert sorted(r1["participants"]) == ["beijing", "shanghai", "shenzhen"] and r1["applied"]
    assert "shenzhen" not in r2["participants"] and r2["applied"]  # the run survived the lost branch
    assert summary["registered_version"] and (runs / "mlflow.db").is_file()

    deadline = time.monotonic() + 30
    while (left := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(1)
    assert left == [], f"processes left running: {left}"
    assert not list(tmp.glob("findial-fed-*"))  # its certificates, keys, app and logs are removed
    assert not (user_home / ".flwr").exists()  # Flower's state lived in the run's own FLWR_HOME
