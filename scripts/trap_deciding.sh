#!/usr/bin/env bash
# The trap study's deciding rows (docs/experiments.md#trap-step-size): does narrow-clip keep the
# rare answer alive through its per-token bound, or only because it takes a smaller step?
#
#   scripts/trap_deciding.sh [--seeds 4] [--no-train] [more compare options]
#   python scripts/trap_deciding.py runs/trap --vs ppo --vs narrow-clip
#
# The study's settings (scripts/trap_study.sh: 16 prompts x 16 samples, lr 2e-4, 4 epochs x 2
# mini-batches, 150 steps, the held-out evaluation at the start and on the final checkpoint)
# for PPO and narrow-clip, and PPO with a smaller step: lr / 3, lr / 10, one epoch x one
# mini-batch (a single on-policy update per rollout), and lr 1.1e-4, where PPO's mean per-step
# KL(pi_old || pi_theta) matches narrow-clip's. That learning rate was interpolated in log-log
# between PPO's measured mean KL at lr 2e-4 (0.0322, 4 seeds) and at 6.67e-5 (0.0056, 2 seeds)
# for narrow-clip's 0.0128 (4 seeds): `python scripts/trap_deciding.py --match narrow-clip
# --lr ppo=2e-4 --lr ppo-lr6.7e-5=6.67e-5` printed 1.12e-4.
#
# Runs go in runs/trap beside the study's (the ppo runs are the same), one at a time, 1 torch
# thread each: about 5 minutes a run on one core (under 2 for ppo-1x1, whose update is a
# quarter of the work). --metric keeps the table to four verdict columns (final entropy, pass@k,
# distinct, the exact P mass), so Holm's adjustment counts 4 x 5 = 20 comparisons.
set -euo pipefail
cd "$(dirname "$0")/.."
exec entropy-rl compare --task trap --seeds 6 --steps 150 --jobs 1 --out runs/trap \
  --set rollout.prompts_per_step=16 --set rollout.group_size=16 --set algo.lr=2e-4 \
  --set algo.ppo_epochs=4 --set algo.mini_batches=2 --set eval.samples=128 --set eval.every=150 \
  --metric trap/p_prob_eval \
  --variant ppo ppo \
  --variant narrow-clip narrow-clip \
  --variant ppo-lr6.7e-5 ppo algo.lr=6.67e-5 \
  --variant ppo-lr2e-5 ppo algo.lr=2e-5 \
  --variant ppo-1x1 ppo algo.ppo_epochs=1 algo.mini_batches=1 \
  --variant ppo-kl-matched ppo algo.lr=1.1e-4 "$@"
