"""The linter and formatter configured in pyproject.toml ([tool.ruff]) pass on the whole repository."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_check_passes():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    done = subprocess.run(
        [ruff, "check", "--output-format", "concise", str(REPO)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_ruff_format_is_applied():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    done = subprocess.run([ruff, "format", "--check", str(REPO)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, "run `ruff format .`:\n" + done.stdout[-3000:] + done.stderr[-1000:]
