"""mypy ([tool.mypy] in pyproject.toml, run by scripts/typecheck.py on the installed layout) finds no errors."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_mypy_passes():
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[test]')")
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "typecheck.py")], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
