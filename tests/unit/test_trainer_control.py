"""Trainer.control(): every controller setting goes through one path (apply_settings), and
validate_algo refuses at start a controller whose settings the configured loss cannot take."""

from __future__ import annotations

from typing import Any

import pytest

from entropy_rl.control.controllers import EntropyController, make_controller
from entropy_rl.train.config import ConfigError, build_config
from entropy_rl.train.trainer import Trainer, validate_algo


def _bare_trainer(controller: Any, **loss_kwargs: float) -> Trainer:
    """A Trainer with only what control() reads (no model, no run directory)."""
    t = object.__new__(Trainer)
    t.controller, t.detector, t.step = controller, None, 0
    t.loss_kwargs, t.entropy_coef, t.entropy_adv_alpha = dict(loss_kwargs), 0.0, 0.0
    return t


class _Everything(EntropyController):
    """Sets one of each kind of setting: value = 0.1 * step (+ an offset per name)."""

    def __init__(self) -> None:
        self.k = 0

    def settings(self) -> dict[str, float]:
        base = 0.1 * self.k
        return {
            "entropy_coef": base,
            "eps_low": base + 0.01,
            "eps_high": base + 0.02,
            "pos_weight": base + 1.0,
            "neg_weight": 1.0 - base,
            "entropy_adv_alpha": base + 0.3,
        }

    def update(self, step: int, metrics: Any) -> dict[str, float]:
        self.k = step
        return {}


def test_control_applies_every_setting_through_one_path() -> None:
    t = _bare_trainer(_Everything(), eps_low=0.2, eps_high=0.2, prob_threshold=0.95)
    t.step = 2
    out = t.control({"entropy/mean": 1.0})
    # step 2: base 0.2 -> coef 0.2, eps 0.21 / 0.22, weights 1.2 / 0.8, alpha 0.5
    assert t.entropy_coef == pytest.approx(0.2) and t.entropy_adv_alpha == pytest.approx(0.5)
    assert t.loss_kwargs == pytest.approx(
        {"eps_low": 0.21, "eps_high": 0.22, "pos_weight": 1.2, "neg_weight": 0.8,
         "prob_threshold": 0.95}
    )  # fmt: skip
    assert out == pytest.approx(
        {"control/entropy_coef": 0.2, "control/entropy_adv_alpha": 0.5, "control/eps_low": 0.21,
         "control/eps_high": 0.22, "control/pos_weight": 1.2, "control/neg_weight": 0.8}
    )  # fmt: skip


def test_control_without_a_measured_entropy_changes_nothing() -> None:
    t = _bare_trainer(_Everything(), eps_low=0.2, eps_high=0.2)
    t.step = 3
    out = t.control({"reward/mean": 0.5})  # a step without an update: nothing measured
    assert t.loss_kwargs == {"eps_low": 0.2, "eps_high": 0.2} and t.entropy_coef == 0.0
    assert out["control/eps_high"] == 0.2 and out["control/entropy_adv_alpha"] == 0.0


def test_rate_controller_moves_both_clip_bounds_and_the_bonus_stays() -> None:
    rate = make_controller("rate", schedule={"kind": "linear", "start": 1.5, "end": 0.5},
                           total_steps=10)  # fmt: skip
    t = _bare_trainer(rate, eps_low=0.2, eps_high=0.2)
    t.entropy_coef = 1e-3
    for step, h in ((1, 1.5), (2, 1.2)):
        t.step = step
        out = t.control({"entropy/mean": h})
    # step 2: slope -0.1, rate -0.3, e = 0.2, I = 0.2 clamped to (0.02 - 0.2) / -2 = 0.09,
    # u = 0.2 - 1.5 * 0.2 - 2 * 0.09 = -0.28 -> the floor 0.02
    assert t.loss_kwargs == {"eps_low": 0.02, "eps_high": 0.02}
    assert out["control/eps_low"] == out["control/eps_high"] == 0.02
    assert t.entropy_coef == 1e-3 and "control/entropy_adv_alpha" not in out


def test_duck_typed_controller_is_read_through_its_attributes() -> None:
    class Duck:
        entropy_coef, eps_high, eps_low = 0.01, 0.3, None

        def update(self, step: int, metrics: Any) -> dict[str, float]:
            return {}

    t = _bare_trainer(Duck(), eps_low=0.2, eps_high=0.2)
    t.control({"entropy/mean": 1.0})
    assert (t.entropy_coef, t.loss_kwargs) == (0.01, {"eps_low": 0.2, "eps_high": 0.3})


def test_validate_algo_refuses_a_clip_controller_on_a_loss_without_a_clip() -> None:
    cfg = build_config(preset="rate-clip", overrides=["algo.loss=gpg", "algo.loss_kwargs={}"])
    with pytest.raises(
        ConfigError,
        match=r"eps_high, eps_low for policy loss 'gpg'.*controller='rate' sets \['eps_high', 'eps_low'\]",
    ):
        validate_algo(cfg)
    validate_algo(build_config(preset="rate-clip"))  # the preset itself is fine


def test_validate_algo_checks_an_injected_controller_too() -> None:
    cfg = build_config(preset="ppo")
    validate_algo(cfg, make_controller("target", schedule=1.0, actuator="eps"))
    with pytest.raises(ConfigError, match=r"pos_weight for policy loss 'ppo'"):
        validate_algo(cfg, make_controller("entropic", target=1.0))

    class Bad(EntropyController):
        def settings(self) -> dict[str, float]:
            return {"temperature": 1.0}

    with pytest.raises(ConfigError, match=r"Bad sets \['temperature'\], which no host knows"):
        validate_algo(cfg, Bad())


def test_detector_actions_go_through_the_same_path() -> None:
    from types import SimpleNamespace

    from entropy_rl.control.detector import Event

    t = _bare_trainer(None, eps_low=0.2, eps_high=0.2)
    t.dist = SimpleNamespace(is_main=False)  # no events.jsonl written

    def event(action: str) -> Event:
        return Event(5, "entropy_floor", "critical", {}, "low", action)

    t._on_event(event("raise_eps_high"))  # + 0.05
    t._on_event(event("raise_entropy_coef"))  # 0 -> max(0 * 2, 1e-3)
    t._on_event(event("raise_entropy_coef"))  # 1e-3 -> 2e-3
    assert t.loss_kwargs == pytest.approx({"eps_low": 0.2, "eps_high": 0.25}, abs=1e-15)
    assert t.entropy_coef == 2e-3
