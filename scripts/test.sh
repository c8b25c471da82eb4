#!/usr/bin/env bash
# Set up (first time) and run the test suite. With CI=true, tests marked `slow` are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python scripts/typecheck.py  # mypy ([tool.mypy] in pyproject.toml): a type error fails the tests
# tests marked `isolated` run in a second pytest process (see the marker in pyproject.toml)
.venv/bin/python -m pytest -q -m "not isolated" "$@"
exec .venv/bin/python -m pytest -q -m isolated "$@"
