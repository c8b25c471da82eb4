#!/usr/bin/env bash
# Set up (first time) and run the main job on the embedded defaults:
# train the intent and NER models on the bundled corpus, register them, evaluate, try to promote.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/findial run "$@"
