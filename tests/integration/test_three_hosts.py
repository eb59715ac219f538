"""The same controller, fed the same metric stream, sets the same clip widths in our trainer,
in TRL's GRPOTrainer and in verl's registered loss.

The preset is ``rate-clip`` (rate controller on both clip bounds, linear target 1.5 -> 0.5
nats over a 10-step run: a scheduled slope of -0.1 nats per step; kp -1.5, ki -2, beta 0.2,
u in [0.02, 0.2], init 0.2). Each host gets the rollout entropy of steps 1..10 under its own
metric name and applies what the controller sets through its own path: our
``Trainer.control()`` into the loss's keyword arguments, ``EntropyCallback`` into
``trainer.epsilon_low`` / ``epsilon_high`` of a real ``GRPOTrainer``, ``VerlEntropyControl``
into the actor config's ``erl_settings`` that ``erl_ppo`` reads at every call. No model is
trained: the stream is fixed, so the trajectories must agree exactly.

Hand-worked (the integral I is clamped to [0, (0.02 - 0.2) / -2] = [0, 0.09]):
    step 1  H 1.50  first value, no rate yet                          u = 0.2 (init)
    step 2  H 1.30  rate -0.2, e = -0.1 + 0.2 = 0.1, I = 0.09          u = 0.2 - 0.15 - 0.18 -> 0.02
    step 3  H 1.25  rate -0.2 + 0.2 (-0.05 + 0.2) = -0.17, e = 0.07    u = -0.085 -> 0.02
    step 4  H 1.22  rate -0.142, e = 0.042                             u -> 0.02
    step 5  H 1.20  rate -0.1176, e = 0.0176                           u -> 0.02
    step 6  H 1.19  rate -0.09608, e = -0.00392, I = 0.08608           u = 0.2 + 0.00588 - 0.17216
                                                                         = 0.03372: it widens
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from entropy_rl.integrations.verl import VerlEntropyControl, make_verl_loss
from entropy_rl.train.config import build_config
from entropy_rl.train.parts import build_controller
from entropy_rl.train.trainer import Trainer

STREAM = (1.50, 1.30, 1.25, 1.22, 1.20, 1.19, 1.05, 0.98, 0.95, 0.93)
STEPS = len(STREAM)
FIRST_SIX = (0.2, 0.02, 0.02, 0.02, 0.02, 0.03372)


def our_trajectory() -> list[tuple[float, float]]:
    """(eps_low, eps_high) the loss gets after each step, in our trainer."""
    cfg = build_config(preset="rate-clip", overrides=[f"run.steps={STEPS}"])
    t = object.__new__(Trainer)  # only what control() reads: no model, no run directory
    t.controller, t.detector = build_controller(cfg), None
    t.loss_kwargs, t.entropy_coef, t.entropy_adv_alpha = dict(cfg.algo.loss_kwargs), 0.0, 0.0
    out = []
    for step, h in enumerate(STREAM, 1):
        t.step = step
        t.control({"entropy/mean": h})
        out.append((t.loss_kwargs["eps_low"], t.loss_kwargs["eps_high"]))
    return out


def trl_trajectory(tmp_path: Path) -> list[tuple[float, float]]:
    """The same in a real TRL GRPOTrainer (tiny model, not trained), through on_log."""
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from transformers import TrainerControl, TrainerState
    from trl import GRPOConfig, GRPOTrainer

    from entropy_rl.integrations.trl import EntropyCallback
    from entropy_rl.tasks.model import build_tiny_model
    from entropy_rl.tasks.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), layers=1, hidden=16, heads=2, kv_heads=1, mlp=32, seed=0)
    args = GRPOConfig(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, num_generations=4,
        max_completion_length=4, max_steps=STEPS, epsilon=0.3, report_to=[], save_strategy="no",
        use_cpu=True, bf16=False,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=args,
        train_dataset=datasets.Dataset.from_dict({"prompt": ["1+1="] * 4}),
        processing_class=tok,
    )
    cb = EntropyCallback(preset="rate-clip", print_events=False).attach(trainer)
    # the preset's clip widths replace GRPOConfig's epsilon 0.3 at attach
    assert (trainer.epsilon_low, trainer.epsilon_high) == (0.2, 0.2)
    state = TrainerState(max_steps=STEPS)
    cb.on_train_begin(args, state, TrainerControl())
    out = []
    for step, h in enumerate(STREAM, 1):
        state.global_step = step
        logs = {"entropy": h, "reward": 0.0}
        cb.on_log(args, state, TrainerControl(), logs=logs)
        assert logs["control/eps_high"] == trainer.epsilon_high  # what it logs is in force
        out.append((trainer.epsilon_low, trainer.epsilon_high))
    return out


def verl_trajectory() -> list[tuple[float, float]]:
    """The same through VerlEntropyControl and erl_ppo: the clip the loss applies is read back
    from the loss itself (one token at ratio 1.05 with A > 0 is clipped iff eps_high < 0.05)."""
    ctl = VerlEntropyControl(preset="rate-clip", total_steps=STEPS, print_events=False)
    actor = SimpleNamespace(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.2,
                            clip_ratio_c=3.0, policy_loss=SimpleNamespace(), global_batch_info={})  # fmt: skip
    loss_fn = make_verl_loss("ppo")
    old = torch.log(torch.tensor([[0.4]]))
    new = torch.log(torch.tensor([[0.42]]))  # ratio 1.05
    out = []
    for step, h in enumerate(STREAM, 1):
        ctl.update(step, {"actor/entropy": h, "critic/score/mean": 0.0})
        ctl.apply_to(actor)  # the worker-side hook
        eps = (actor.erl_settings["eps_low"], actor.erl_settings["eps_high"])
        _, metrics = loss_fn(old, new, torch.ones(1, 1), torch.ones(1, 1), config=actor)
        assert metrics["clip/upper_frac"] == float(eps[1] < 0.05), (step, eps)
        assert (actor.clip_ratio_low, actor.clip_ratio_high) == eps  # verl's own fields agree
        out.append(eps)
    return out


def test_our_trainer_follows_the_hand_worked_trajectory() -> None:
    ours = our_trajectory()
    assert all(lo == hi for lo, hi in ours)  # actuator eps: both bounds are u
    assert [hi for _, hi in ours[:6]] == pytest.approx(FIRST_SIX, abs=1e-12)
    assert len({round(hi, 9) for _, hi in ours}) >= 4  # it moves both ways, not a fixed clip


def test_verl_follows_the_same_trajectory() -> None:
    assert verl_trajectory() == our_trajectory()


def test_trl_follows_the_same_trajectory(tmp_path: Path) -> None:
    assert trl_trajectory(tmp_path) == our_trajectory()


def test_the_trajectory_is_printed_for_the_docs(tmp_path: Path, capsys: Any) -> None:
    """One table of the three hosts (run with -s to see it; docs/integrations.md quotes it)."""
    ours, trl, verl = our_trajectory(), trl_trajectory(tmp_path), verl_trajectory()
    with capsys.disabled():
        print("\nstep  H     ours    TRL     verl")
        for k, h in enumerate(STREAM):
            print(f"{k + 1:>4}  {h:.2f}  {ours[k][1]:.4f}  {trl[k][1]:.4f}  {verl[k][1]:.4f}")
    assert ours == trl == verl
