#!/usr/bin/env bash
# Build a separate virtual environment with verl 0.9 for tests/integration/test_verl.py.
#
# verl 0.9 pins transformers < 5.11, which the main environment does not satisfy, so verl lives
# in its own venv. CI does not build it; the verl tests skip when it is absent.
#
#   bash scripts/verl_venv.sh [VENV_DIR]        # default /tmp/verl-venv
#   ENTROPY_RL_VERL_PYTHON=/tmp/verl-venv/bin/python pytest -m slow tests/integration/test_verl.py
set -euo pipefail
VENV="${1:-/tmp/verl-venv}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
# torch first, pinned (a bare `torch` may pull a CUDA build); then verl with its own pins.
"$PIP" install -q "torch==2.13.0"
"$PIP" install -q "verl==0.9.*" pytest
# entropy-rl itself without dependencies (torch, numpy and pyyaml are already there via verl).
"$PIP" install -q --no-deps -e "$ROOT"
"$VENV/bin/python" -c "import verl, torch, transformers; print('verl', verl.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
