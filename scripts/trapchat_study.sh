#!/usr/bin/env bash
# The exploration trap on a pretrained chat model: `trap-chat` on SmolLM2-135M-Instruct, PPO
# against the narrow clip, the rate controller on the clip (its entropy schedule set for
# SmolLM2: linear 1.9 -> 0.5 nats), DAPO, PPO at a tenth of the learning rate and PPO with one
# on-policy update per rollout (1 epoch x 1 mini-batch), 4 seeds x 100 RL steps, one
# `entropy-rl compare` table with permutation verdicts against PPO
# (docs/experiments.md#trap-chat).
#
#   scripts/trapchat_study.sh [--out DIR] [more compare options]
#
# Needs the model: `entropy-rl get-model smollm2 --out models/smollm2` (extra gguf). Settings:
# 4 prompts x 8 samples per step, lr 1e-5, 2 epochs x 2 mini-batches (so the clip can bind),
# the held-out evaluation (16 samples per prompt, the exact P mass) at the start and at the end.
# 24 runs, 2 at a time on 1 thread each, seed by seed: about 15-30 s per step on a 2-core CPU
# (ppo-1x1 ~6 s), ~7 hours. A finished run is reused and an interrupted one resumed when the
# command is repeated; more settings are more `--variant` arguments. A larger `--steps`
# extends the finished runs of constant-schedule settings; rate-clip's schedule spans the run,
# so its runs refuse the change (start those again under another --out).
set -euo pipefail
cd "$(dirname "$0")/.."
exec entropy-rl compare --task trap-chat --seeds 4 --steps 100 --jobs 2 --out runs/trapchat \
  --set model.path=models/smollm2 --set data.chat_template=true \
  --set rollout.prompts_per_step=4 --set rollout.group_size=8 --set algo.lr=1e-5 \
  --set algo.ppo_epochs=2 --set algo.mini_batches=2 --set eval.samples=16 --set eval.every=50 \
  --variant ppo ppo --variant narrow-clip narrow-clip \
  --variant rate-clip rate-clip control.controller_kwargs.schedule.start=1.9 \
  control.controller_kwargs.schedule.end=0.5 \
  --variant dapo dapo --variant ppo-lr1e-6 ppo algo.lr=1e-6 \
  --variant ppo-1x1 ppo algo.ppo_epochs=1 algo.mini_batches=1 "$@"
