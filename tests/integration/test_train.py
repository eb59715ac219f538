"""End-to-end training on a 2-layer random model: API, CLI, resume, checkpoints, presets."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from entropy_rl.train import checkpoint as ckpt
from entropy_rl.train.config import ConfigError, available_presets, build_config, load_preset

transformers = pytest.importorskip("transformers")


USER_REWARDS = """
def always_one(prompt, completion, **fields):
    return 1.0


def always_zero(prompt, completion, **fields):
    return 0.0


def boom(prompt, completion, **fields):
    raise RuntimeError("reward server down")
"""


@pytest.fixture(autouse=True)
def user_rewards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user reward module importable as ``user_rewards:fn``."""
    d = tmp_path / "user_code"
    d.mkdir()
    (d / "user_rewards.py").write_text(USER_REWARDS)
    monkeypatch.syspath_prepend(str(d))


def _overrides(model_dir: Path, out: Path, steps: int = 3, **extra: object) -> list[str]:
    base = {
        "model.path": str(model_dir),
        "run.out_dir": str(out),
        "run.steps": steps,
        "run.progress": False,
        "run.save_every": 2,
        "rollout.prompts_per_step": 4,
        "rollout.group_size": 4,
        "algo.micro_batch_size": 8,
        "algo.warmup_steps": 1,
        "algo.lr": 1e-3,
        "eval.every": 2,
        "eval.n_prompts": 4,
        "eval.samples": 2,
        "rollout.dynamic_sampling": False,  # a random model's groups are mostly all-wrong
    }
    base.update(extra)
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in base.items()]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _make_trainer(overrides: list[str], preset: str = "dapo", resume: bool = False):
    from entropy_rl.train.trainer import Trainer

    return Trainer(build_config(preset=preset, overrides=overrides), resume=resume)


def _train(overrides: list[str], preset: str = "dapo", resume: bool = False):
    trainer = _make_trainer(overrides, preset, resume)
    trainer.fit()
    return trainer


REQUIRED = [
    "step", "reward/mean", "acc/train", "entropy/mean", "entropy/surprisal", "clip/upper_frac",
    "clip/lower_frac", "clip/dual_frac", "kl/old_approx", "length/mean", "length/truncated_frac",
    "groups/zero_var_frac", "time/rollout", "time/update", "throughput/tokens_per_s",
]  # fmt: skip


def test_api_train_writes_metrics_config_and_checkpoint(tiny_model_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    trainer = _train(_overrides(tiny_model_dir, out))
    rows = _rows(out)
    train_rows = [r for r in rows if r["step"] >= 1]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    for key in REQUIRED:
        assert key in train_rows[-1], key
    assert "acc/eval" in rows[0] and rows[0]["step"] == 0  # evaluation before training
    assert "acc/eval" in train_rows[1] and "acc/eval" in train_rows[2]
    # entropy is the full-vocabulary entropy: between 0 and log V
    v = len(trainer.tokenizer)
    assert 0.0 < train_rows[0]["entropy/mean"] <= math.log(v) + 1e-4
    assert (out / "config.yaml").is_file() and (out / "samples.jsonl").is_file()
    assert ckpt.latest_checkpoint(out).name == "step_000003"
    # weights moved: the checkpoint differs from the starting model
    start = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    end = transformers.AutoModelForCausalLM.from_pretrained(ckpt.latest_checkpoint(out))
    diffs = [
        (a - b).abs().max().item()
        for a, b in zip(start.parameters(), end.parameters(), strict=True)
    ]
    assert max(diffs) > 1e-5


def test_resume_gives_the_same_metrics_as_an_unbroken_run(tiny_model_dir: Path, tmp_path: Path):
    full = tmp_path / "full"
    _train(_overrides(tiny_model_dir, full, steps=3))
    part = tmp_path / "part"
    _train(_overrides(tiny_model_dir, part, steps=2))
    _train(_overrides(tiny_model_dir, part, steps=3), resume=True)
    a, b = _rows(full), _rows(part)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for k, va in ra.items():
            if k.startswith(("time/", "throughput/")):
                continue
            vb = rb[k]
            if isinstance(va, float) and isinstance(vb, float):
                assert va == pytest.approx(vb, rel=1e-5, abs=1e-7), (ra["step"], k)
            else:
                assert va == vb, (ra["step"], k)


def test_resume_on_another_number_of_processes_warns_and_goes_on(
    tiny_model_dir: Path, tmp_path: Path
):
    out = tmp_path / "run"
    _train(_overrides(tiny_model_dir, out, steps=2))
    latest = ckpt.latest_checkpoint(out)
    assert latest is not None
    state = ckpt.load_state(latest)
    # what 2 processes write: one RNG state per rank
    state["rank_rng"] = [{k: state[k] for k in ("rng", "trainer_rng")}] * 2
    ckpt.save_state(latest, state)
    ckpt.write_manifest(latest)  # an edit by hand: its manifest must follow, or it is damaged
    with pytest.warns(UserWarning, match=r"written by 2 process\(es\), resuming on 1"):
        trainer = _train(_overrides(tiny_model_dir, out, steps=3), resume=True)
    assert trainer.step == 3
    assert [r["step"] for r in _rows(out)][-1] == 3


def test_kill_during_checkpoint_keeps_the_last_good_one(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch
):
    out = tmp_path / "run"
    trainer = _train(_overrides(tiny_model_dir, out, steps=2))
    good = ckpt.latest_checkpoint(out)
    assert good is not None and good.name == "step_000002"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("simulated kill while writing the state")

    monkeypatch.setattr(ckpt, "save_state", killed)
    trainer.step = 3
    with pytest.raises(KeyboardInterrupt):
        trainer.save()
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(out) == good
    assert not list((out / "checkpoints").glob(".tmp-*"))  # no half-written directory left
    state = ckpt.load_state(good)
    assert state["step"] == 2
    transformers.AutoModelForCausalLM.from_pretrained(good)  # loadable


def test_dynamic_sampling_drops_zero_variance_groups(tiny_model_dir: Path, tmp_path: Path):
    # a reward that is 1 for every completion: every group has zero variance, so nothing is kept
    out = tmp_path / "run"
    trainer = _train(
        _overrides(tiny_model_dir, out, steps=1, **{"data.reward": "user_rewards:always_one",
                                                     "rollout.max_sample_rounds": 2,
                                                     "rollout.dynamic_sampling": True,
                                                     "rollout.overlong_shaping": False})
    )  # fmt: skip
    row = _rows(out)[-1]
    assert row["groups/zero_var_frac"] == 1.0
    assert row["groups/sample_rounds"] == 2.0  # it tried again, then hit the cap
    assert row["groups/kept"] == 0.0
    assert row["groups/no_signal_frac"] == 1.0  # the update kept no group: no signal at all
    assert "clip/upper_frac" not in row  # no update without signal
    assert trainer.step == 1
    # no update, so no entropy/mean; the rollout's own entropy is still measured
    assert "entropy/mean" not in row
    assert 0.0 < row["entropy/rollout"] <= math.log(len(trainer.tokenizer)) + 1e-4


def test_rollout_entropy_is_the_updates_entropy_when_every_group_is_kept(
    tiny_model_dir: Path, tmp_path: Path
):
    # no dynamic sampling: the update's batch is the first round, and the KV engine's float32
    # statistics are pi_old's, so the two token means agree to rounding
    out = tmp_path / "run"
    _train(_overrides(tiny_model_dir, out, steps=1, **{"rollout.dynamic_sampling": False}))
    row = _rows(out)[-1]
    assert row["entropy/rollout"] == pytest.approx(row["entropy/mean"], rel=1e-5)
    # every group enters the update: its share without signal is the sampled one
    assert row["groups/no_signal_frac"] == row["groups/zero_var_frac"]


def test_overlong_shaping_penalises_long_completions(tiny_model_dir: Path, tmp_path: Path):
    from entropy_rl.tasks.rewards import overlong_penalty

    # a random model rarely emits EOS: with max_new_tokens 6 and cache 4 most completions are
    # truncated and get reward 0 + penalty -1 (length 6 > 6 - 4 = 2: (2 - 6) / 4 = -1)
    out = tmp_path / "run"
    _train(_overrides(tiny_model_dir, out, steps=1, **{"rollout.max_new_tokens": 6, "rollout.overlong_cache": 4,
                                                       "data.reward": "user_rewards:always_zero"}))  # fmt: skip
    row = _rows(out)[-1]
    assert overlong_penalty(6, max_len=6, cache_len=4) == -1.0
    assert row["reward/mean"] < 0
    assert row["length/truncated_frac"] > 0


def test_reward_error_reports_prompt_and_completion(tiny_model_dir: Path, tmp_path: Path):
    from entropy_rl.train.rollout import RewardError

    with pytest.raises(RewardError, match=r"prompt: .*\n.*completion: "):
        _train(
            _overrides(
                tiny_model_dir, tmp_path / "r", steps=1, **{"data.reward": "user_rewards:boom"}
            )
        )
    out = tmp_path / "z"
    _train(_overrides(tiny_model_dir, out, steps=1, **{"data.reward": "user_rewards:boom",
                                                       "data.reward_on_error": "zero",
                                                       "rollout.dynamic_sampling": False}))  # fmt: skip
    assert _rows(out)[-1]["reward/errors"] == 16.0  # 4 prompts x 4 samples


def test_user_jsonl_prompts_and_reward(tiny_model_dir: Path, tmp_path: Path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(30))
    )
    out = tmp_path / "run"
    _train(
        _overrides(
            tiny_model_dir,
            out,
            steps=1,
            **{"data.prompts": str(prompts), "data.reward": "exact_match"},
        )
    )
    assert _rows(out)[-1]["step"] == 1


@pytest.mark.parametrize("name", available_presets())
def test_every_preset_loads_and_validates(name: str):
    cfg = build_config(preset=name)
    assert cfg.preset == name
    from entropy_rl.train.parts import validate_algo

    validate_algo(cfg)
    assert set(load_preset(name)) <= {
        "algo",
        "rollout",
        "control",
        "data",
        "eval",
        "run",
        "model",
        "preset",
    }


def test_bad_config_fails_before_work():
    with pytest.raises(ConfigError, match=r"unknown key algo\.lrr.*allowed keys"):
        build_config(overrides=["algo.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown preset 'nope'"):
        build_config(preset="nope")
    with pytest.raises(ConfigError, match=r"algo\.lr must be of type float"):
        build_config(overrides=["algo.lr=fast"])
    with pytest.raises(ConfigError, match=r"algo\.agg='mean'.*token-mean"):
        build_config(overrides=["algo.agg=mean"])
    from entropy_rl.train.parts import validate_algo

    with pytest.raises(ConfigError, match="unknown policy loss"):
        validate_algo(build_config(overrides=["algo.loss=nope"]))
    with pytest.raises(ConfigError, match="eps_low"):
        validate_algo(build_config(overrides=["algo.loss_kwargs={eps_low: 1.5}"]))


def test_cli_train_subprocess(tiny_model_dir: Path, tmp_path: Path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "entropy_rl.cli", "train", "--out", str(out), "--steps", "2", "--no-progress",
           *_overrides(tiny_model_dir, out, steps=2)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "done: step 2" in res.stdout
    bad = subprocess.run([sys.executable, "-m", "entropy_rl.cli", "train", "algo.nope=1"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2
    assert "unknown key algo.nope" in bad.stderr


def test_on_policy_setting_is_warned():
    from entropy_rl.train.update import warn_if_on_policy

    with pytest.warns(UserWarning, match="clip never acts"):
        warn_if_on_policy(1, 1)


def test_explain_clip_cli():
    res = subprocess.run([sys.executable, "-m", "entropy_rl.cli", "explain-clip", "0.9", "0.4", "0.01",
                          "--eps-low", "0.2", "--eps-high", "0.28"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0
    assert "0.32" in res.stdout and "0.012" in res.stdout


def test_non_finite_update_is_skipped_and_weights_stay(tiny_model_dir: Path, tmp_path: Path):
    import torch

    from entropy_rl.train.trainer import TrainingStopped

    trainer = _make_trainer(
        _overrides(tiny_model_dir, tmp_path / "nan", steps=3, **{"algo.max_bad_steps": 2})
    )
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.advantage_fn = lambda rewards, group_size: torch.full_like(rewards, float("nan"))
    with (
        pytest.warns(RuntimeWarning, match="non-finite"),
        pytest.raises(TrainingStopped, match="2 RL steps in a row"),
    ):
        trainer.fit()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no NaN reached the weights
    rows = [r for r in _rows(tmp_path / "nan") if r["step"] >= 1]
    assert [r["update/optimizer_steps"] for r in rows] == [0.0]  # step 1 logged, step 2 stopped
    assert rows[0]["update/bad_steps"] == 8.0  # 4 epochs x 2 mini-batches, all skipped


def test_ctrl_c_saves_a_checkpoint_and_resumes(tiny_model_dir: Path, tmp_path: Path):
    import signal
    import time

    out = tmp_path / "intr"
    cmd = [sys.executable, "-m", "entropy_rl.cli", "train", "--no-progress",
           *_overrides(tiny_model_dir, out, steps=200, **{"run.save_every": 0})]  # fmt: skip
    # a shell's background job inherits SIGINT ignored; give the child the default disposition
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=restore
    )
    deadline = time.time() + 240
    while time.time() < deadline:  # wait until a training step is logged
        if (out / "metrics.jsonl").exists() and len(
            (out / "metrics.jsonl").read_text().splitlines()
        ) >= 2:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert "entropy-rl train --resume" in err
    saved = ckpt.latest_checkpoint(out)
    assert saved is not None
    step = ckpt.load_state(saved)["step"]
    assert step >= 1
    assert max(r["step"] for r in _rows(out)) <= step + 1


@pytest.mark.parametrize("task", ["addition", "digitsum", "wordpick"])
def test_builtin_tokenizers_load_exactly(task: str):
    from entropy_rl.tasks import get_task
    from entropy_rl.tasks.pretrain import builtin_checkpoint
    from entropy_rl.tasks.tokenizer import load_tokenizer

    tok = load_tokenizer(str(builtin_checkpoint(task)))
    ex = get_task(task).eval_set()[0]
    ids = tok(ex.prompt)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == ex.prompt.replace(" ", "")
    assert tok("7= 1")["input_ids"] != tok("7=1")["input_ids"] or task == "wordpick"  # spaces kept


@pytest.mark.parametrize("kl_in", ["loss", "reward"])
def test_reference_model_kl(tiny_model_dir: Path, tmp_path: Path, kl_in: str):
    out = tmp_path / "kl"
    _train(_overrides(tiny_model_dir, out, steps=2, **{"algo.kl_coef": 0.05, "algo.kl_in": kl_in}))
    rows = [r for r in _rows(out) if r["step"] >= 1]
    if kl_in == "loss":
        # a mean over the update's 8 mini-batches: the first is at the reference (k3 = 0), the
        # later ones have moved away, so it is positive and small
        assert all(0.0 < r["kl/ref"] < 0.5 for r in rows)
    else:
        assert "kl/ref" not in rows[1]  # KL went into the advantages, not the loss


def test_entropy_shaped_advantages_reach_the_loss(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch
):
    # algo.entropy_adv_alpha: A'_t = A + min(alpha * H_old,t, |A| / kappa) (Cheng et al. 2025)
    from entropy_rl.train import trainer as tr
    from entropy_rl.train import update as up

    # the built-in addition checkpoint (model.path null): some samples right, so A != 0
    extra = {"algo.entropy_adv_alpha": 0.4, "model.path": "null"}
    over = _overrides(tiny_model_dir, tmp_path / "run", steps=1, **extra)
    trainer = _make_trainer(over, preset="ppo")
    olds: list[dict] = []
    seen: list[torch.Tensor] = []
    real_record, real_loss = tr.record_old_logprobs, up.policy_loss

    def record(*args, **kwargs):
        olds.append(real_record(*args, **kwargs))
        return olds[-1]

    def loss(name, **kwargs):
        seen.append(kwargs["advantages"].detach().clone())
        return real_loss(name, **kwargs)

    monkeypatch.setattr(tr, "record_old_logprobs", record)
    monkeypatch.setattr(up, "policy_loss", loss)
    trainer.step = 1
    batch, _ = trainer.rollout()
    assert batch is not None
    metrics = trainer.update(batch)
    h, a, m = olds[0]["entropy"], batch.advantages, batch.mask
    expected = (a[:, None] + torch.minimum(0.4 * h, a.abs()[:, None] / 2.0)) * m
    torch.testing.assert_close(batch.token_advantages, expected, rtol=0, atol=0)
    bonus = float(((expected - a[:, None]) * m).sum() / m.sum())
    assert bonus > 0 and metrics["adv/entropy_bonus"] == pytest.approx(bonus, rel=1e-6)
    # the loss got [B, T] advantages, and each non-zero one is one of the shaped values
    shaped = {round(v, 5) for v in expected[m > 0].tolist()}
    assert seen and all(x.dim() == 2 for x in seen)
    assert all({round(v, 5) for v in x[x != 0].tolist()} <= shaped for x in seen)


def test_entropy_adv_config_is_validated():
    with pytest.raises(ConfigError, match="entropy_adv_kappa must be > 0"):
        build_config(preset="ppo", overrides=["algo.entropy_adv_kappa=0"])
    with pytest.raises(ConfigError, match="entropy_adv_alpha must be >= 0"):
        build_config(preset="ppo", overrides=["algo.entropy_adv_alpha=-0.1"])


def test_target_on_both_clip_bounds_sets_eps_low_and_eps_high(tiny_model_dir: Path, tmp_path: Path):
    extra = {
        "control.controller": "target",
        "control.controller_kwargs": "{schedule: 5.0, actuator: eps}",  # far above any H here
    }
    trainer = _train(_overrides(tiny_model_dir, tmp_path / "run", steps=2, **extra), preset="ppo")
    rows = _rows(tmp_path / "run")
    u = trainer.controller.output
    assert trainer.loss_kwargs["eps_low"] == trainer.loss_kwargs["eps_high"] == u
    assert rows[-1]["control/eps_low"] == rows[-1]["control/eps_high"] == pytest.approx(u)
    assert u == 0.02  # entropy under a 5-nat target: the negative gains narrow it to the floor


def test_entropic_controller_sets_the_loss_weights(tiny_model_dir: Path, tmp_path: Path):
    extra = {"control.controller_kwargs": "{target: 0.0}"}  # any H > 1 here: alpha = 1
    trainer = _train(_overrides(tiny_model_dir, tmp_path / "run", steps=2, **extra), "entropic")
    rows = _rows(tmp_path / "run")
    assert rows[-1]["control/entropic_alpha"] == 1.0
    assert (rows[-1]["control/pos_weight"], rows[-1]["control/neg_weight"]) == (2.0, 0.0)
    assert (trainer.loss_kwargs["pos_weight"], trainer.loss_kwargs["neg_weight"]) == (2.0, 0.0)
    assert 0.0 <= rows[-1]["prob/confident_frac"] <= 1.0


def test_controller_loss_overrides_are_validated_against_the_loss():
    from entropy_rl.train.parts import validate_algo

    cfg = build_config(
        preset="ppo",
        overrides=["control.controller=entropic", "control.controller_kwargs={target: 1.0}"],
    )
    with pytest.raises(
        ConfigError, match=r"pos_weight for policy loss 'ppo'.*controller='entropic'"
    ):
        validate_algo(cfg)
