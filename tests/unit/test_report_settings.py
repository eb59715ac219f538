"""report.settings: the per-setting seed band (hand-worked) and the small-multiples figure."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from entropy_rl.report.load import RunData
from entropy_rl.report.settings import (
    compare_curves,
    seed_band,
    settings_figure_png,
    write_settings_figures,
)


def test_seed_band_on_the_common_steps():
    a = (np.array([1.0, 2.0, 3.0]), np.array([0.1, 0.2, 0.3]))
    b = (np.array([2.0, 3.0, 4.0]), np.array([0.5, 0.0, 0.9]))
    c = (np.array([1.0, 2.0, 3.0, 4.0]), np.array([9.0, 0.4, 0.6, 9.0]))
    steps, median, low, high = seed_band([a, b, c])
    assert steps.tolist() == [2.0, 3.0]  # step 1 lacks b, step 4 lacks a
    assert median.tolist() == pytest.approx([0.4, 0.3])  # of (0.2, 0.5, 0.4), (0.3, 0.0, 0.6)
    assert low.tolist() == pytest.approx([0.2, 0.0])
    assert high.tolist() == pytest.approx([0.5, 0.6])
    assert all(x.size == 0 for x in seed_band([]))


def _run(label: str, seed: int, slope: float) -> RunData:
    rows = [{"step": s, "entropy/mean": 1.5 - slope * s + 0.01 * seed} for s in range(1, 41)]
    rows[0]["trap/p_frac"] = 0.0
    return RunData(Path(f"/x/{label}/seed{seed}"), f"{label} seed {seed}", {}, rows, [],
                   group=label)  # fmt: skip


def test_settings_figure_has_one_panel_per_setting(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib import image as mpimg

    groups = {lab: [_run(lab, k, sl) for k in range(3)]
              for lab, sl in (("ppo", 0.03), ("clip0.02", 0.01), ("bonus", 0.0))}  # fmt: skip
    png = settings_figure_png(groups, "entropy/mean", ylabel="nats", ncols=2)
    two_by_two = mpimg.imread(io.BytesIO(png), format="png")
    one_row = mpimg.imread(
        io.BytesIO(settings_figure_png(groups, "entropy/mean", ylabel="nats")), format="png"
    )
    # 3 settings in 2 columns: two rows of panels; in 4 columns: one row, wider and lower
    assert two_by_two.shape[0] > one_row.shape[0] and one_row.shape[1] > two_by_two.shape[1]
    with pytest.raises(ValueError, match="no run logged nope"):
        settings_figure_png(groups, "nope", ylabel="")
    written = write_settings_figures(
        groups, tmp_path, [("entropy/mean", "nats"), ("reward/mean", "reward")]
    )
    assert written == [tmp_path / "settings_entropy_mean.png"]  # nobody logged reward/mean
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_draws_entropy_reward_held_out_accuracy_then_task_curves_and_metrics_once():
    curves = compare_curves([("trap/p_frac", "P share"), ("acc/eval", "dup")],
                            ["eval/pass@4", "trap/p_frac", "eval/pass@4"])  # fmt: skip
    assert curves == [("entropy/mean", "entropy (nats / token)"), ("reward/mean", "mean reward"),
                      ("acc/eval", "held-out accuracy"), ("trap/p_frac", "P share"),
                      ("eval/pass@4", "eval/pass@4")]  # fmt: skip
    assert compare_curves()[2] == ("acc/eval", "held-out accuracy")
