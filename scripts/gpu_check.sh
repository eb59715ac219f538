#!/usr/bin/env bash
# GPU check for a bare CUDA machine (torch, transformers, accelerate, triton; no internet):
# the CUDA tests against their references, then the time of one RL step. ~3-5 min on an H100.
#
#   scripts/gpu_check.sh [--model DIR] [other scripts/gpu_check.py options]
#
# With pytest installed it runs `pytest -m cuda` on tests/**/test_*cuda*.py, else the same checks
# through scripts/gpu_check.py; the timing always comes from scripts/gpu_check.py. The output
# also goes to $GPU_CHECK_LOG (default gpu_check.log). Without CUDA it says so and exits 0.
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD/src:$PWD/tests/integration${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"
LOG="${GPU_CHECK_LOG:-gpu_check.log}"
{
  status=0
  if "$PY" -c "import pytest, torch; assert torch.cuda.is_available()" 2>/dev/null; then
    mapfile -t files < <(find tests -name 'test_*cuda*.py' | sort)
    timeout 300 "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider "${files[@]}" || status=1
    timeout 300 "$PY" scripts/gpu_check.py --no-checks "$@" || status=1
  else
    timeout 540 "$PY" scripts/gpu_check.py "$@" || status=1
  fi
  echo "gpu_check.sh: exit $status"
  exit $status
} 2>&1 | tee "$LOG"
