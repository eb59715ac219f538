"""TRL integration, for real: a few GRPOTrainer steps on CPU with a tiny local model.

Skipped when TRL is not installed (``pip install 'entropy-rl[trl]'``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from entropy_rl.control.controllers import PIEntropyController  # noqa: E402
from entropy_rl.integrations.trl import EntropyCallback, EntropyGRPOTrainer  # noqa: E402
from entropy_rl.tasks.model import build_tiny_model  # noqa: E402
from entropy_rl.tasks.tokenizer import build_char_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny")
    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), layers=1, hidden=32, heads=2, kv_heads=1, mlp=64, seed=0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def odd_digit_reward(completions: list[str], **kwargs: Any) -> list[float]:
    """Fraction of odd digits in the completion: a dense reward with spread within a group."""
    return [sum(c.count(d) for d in "13579") / max(len(c), 1) for c in completions]


def make_args(out: Path, **kw: Any) -> GRPOConfig:
    base = {
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 6,
        "max_steps": 4,
        "num_iterations": 2,  # the 2nd pass over a rollout is off-policy: ratios != 1
        "logging_steps": 1,
        "learning_rate": 1e-2,
        "epsilon": 0.2,
        "epsilon_high": 0.28,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "seed": 0,
        "bf16": False,
    }
    return GRPOConfig(**(base | kw))


def dataset() -> Any:
    return datasets.Dataset.from_dict({"prompt": [f"{a}+{b}=" for a in range(4) for b in range(4)]})


def train(
    model_dir: Path, out: Path, cls: type = GRPOTrainer, args_kw: dict | None = None, **kw: Any
) -> Any:
    torch.set_num_threads(1)
    trainer = cls(
        model=str(model_dir),
        reward_funcs=odd_digit_reward,
        args=make_args(out, **(args_kw or {})),
        train_dataset=dataset(),
        processing_class=build_char_tokenizer(),
        **kw,
    )
    trainer.train()
    return trainer


def params(trainer: Any) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def test_loss_swap_reproduces_trl_dapo_and_changes_the_update(
    model_dir: Path, tmp_path: Path
) -> None:
    ref = train(model_dir, tmp_path / "dapo", args_kw={"loss_type": "dapo"})
    ppo = train(model_dir, tmp_path / "ppo", EntropyGRPOTrainer, entropy_loss="ppo")
    gpg = train(model_dir, tmp_path / "gpg", EntropyGRPOTrainer, entropy_loss="gpg")

    # Our token-mean PPO with TRL's clip widths is TRL's "dapo" loss: same update, same model.
    p_ref, p_ppo, p_gpg = params(ref), params(ppo), params(gpg)
    assert torch.allclose(p_ppo, p_ref, rtol=0, atol=1e-5), (p_ppo - p_ref).abs().max()
    # GPG (-A log pi, no ratio) differs from PPO once the 2nd iteration is off-policy.
    assert (p_gpg - p_ppo).abs().max() > 1e-3

    hist_ref = [r for r in ref.state.log_history if "entropy" in r]
    hist = [r for r in ppo.state.log_history if "entropy/mean" in r]
    assert len(hist) == len(hist_ref) == 4
    for ours, theirs in zip(hist, hist_ref, strict=True):
        # same tensors, two computations of the token-mean entropy and of the clip fractions
        assert ours["entropy/mean"] == pytest.approx(theirs["entropy"], rel=1e-5)
        assert ours["clip/upper_frac"] == pytest.approx(theirs["clip_ratio/high_mean"], abs=1e-6)
        assert ours["clip/lower_frac"] == pytest.approx(theirs["clip_ratio/low_mean"], abs=1e-6)
        for key in ("cov/logp_adv", "ratio/abs_dev", "entropy/p90", "entropy/surprisal"):
            assert key in ours
    # 1st pass of each rollout is on-policy (ratio exactly 1), the 2nd is not
    assert [r["ratio/abs_dev"] == 0.0 for r in hist] == [True, False, True, False]


def test_callback_maps_logs_acts_and_controls(model_dir: Path, tmp_path: Path) -> None:
    # entropy_floor at 100 nats fires at step 1 (entropy ~2.9 < 100 at 25% < 100% of training)
    # and stays active, so it fires once: eps_high 0.28 -> 0.28 + 0.05 = 0.33.
    # The PI controller (entropy_coef actuator, defaults kp 0.1, ki 0.01, init 0, max 0.05),
    # target 5 nats, entropy ~2.9: u = 0.1 * 2.1 + 0.01 * 2.1 = 0.23 -> clamped to 0.05.
    cb = EntropyCallback(
        tmp_path / "erl",
        detector_kwargs={
            "entropy_floor_value": 100.0,
            "entropy_floor_before_frac": 1.0,
            "entropy_floor_action": "raise_eps_high",
        },
        controller=PIEntropyController(5.0, actuator="entropy_coef"),
        print_events=False,
    )
    trainer = GRPOTrainer(
        model=str(model_dir),
        reward_funcs=odd_digit_reward,
        args=make_args(tmp_path / "out"),
        train_dataset=dataset(),
        processing_class=build_char_tokenizer(),
        callbacks=[cb],
    )
    cb.attach(trainer)
    assert trainer.callback_handler.callbacks[0] is cb
    torch.set_num_threads(1)
    trainer.train()

    assert trainer.epsilon_high == pytest.approx(0.33, abs=1e-12)
    assert trainer.entropy_coef == pytest.approx(0.05, abs=1e-12)
    assert trainer._entropy_bonus_enabled
    events = [json.loads(x) for x in (tmp_path / "erl" / "events.jsonl").read_text().splitlines()]
    assert [(e["step"], e["rule"], e["action"]) for e in events] == [
        (1, "entropy_floor", "raise_eps_high")
    ]
    rows = [json.loads(x) for x in (tmp_path / "erl" / "metrics.jsonl").read_text().splitlines()]
    hist = [r for r in trainer.state.log_history if "entropy" in r]
    assert [r["step"] for r in rows] == [r["step"] for r in hist] == [1, 2, 3, 4]
    for row, h in zip(rows, hist, strict=True):
        assert row["entropy/mean"] == h["entropy"] == h["entropy/mean"]
        assert h["control/eps_high"] == pytest.approx(0.33, abs=1e-12)
        assert h["control/entropy_coef"] == pytest.approx(0.05, abs=1e-12)
        assert h["control/target_entropy"] == 5.0
    # the bonus was on from step 2: TRL logs its entropy_coef once it is enabled
    assert [r.get("entropy_coef") for r in hist][1:] == pytest.approx([0.05] * 3)


def test_callback_needs_attach_for_actions(model_dir: Path, tmp_path: Path) -> None:
    cb = EntropyCallback(detector_kwargs={"entropy_floor_action": "raise_eps_high"})
    trainer = GRPOTrainer(
        model=str(model_dir),
        reward_funcs=odd_digit_reward,
        args=make_args(tmp_path / "out"),
        train_dataset=dataset(),
        processing_class=build_char_tokenizer(),
        callbacks=[cb],
    )
    with pytest.raises(ValueError, match=r"call callback.attach\(trainer\)"):
        trainer.train()


def test_entropy_trainer_argument_errors(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown entropy_loss 'dapo'; available: cispo"):
        EntropyGRPOTrainer(entropy_loss="dapo")
    with pytest.raises(ValueError, match=r"unknown entropy_loss_kwargs \['k'\] for 'kl_cov'"):
        EntropyGRPOTrainer(entropy_loss="kl_cov", entropy_loss_kwargs={"k": 1})
    with pytest.raises(ValueError, match="unknown entropy_loss_agg"):
        EntropyGRPOTrainer(entropy_loss_agg="sum")
    with pytest.raises(ValueError, match="does not implement: top_entropy_quantile < 1"):
        EntropyGRPOTrainer(
            model=str(model_dir),
            reward_funcs=odd_digit_reward,
            args=make_args(tmp_path, top_entropy_quantile=0.5),
            train_dataset=dataset(),
            processing_class=build_char_tokenizer(),
        )


# --------------------------------------------------------------------------- presets and hosts


def grpo_trainer(model_dir: Path, out: Path, cls: type = GRPOTrainer, **kw: Any) -> Any:
    args_kw = kw.pop("args_kw", {})
    return cls(
        model=str(model_dir),
        reward_funcs=odd_digit_reward,
        args=make_args(out, **args_kw),
        train_dataset=dataset(),
        processing_class=build_char_tokenizer(),
        **kw,
    )


def test_preset_refusals_name_the_preset_and_the_trainer(model_dir: Path, tmp_path: Path) -> None:
    cispo = grpo_trainer(model_dir, tmp_path, args_kw={"loss_type": "cispo"})
    with pytest.raises(ValueError) as info:
        EntropyCallback(controller=PIEntropyController(1.0, actuator="eps")).attach(cispo)
    assert str(info.value) == (
        "the controller (PIEntropyController) sets eps_low, eps_high, which TRL's GRPOTrainer"
        " with loss_type='cispo' cannot express (it applies entropy_coef); TRL's cispo caps the"
        " ratio at epsilon_high itself, not at 1 + eps: use loss_type dapo, grpo, dr_grpo or"
        " bnpo, or EntropyGRPOTrainer(entropy_loss='cispo')"
    )
    with pytest.raises(ValueError, match=r"^preset 'rate-clip' uses the PPO loss with token-mean,"
                       r" TRL's loss_type='dapo', but this is TRL's GRPOTrainer with"
                       r" loss_type='cispo'; set GRPOConfig\(loss_type='dapo'\)"):  # fmt: skip
        EntropyCallback(preset="rate-clip").attach(cispo)
    dapo = grpo_trainer(model_dir, tmp_path)  # TRL's default loss_type: dapo
    with pytest.raises(ValueError, match=r"^preset 'clip-cov' uses our 'clip_cov' loss with"
                       r" token-mean, which TRL's GRPOTrainer does not have; build the trainer as"
                       r" EntropyGRPOTrainer\(preset='clip-cov', ...\)$"):  # fmt: skip
        EntropyCallback(preset="clip-cov").attach(dapo)
    with pytest.raises(ValueError, match=r"^preset 'dapo' sets rollout.dynamic_sampling,"
                       r" rollout.overlong_shaping, which TRL's GRPOTrainer"):  # fmt: skip
        EntropyCallback(preset="dapo").attach(dapo)
    with pytest.raises(ValueError, match=r"^preset 'entropic' uses our 'entropic' loss"):
        EntropyCallback(preset="entropic").attach(dapo)
    with pytest.raises(ValueError, match=r"^preset 'dr-grpo' uses the 'dr_grpo' advantage, which"
                       r" .* scale_rewards='group' does not compute; set"
                       r" GRPOConfig\(scale_rewards='none'\)$"):  # fmt: skip
        EntropyCallback(preset="dr-grpo").attach(
            grpo_trainer(model_dir, tmp_path, args_kw={"loss_type": "dr_grpo"})
        )
    with pytest.raises(ValueError, match=r"^preset 'rate-clip' brings its own controller"):
        EntropyCallback(preset="rate-clip", controller=PIEntropyController(1.0))
    with pytest.raises(ValueError, match=r"^preset 'rate-clip' sets the loss: leave out"
                       r" entropy_loss$"):  # fmt: skip
        EntropyGRPOTrainer(preset="rate-clip", entropy_loss="ppo")
    # TRL's own adaptive entropy owns entropy_coef
    adaptive = grpo_trainer(model_dir, tmp_path, args_kw={"use_adaptive_entropy": True})
    with pytest.raises(ValueError, match=r"sets entropy_coef, which TRL's GRPOTrainer with"
                       r" loss_type='dapo' and use_adaptive_entropy on cannot express"):  # fmt: skip
        EntropyCallback(controller=PIEntropyController(1.0)).attach(adaptive)


def test_entropic_preset_in_the_trainer_subclass_moves_the_loss_weights(
    model_dir: Path, tmp_path: Path
) -> None:
    trainer = grpo_trainer(
        model_dir, tmp_path, EntropyGRPOTrainer, preset="entropic",
        callback_kwargs={"print_events": False},
    )  # fmt: skip
    cb = trainer.entropy_callback
    assert cb is not None and trainer.callback_handler.callbacks[0] is cb
    assert (trainer.entropy_loss, trainer.entropy_loss_agg) == ("entropic", "token-mean")
    assert trainer._loss_hparams() == {"eps_low": 0.2, "eps_high": 0.2, "prob_threshold": 0.95}
    assert cb.controller is not None  # built at attach: max_steps is 4
    # EntroPIC, target 1.0, kp 1, ki 0.01: H 1.3 -> e 0.3, I 0.3, alpha 0.303 (tests/unit)
    cb.on_train_begin(trainer.args, trainer.state, trainer.control)
    trainer.state.global_step = 1
    logs = {"entropy": 1.3}
    cb.on_log(trainer.args, trainer.state, trainer.control, logs=logs)
    hp = trainer._loss_hparams()
    assert (hp["pos_weight"], hp["neg_weight"]) == pytest.approx((1.303, 0.697), abs=1e-12)
    assert logs["control/pos_weight"] == pytest.approx(1.303, abs=1e-12)
    assert logs["control/eps_high"] == 0.2 and logs["control/entropic_alpha"] == pytest.approx(
        0.303, abs=1e-12
    )


def test_rate_clip_preset_trains_and_moves_the_clip(model_dir: Path, tmp_path: Path) -> None:
    """A real run: the callback built from the preset sets both clip bounds every step."""
    cb = EntropyCallback(tmp_path / "erl", preset="rate-clip", print_events=False)
    trainer = grpo_trainer(model_dir, tmp_path / "out", callbacks=[cb])
    cb.attach(trainer)
    torch.set_num_threads(1)
    trainer.train()
    rows = [json.loads(x) for x in (tmp_path / "erl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["control/eps_high"] == 0.2  # the first step only records H (init 0.2)
    for r in rows:
        assert r["control/eps_low"] == r["control/eps_high"]
        assert 0.02 <= r["control/eps_high"] <= 0.2
        assert r["control/target_entropy"] == pytest.approx(1.5 - (r["step"] / 4))
    assert (trainer.epsilon_low, trainer.epsilon_high) == (
        rows[-1]["control/eps_low"],
        rows[-1]["control/eps_high"],
    )


def test_preset_controller_kwargs_replace_the_schedule(model_dir: Path, tmp_path: Path) -> None:
    schedule = {"kind": "linear", "start": 1.6, "end": 1.4}
    cb = EntropyCallback(preset="rate-clip", controller_kwargs={"schedule": schedule})
    cb.attach(grpo_trainer(model_dir, tmp_path))  # max_steps 4: target 1.6 - 0.2 * k / 4
    assert cb.controller is not None
    out = cb.controller.update(1, {"entropy/mean": 1.5})
    assert out["control/target_entropy"] == pytest.approx(1.55, abs=1e-12)
    assert out["control/target_rate"] == pytest.approx(-0.05, abs=1e-12)
    with pytest.raises(
        ValueError, match="controller_kwargs goes with a preset that has a controller"
    ):
        EntropyCallback(preset="ppo", controller_kwargs={"schedule": 1.0})
