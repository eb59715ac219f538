"""verl integration: our losses in verl's policy-loss registry, and the controller adapter.

Two layers:
* fast tests against a local stub of verl 0.9's registry (``register_policy_loss`` stores the
  function under its name) and of its actor config (attributes ``clip_ratio*``,
  ``policy_loss.*``, ``global_batch_info``), so they run without verl;
* a slow test in a separate venv with the real verl 0.9 (verl pins transformers < 5.11):
  build it with ``bash scripts/verl_venv.sh`` and point ``ENTROPY_RL_VERL_PYTHON`` at its
  python (default ``/tmp/verl-venv/bin/python``); it is skipped when that venv is absent.
  There, ``erl_*`` are checked against verl's own losses (values and gradients).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import FrozenInstanceError, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from entropy_rl.control.controllers import PIEntropyController
from entropy_rl.integrations.verl import (
    VERL_LOSSES,
    VerlEntropyControl,
    make_verl_loss,
    register_with_verl,
)
from entropy_rl.ops.losses import policy_loss

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- stub of verl 0.9

STUB_REGISTRY: dict[str, Any] = {}


def stub_register_policy_loss(name: str):
    """verl/trainer/ppo/core_algos.py (0.9.1): ``POLICY_LOSS_REGISTRY[name] = func``."""

    def decorator(func):
        STUB_REGISTRY[name] = func
        return func

    return decorator


def actor_config(**kw: Any) -> SimpleNamespace:
    """The ActorConfig fields the losses read, with verl 0.9's defaults."""
    policy = SimpleNamespace(clip_cov_ratio=2e-4, clip_cov_lb=1.0, clip_cov_ub=5.0)
    policy.kl_cov_ratio, policy.ppo_kl_coef = 2e-4, 0.1
    for key in ("clip_cov_ratio", "clip_cov_lb", "clip_cov_ub", "kl_cov_ratio", "ppo_kl_coef"):
        if key in kw:
            setattr(policy, key, kw.pop(key))
    base = {"clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.2, "clip_ratio_c": 3.0}
    return SimpleNamespace(**(base | kw), policy_loss=policy, global_batch_info={})


def call(name: str, config: SimpleNamespace, old, lp, adv, mask, agg="token-mean", **kw):
    """As verl's ppo_loss calls a registered loss: all by keyword."""
    return STUB_REGISTRY[name](
        old_log_prob=old,
        log_prob=lp,
        advantages=adv,
        response_mask=mask,
        loss_agg_mode=agg,
        config=config,
        **kw,
    )


def test_register_names_and_metrics() -> None:
    names = register_with_verl(stub_register_policy_loss)
    assert names == [f"erl_{n}" for n in VERL_LOSSES]
    assert set(names) <= set(STUB_REGISTRY)
    torch.manual_seed(0)
    old = -torch.rand(3, 5) - 0.1
    lp = (old + 0.3 * torch.randn(3, 5)).requires_grad_()
    adv, mask = torch.randn(3, 5), torch.ones(3, 5)
    mask[2, 3:] = 0
    loss, metrics = call("erl_ppo", actor_config(), old, lp, adv, mask)
    ref, ref_metrics = policy_loss(
        "ppo",
        logprobs=lp,
        old_logprobs=old,
        advantages=adv,
        mask=mask,
        eps_low=0.2,
        eps_high=0.2,
        dual_clip_c=3.0,
    )
    assert float(loss.detach()) == float(ref.detach())
    assert not any(k.startswith("_count/") for k in metrics) and "loss/policy" not in metrics
    assert metrics == {k: v for k, v in ref_metrics.items() if k in metrics}
    assert {"clip/upper_frac", "clip/lower_frac", "clip/dual_frac", "ratio/abs_dev"} <= set(metrics)


def test_token_mean_uses_global_batch_info_hand_worked() -> None:
    register_with_verl(stub_register_policy_loss)
    # One row, two tokens, old p = 0.5 each, new p = 0.55 and 0.4, A = +1:
    # r = 1.1 and 0.8, both inside [0.8, 1.2] -> per-token loss -r*A = -1.1, -0.8; sum -1.9.
    # verl: masked_sum / batch_num_tokens * dp_size = -1.9 / 8 * 2 = -0.475.
    old = torch.log(torch.tensor([[0.5, 0.5]]))
    lp = torch.log(torch.tensor([[0.55, 0.4]]))
    cfg = actor_config()
    cfg.global_batch_info.update(dp_size=2, batch_num_tokens=8, global_batch_size=None)
    loss, metrics = call("erl_ppo", cfg, old, lp, torch.ones(1, 2), torch.ones(1, 2))
    assert float(loss) == pytest.approx(-0.475, abs=1e-6)
    # seq-mean-token-mean: row mean -0.95 / (global_batch_size 4 / dp 2) = -0.475 as well;
    # seq-mean-token-sum-norm with loss_scale_factor 10: -1.9 / (4 / 2) / 10 = -0.095
    cfg.global_batch_info.update(global_batch_size=4, loss_scale_factor=10)
    loss, _ = call(
        "erl_ppo", cfg, old, lp, torch.ones(1, 2), torch.ones(1, 2), "seq-mean-token-mean"
    )
    assert float(loss) == pytest.approx(-0.475, abs=1e-6)
    loss, _ = call(
        "erl_ppo", cfg, old, lp, torch.ones(1, 2), torch.ones(1, 2), "seq-mean-token-sum-norm"
    )
    assert float(loss) == pytest.approx(-0.095, abs=1e-6)
    assert metrics["ratio/mean"] == pytest.approx(0.95, abs=1e-6)  # (1.1 + 0.8) / 2


def test_hyperparameters_come_from_the_actor_config() -> None:
    register_with_verl(stub_register_policy_loss)
    # r = 1.25 with A > 0: clipped at clip_ratio_high 0.2 (1.25 > 1.2), not at 0.28 (< 1.28)
    old, lp = torch.zeros(1, 1), torch.log(torch.tensor([[1.25]]))
    one = torch.ones(1, 1)
    _, m = call("erl_ppo", actor_config(), old, lp, one, one)
    assert m["clip/upper_frac"] == 1.0
    _, m = call("erl_ppo", actor_config(clip_ratio_high=0.28), old, lp, one, one)
    assert m["clip/upper_frac"] == 0.0
    # kl_cov_ratio 0.5 of 4 tokens -> round(2.0) = 2 penalised tokens: frac 0.5
    torch.manual_seed(1)
    old4 = -torch.rand(1, 4)
    _, m = call(
        "erl_kl_cov",
        actor_config(kl_cov_ratio=0.5),
        old4,
        old4 + 0.1,
        torch.randn(1, 4),
        torch.ones(1, 4),
    )
    assert m["clip/kl_cov_frac"] == 0.5
    # dual clip c = clip_ratio_c: r = 4 > 3 with A < 0 is dual-clipped; with c = 5 it is not
    lp4 = torch.log(torch.tensor([[4.0]]))
    _, m = call("erl_ppo", actor_config(), old, lp4, -one, one)
    assert m["clip/dual_frac"] == 1.0
    _, m = call("erl_ppo", actor_config(clip_ratio_c=5.0), old, lp4, -one, one)
    assert m["clip/dual_frac"] == 0.0


def test_loss_errors() -> None:
    register_with_verl(stub_register_policy_loss)
    one = torch.ones(1, 1)
    with pytest.raises(ValueError, match="does not apply rollout_is_weights"):
        call("erl_ppo", actor_config(), one, one, one, one, rollout_is_weights=one)
    with pytest.raises(ValueError, match="unknown aggregation mode 'token-sum'"):
        call("erl_ppo", actor_config(), one, one, one, one, "token-sum")
    with pytest.raises(ValueError, match="no verl adapter for loss 'dapo'; available: ppo"):
        make_verl_loss("dapo")


def test_register_without_verl_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "verl", None)
    with pytest.raises(ImportError, match=r"entropy-rl\[verl\]"):
        register_with_verl()


@dataclass
class FrozenConfig:
    """Like verl's BaseConfig: fields are frozen once set."""

    clip_ratio_high: float = 0.2
    entropy_coeff: float = 0.0

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            raise FrozenInstanceError(f"Field '{name}' is frozen and cannot be modified")
        super().__setattr__(name, value)


def test_controller_adapter_eps_high() -> None:
    # PI on eps_high (defaults kp 1.0, ki 0.1, init 0.28, range [0.2, 1.0]), target 0.6,
    # measured actor/entropy 0.5: e = 0.1, I = 0.1, u = 0.28 + 1.0*0.1 + 0.1*0.1 = 0.39.
    ctl = VerlEntropyControl(PIEntropyController(0.6, actuator="eps_high"))
    out = ctl.update(5, {"actor/entropy": 0.5, "critic/score/mean": 0.3, "actor/pg_loss": 0.1})
    assert out == {
        "control/eps_high": pytest.approx(0.39, abs=1e-12),
        "control/target_entropy": 0.6,
    }
    assert ctl.overrides == {"actor_rollout_ref.actor.clip_ratio_high": pytest.approx(0.39)}
    frozen, ns, d = FrozenConfig(), SimpleNamespace(clip_ratio_high=0.2), {"clip_ratio_high": 0.2}
    for target in (frozen, ns):
        ctl.apply_to(target)
        assert target.clip_ratio_high == pytest.approx(0.39, abs=1e-12)
    ctl.apply_to(d)
    assert d["clip_ratio_high"] == pytest.approx(0.39, abs=1e-12)
    state = ctl.state_dict()
    ctl2 = VerlEntropyControl(PIEntropyController(0.6, actuator="eps_high"))
    ctl2.load_state_dict(state)
    assert ctl2.overrides == ctl.overrides
    with pytest.raises(ValueError, match="calculate_entropy=True"):
        ctl.update(6, {"critic/score/mean": 0.3})


def test_controller_adapter_entropy_coef() -> None:
    # PI on entropy_coef (kp 0.1, ki 0.01, init 0, max 0.05), target 0.6, measured 0.5:
    # u = 0.1*0.1 + 0.01*0.1 = 0.011
    ctl = VerlEntropyControl(PIEntropyController(0.6, actuator="entropy_coef"))
    ctl.update(1, {"actor/entropy": 0.5})
    assert ctl.overrides == {"actor_rollout_ref.actor.entropy_coeff": pytest.approx(0.011)}
    cfg = FrozenConfig()
    ctl.apply_to(cfg)
    assert cfg.entropy_coeff == pytest.approx(0.011, abs=1e-12) and cfg.clip_ratio_high == 0.2


def verl_run_config(**kw: Any) -> dict[str, Any]:
    """The parts of verl 0.9's trainer config that from_verl_config reads (a Hydra config
    reads the same through attribute or key access)."""
    actor = {
        "policy_loss": {"loss_mode": kw.pop("loss_mode", "erl_ppo")},
        "loss_agg_mode": kw.pop("agg", "token-mean"),
        "calculate_entropy": kw.pop("calculate_entropy", True),
    }
    algo = {"adv_estimator": kw.pop("adv", "grpo"), "norm_adv_by_std_in_grpo": kw.pop("std", True)}
    return {
        "actor_rollout_ref": {"actor": actor},
        "algorithm": algo,
        "trainer": {"total_training_steps": kw.pop("steps", 10)},
        "entropy_rl": {"preset": kw.pop("preset", "rate-clip")},
    }


def test_preset_from_the_config_entry_and_its_refusals() -> None:
    assert VerlEntropyControl.from_verl_config({"trainer": {}}) is None  # no entry, no control
    ctl = VerlEntropyControl.from_verl_config(verl_run_config())
    assert ctl is not None and ctl.settings == {"eps_low": 0.2, "eps_high": 0.2}
    assert ctl.overrides == {
        "actor_rollout_ref.actor.clip_ratio_low": 0.2,
        "actor_rollout_ref.actor.clip_ratio_high": 0.2,
    }
    # linear 1.5 -> 0.5 over the config's 10 steps: target 1.4 at step 1
    assert ctl.update(1, {"actor/entropy": 1.2})["control/target_entropy"] == pytest.approx(1.4)
    refusals = {
        "loss_mode": (
            {"loss_mode": "vanilla"},
            "preset 'rate-clip' uses our 'ppo' loss, but the run has verl's loss_mode 'vanilla';"
            " set actor_rollout_ref.actor.policy_loss.loss_mode=erl_ppo (after"
            " register_with_verl())",
        ),
        "agg": (
            {"agg": "seq-mean-token-mean"},
            "preset 'rate-clip' aggregates with token-mean, the run with 'seq-mean-token-mean';"
            " set actor_rollout_ref.actor.loss_agg_mode=token-mean",
        ),
        "advantage": (
            {"preset": "dr-grpo", "agg": "seq-mean-token-sum-norm"},
            "preset 'dr-grpo' uses the 'dr_grpo' advantage, which verl's adv_estimator='grpo'"
            " (norm_adv_by_std_in_grpo=True) does not compute; set algorithm.adv_estimator=grpo"
            " algorithm.norm_adv_by_std_in_grpo=False",
        ),
        "extras": (
            {"preset": "dapo"},
            "preset 'dapo' sets rollout.dynamic_sampling, rollout.overlong_shaping, which verl's"
            " loss_mode 'erl_ppo' cannot express (it applies none); verl has its own options for"
            " these; set them there",
        ),
        "entropy": (
            {"preset": "target-schedule", "calculate_entropy": False},
            "preset 'target-schedule' sets entropy_coef, which verl's loss_mode 'erl_ppo'"
            " without calculate_entropy cannot express (it applies eps_high, eps_low); set"
            " actor_rollout_ref.actor.calculate_entropy=True",
        ),
    }
    for what, (kw, message) in refusals.items():
        with pytest.raises(ValueError) as info:
            VerlEntropyControl.from_verl_config(verl_run_config(**kw))
        assert str(info.value) == message, what
    # a controller's clip on a loss without one: refused by the same check
    ctl = VerlEntropyControl(PIEntropyController(1.0, actuator="eps"))
    with pytest.raises(ValueError, match=r"^the controller \(PIEntropyController\) sets eps_low,"
                       r" eps_high, which verl's loss_mode 'erl_gpg' cannot express"):  # fmt: skip
        ctl.check(verl_run_config(loss_mode="erl_gpg"))
    with pytest.raises(ValueError, match="leave out controller="):
        VerlEntropyControl(PIEntropyController(1.0), preset="rate-clip")


def test_entropic_preset_weights_reach_the_registered_loss() -> None:
    register_with_verl(stub_register_policy_loss)
    ctl = VerlEntropyControl.from_verl_config(
        verl_run_config(preset="entropic", loss_mode="erl_entropic")
    )
    assert ctl is not None
    # EntroPIC target 1.0 (preset), kp 1, ki 0.01: H 1.3 -> alpha 0.303: weights 1.303 / 0.697
    ctl.update(1, {"actor/entropy": 1.3})
    assert ctl.settings == pytest.approx(
        {"eps_low": 0.2, "eps_high": 0.2, "prob_threshold": 0.95, "pos_weight": 1.303,
         "neg_weight": 0.697}
    )  # fmt: skip
    cfg = FrozenConfig()
    ctl.apply_to(cfg)
    ctl.apply_to(cfg)  # again: erl_settings is replaced, not frozen
    # one confident token (p 0.97 > 0.95) with A = +1 and r = 1: loss -pos_weight * r * A
    old = torch.log(torch.tensor([[0.97]]))
    one = torch.ones(1, 1)
    loss, _ = call("erl_entropic", cfg, old, old.clone(), one, one)
    assert float(loss) == pytest.approx(-1.303, abs=1e-6)
    cfg2 = FrozenConfig()  # without the hook: plain weights
    loss, _ = call("erl_entropic", cfg2, old, old.clone(), one, one)
    assert float(loss) == pytest.approx(-1.0, abs=1e-6)


# --------------------------------------------------------------------------- real verl (slow)

VERL_PY = Path(os.environ.get("ENTROPY_RL_VERL_PYTHON", "/tmp/verl-venv/bin/python"))

VERL_SCRIPT = r"""
import json, torch
from verl.trainer.ppo import core_algos as ca
from verl.workers.config import ActorConfig, PolicyLossConfig
from entropy_rl.integrations.verl import register_with_verl

names = register_with_verl()
torch.manual_seed(0)
B, T = 4, 5
old = -torch.rand(B, T) * 2 - 0.05
adv = torch.randn(B, 1).expand(B, T).contiguous()
mask = torch.ones(B, T)
mask[1, 3:] = 0
mask[3, 1:] = 0  # 14 valid tokens: kl_cov 0.5 * 14 = 7 penalised in both (no rounding gap)
lp0 = old + 0.4 * torch.randn(B, T)
out = {"registered": [n for n in names if n in ca.POLICY_LOSS_REGISTRY]}
pairs = [("erl_ppo", "vanilla", {}), ("erl_cispo", "cispo", {}), ("erl_gspo", "gspo", {}),
         ("erl_kl_cov", "kl_cov", {"kl_cov_ratio": 0.5, "ppo_kl_coef": 1.0})]
for ours, theirs, pl in pairs:
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        cfg = ActorConfig(strategy="fsdp", clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28,
                          policy_loss=PolicyLossConfig(loss_mode=ours, **pl), ppo_micro_batch_size_per_gpu=1,
                          rollout_n=1)
        cfg.global_batch_info.update(dp_size=2, batch_num_tokens=30, global_batch_size=8, loss_scale_factor=7)
        res = []
        for name in (ours, theirs):
            lp = lp0.clone().requires_grad_()
            loss, metrics = ca.get_policy_loss_fn(name)(old_log_prob=old, log_prob=lp, advantages=adv,
                response_mask=mask, loss_agg_mode=agg, config=cfg, rollout_is_weights=None)
            loss.backward()
            res.append((float(loss), lp.grad.clone(), metrics))
        out[f"{ours}/{agg}"] = {"loss": [res[0][0], res[1][0]],
                                "grad_diff": float((res[0][1] - res[1][1]).abs().max()),
                                "grad_norm": float(res[1][1].norm()),
                                "our_metrics": sorted(res[0][2])}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_erl_losses_match_verl_losses_in_verl_venv() -> None:
    if not VERL_PY.is_file():
        pytest.skip(
            f"no verl venv at {VERL_PY}: bash scripts/verl_venv.sh (or set ENTROPY_RL_VERL_PYTHON)"
        )
    env = os.environ | {"PYTHONPATH": str(ROOT / "src"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [str(VERL_PY), "-c", VERL_SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    if "No module named 'verl'" in proc.stderr:
        pytest.skip(f"{VERL_PY} has no verl")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    assert out.pop("registered") == [f"erl_{n}" for n in VERL_LOSSES]
    assert len(out) == 12
    for key, r in out.items():
        ours, theirs = r["loss"]
        assert math.isfinite(theirs) and r["grad_norm"] > 0, key
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6), key
        assert r["grad_diff"] <= 1e-5 * max(1.0, r["grad_norm"]), key
        assert "ratio/abs_dev" in r["our_metrics"], key


VERL_PRESET_SCRIPT = r"""
import json, torch
from importlib import resources
from omegaconf import OmegaConf
from verl.trainer.ppo import core_algos as ca
from verl.workers.config import ActorConfig, PolicyLossConfig
from entropy_rl.integrations.verl import VerlEntropyControl, register_with_verl

register_with_verl()
cfg = OmegaConf.load(str(resources.files("verl") / "trainer/config/_generated_ppo_trainer.yaml"))
entries = ["entropy_rl.preset=entropic", "actor_rollout_ref.actor.policy_loss.loss_mode=erl_entropic",
           "actor_rollout_ref.actor.calculate_entropy=true", "algorithm.adv_estimator=grpo",
           "trainer.total_training_steps=10"]
cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(entries))
ctl = VerlEntropyControl.from_verl_config(cfg)
ctl.update(1, {"actor/entropy": 1.3})
actor = ActorConfig(strategy="fsdp", policy_loss=PolicyLossConfig(loss_mode="erl_entropic"),
                    ppo_micro_batch_size_per_gpu=1, rollout_n=1)
ctl.apply_to(actor)
ctl.apply_to(actor)  # a second step: the frozen config takes it again
old, one = torch.log(torch.tensor([[0.97]])), torch.ones(1, 1)
loss, _ = ca.get_policy_loss_fn("erl_entropic")(old_log_prob=old, log_prob=old.clone(), advantages=one,
    response_mask=one, loss_agg_mode="token-mean", config=actor, rollout_is_weights=None)
out = {"loss": float(loss), "settings": dict(actor.erl_settings)}
vanilla = OmegaConf.merge(cfg, OmegaConf.from_dotlist(["actor_rollout_ref.actor.policy_loss.loss_mode=vanilla"]))
try:
    VerlEntropyControl.from_verl_config(vanilla)
    out["refused"] = None
except ValueError as e:
    out["refused"] = str(e)
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_preset_hook_on_real_verl_config_and_actor_config() -> None:
    """verl 0.9.1's own generated trainer config (an OmegaConf DictConfig) with the
    +entropy_rl.preset entry, and its frozen ActorConfig taking erl_settings twice."""
    if not VERL_PY.is_file():
        pytest.skip(
            f"no verl venv at {VERL_PY}: bash scripts/verl_venv.sh (or set ENTROPY_RL_VERL_PYTHON)"
        )
    env = os.environ | {"PYTHONPATH": str(ROOT / "src"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [str(VERL_PY), "-c", VERL_PRESET_SCRIPT], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    # EntroPIC (target 1.0, kp 1, ki 0.01): H 1.3 -> alpha 0.303: a confident token's loss is
    # -pos_weight * r * A = -1.303
    assert out["loss"] == pytest.approx(-1.303, abs=1e-6)
    assert out["settings"] == pytest.approx(
        {"eps_low": 0.2, "eps_high": 0.2, "prob_threshold": 0.95, "pos_weight": 1.303,
         "neg_weight": 0.697}
    )  # fmt: skip
    assert out["refused"].startswith(
        "preset 'entropic' uses our 'entropic' loss, but the run has verl's loss_mode 'vanilla'"
    )


def test_preset_schedule_length_from_the_trainer_when_the_config_has_none() -> None:
    cfg = verl_run_config(steps=-1)  # verl's default: the trainer computes the length
    with pytest.raises(ValueError, match="total_steps"):
        VerlEntropyControl.from_verl_config(cfg)
    ctl = VerlEntropyControl.from_verl_config(cfg, total_steps=4)
    assert ctl is not None
    # linear 1.5 -> 0.5 over 4 steps: target 1.25 at step 1
    assert ctl.update(1, {"actor/entropy": 1.0})["control/target_entropy"] == pytest.approx(1.25)
    cfg["entropy_rl"]["controller_kwargs"] = {"schedule": {"kind": "constant", "start": 2.0}}
    ctl = VerlEntropyControl.from_verl_config(cfg)  # a constant target needs no length
    assert ctl is not None
    assert ctl.update(1, {"actor/entropy": 1.0})["control/target_entropy"] == 2.0
