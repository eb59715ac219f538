#!/usr/bin/env bash
# The exploration-trap study: every entropy lever on the `trap` task, 6 seeds x 150 RL steps each,
# one `entropy-rl compare` table with statistical verdicts against PPO (docs/experiments.md).
#
#   scripts/trap_study.sh [--out DIR] [more compare options]
#
# 11 settings x 6 seeds = 66 runs of the built-in ~1M-parameter model, 1 thread each, 2 at a time
# (--jobs 2): about 66 x 150 x 1.3 s / 2 = 1.8 hours on an idle 2-core machine. A finished run is
# reused and an interrupted one resumed from its last checkpoint when the command is repeated,
# so the study can be run in several sittings. Settings: 16 prompts x 16 samples per step, lr
# 2e-4, 4 epochs x 2 mini-batches; the held-out evaluation (128 samples per prompt, the exact P
# mass) at the start and on the final checkpoint. Runs go in the order of the settings below
# (PPO, the reference, first); `--seeds 4` first, then the full command, gets every setting's
# first four seeds before any sixth.
set -euo pipefail
cd "$(dirname "$0")/.."
exec entropy-rl compare --task trap --seeds 6 --steps 150 --jobs 2 --out runs/trap \
  --set rollout.prompts_per_step=16 --set rollout.group_size=16 --set algo.lr=2e-4 \
  --set algo.ppo_epochs=4 --set algo.mini_batches=2 --set eval.samples=128 --set eval.every=150 \
  --variant ppo ppo \
  --variant clip0.02 ppo algo.loss_kwargs.eps_low=0.02 algo.loss_kwargs.eps_high=0.02 \
  --variant target-clip target-clip control.controller_kwargs.schedule.start=1.4 \
  control.controller_kwargs.schedule.end=0.8 \
  --variant rate-clip rate-clip control.controller_kwargs.schedule.kind=cosine \
  control.controller_kwargs.schedule.start=1.4 control.controller_kwargs.schedule.end=0.8 \
  --variant clip-low clip-low --variant dapo dapo \
  --variant clip0.05 ppo algo.loss_kwargs.eps_low=0.05 algo.loss_kwargs.eps_high=0.05 \
  --variant bonus0.02 ppo algo.entropy_coef=0.02 \
  --variant entropic entropic --variant w-reinforce w-reinforce --variant unclipped unclipped "$@"
