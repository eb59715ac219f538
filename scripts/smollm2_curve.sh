#!/usr/bin/env bash
# A real learning curve: SmolLM2-135M-Instruct on `word_problems` level 0 ("What is 7 + 12?"),
# the `small-instruct` preset exactly as README.md runs it (PPO's loss with DAPO's clip 0.2 /
# 0.28, 8 prompts x 4 samples of <= 32 new tokens, lr 5e-6, one epoch of 2 mini-batches, 30
# steps, held-out avg@4 and pass@4 over 64 problems every 10 steps) against the same with the
# trap study's narrow clip (0.02 both ways), 3 seeds each, one `entropy-rl compare` table
# (docs/experiments.md#smollm2-curve).
#
#   scripts/smollm2_curve.sh [--out DIR] [more compare options]
#
# Needs the model: `entropy-rl get-model smollm2 --out models/smollm2` (extra gguf). 6 runs, 2 at
# a time on 1 thread each (seed by seed, so a study stopped part-way stays balanced); a
# finished run is reused and an interrupted one resumed when the command is repeated.
set -euo pipefail
cd "$(dirname "$0")/.."
exec entropy-rl compare --task word_problems --seeds 3 --steps 30 --jobs 2 --out runs/smollm2_curve \
  --set model.path=models/smollm2 --set 'data.task_kwargs={level: 0}' \
  --variant small-instruct small-instruct \
  --variant narrow-clip small-instruct algo.loss_kwargs.eps_low=0.02 algo.loss_kwargs.eps_high=0.02 \
  --metric eval/pass@4 "$@"
