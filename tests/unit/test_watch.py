"""Tests for entropy_rl.integrations.watch and the metric-name tables it uses."""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from entropy_rl.errors import MissingExtraError, UserError
from entropy_rl.integrations._names import detect_naming, map_metrics
from entropy_rl.integrations.watch import MetricStream, detect_format, parse_stream, watch

# A collapse with flat reward, hand-worked against the detector's defaults (window 10, drop
# frac 0.5, acc gain 0.02, floor 0.05 before 50% of training):
# steps 1-4: entropy 1.0; step 5: 0.04 -> drop (1.0 - 0.04) / 1.0 = 0.96 > 0.5 while reward
# moved 0 < 0.02: entropy_drop fires; and 0.04 < 0.05 at 5/12 = 42% < 50%: entropy_floor fires.
# Steps 6-12 stay at 0.04: both conditions hold, neither re-fires (not re-armed).
ENTROPY = [1.0, 1.0, 1.0, 1.0, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04]


def trl_rows() -> list[dict]:
    return [
        {"step": k, "entropy": h, "reward": 0.5, "loss": 0.1, "epoch": k / 12}
        for k, h in enumerate(ENTROPY, start=1)
    ]


def write_trl_dir(root: Path, rows: list[dict], *, max_steps: int = 12) -> None:
    root.mkdir(parents=True, exist_ok=True)
    state = {"global_step": rows[-1]["step"], "max_steps": max_steps, "log_history": rows}
    (root / "trainer_state.json").write_text(json.dumps(state))


# --------------------------------------------------------------------------- name tables


def test_map_trl_names() -> None:
    row = {
        "step": 3,
        "entropy": 0.7,
        "clip_ratio/high_mean": 0.01,
        "clip_ratio/low_mean": 0.02,
        "clip_ratio/region_mean": 0.03,
        "reward": 0.4,
        "completions/mean_length": 12.0,
        "completions/clipped_ratio": 0.25,
        "kl": 0.001,
        "learning_rate": 1e-6,
        "grad_norm": 2.0,
        "rewards/acc/mean": 0.4,
        "epoch": 0.5,
        "cov/logp_adv": -0.2,  # already ours (our callback or EntropyGRPOTrainer): kept
        "bad": float("nan"),  # non-finite: dropped
        "text": "x",  # non-numeric: dropped
    }
    assert map_metrics(row, naming="trl") == {
        "step": 3,
        "entropy/mean": 0.7,
        "clip/upper_frac": 0.01,
        "clip/lower_frac": 0.02,
        "trl/clip_ratio/region_mean": 0.03,
        "reward/mean": 0.4,
        "length/mean": 12.0,
        "length/truncated_frac": 0.25,
        "kl/ref": 0.001,
        "lr": 1e-6,
        "grad/norm": 2.0,
        "trl/rewards/acc/mean": 0.4,
        "trl/epoch": 0.5,
        "cov/logp_adv": -0.2,
    }


def test_map_our_name_wins_over_mapped_duplicate() -> None:
    # EntropyGRPOTrainer logs entropy/mean itself; TRL's "entropy" must not overwrite it.
    row = {"entropy": 0.9, "entropy/mean": 0.5}
    assert map_metrics(row, naming="trl") == {"entropy/mean": 0.5}


def test_map_verl_names() -> None:
    row = {
        "step": 7,
        "actor/entropy": 0.6,
        "actor/pg_clipfrac": 0.05,  # either side: not split, kept under verl/
        "actor/pg_clipfrac_lower": 0.001,  # dual clip
        "actor/ppo_kl": 0.002,  # k1, not our k3
        "actor/clip/upper_frac": 0.03,  # from our erl_* loss, prefixed by verl
        "critic/score/mean": 0.3,
        "response_length/mean": 200.0,
        "response_length/clip_ratio": 0.1,
        "val-core/gsm8k/acc/mean@4": 0.5,
        "val-core/math/acc/mean@4": 0.7,  # two sources: acc/eval is their mean, 0.6
        "val-core/gsm8k/acc/best@4/mean": 0.8,
        "val-core/math/acc/best@4/mean": 0.9,
        "timing_s/step": 12.5,
    }
    out = map_metrics(row, naming="verl")
    assert out.pop("acc/eval") == pytest.approx(0.6, abs=1e-12)
    assert out.pop("eval/pass@4") == pytest.approx(0.85, abs=1e-12)
    assert out == {
        "step": 7,
        "entropy/mean": 0.6,
        "verl/actor/pg_clipfrac": 0.05,
        "clip/dual_frac": 0.001,
        "verl/actor/ppo_kl": 0.002,
        "clip/upper_frac": 0.03,
        "reward/mean": 0.3,
        "length/mean": 200.0,
        "length/truncated_frac": 0.1,
        "time/step": 12.5,
    }


def test_detect_naming() -> None:
    assert detect_naming({"entropy/mean", "entropy"}) == "entropy_rl"
    assert detect_naming({"actor/entropy"}) == "verl"
    assert detect_naming({"entropy", "loss"}) == "trl"
    assert detect_naming({"loss", "epoch"}) is None


def test_map_unknown_naming() -> None:
    with pytest.raises(ValueError, match="unknown metric naming 'wandb'; allowed: entropy_rl"):
        map_metrics({}, naming="wandb")


# --------------------------------------------------------------------------- readers


def test_parse_our_metrics_with_torn_last_line(tmp_path: Path) -> None:
    lines = [json.dumps({"step": 1, "entropy/mean": 0.5}), json.dumps({"step": 2, "x": 1})]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 3, "entr')
    assert detect_format(tmp_path) == ("jsonl", tmp_path / "metrics.jsonl")
    assert parse_stream(tmp_path) == [{"step": 1, "entropy/mean": 0.5}, {"step": 2, "x": 1.0}]


def test_our_planned_steps_come_from_the_newest_config_segment(tmp_path: Path) -> None:
    """A run extended from 50 to 100 steps (--resume ... run.steps=100 writes
    config.step_50.yaml) plans 100: the entropy_floor rule's share of training reads it."""
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "entropy/mean": 0.5}) + "\n")
    (tmp_path / "config.yaml").write_text("run:\n  steps: 50\n")
    stream = MetricStream(tmp_path)
    stream.poll(final=True)
    assert stream.total_steps == 50
    (tmp_path / "config.step_50.yaml").write_text("run:\n  steps: 100\n")
    assert stream.total_steps == 100


def test_parse_corrupt_middle_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "entropy/mean": 0.5}\n{"step": 2,\n{"step": 3}\n')
    with pytest.raises(UserError, match=r"m.jsonl:2: not a JSON object"):
        parse_stream(path)


def test_parse_trl_dir_picks_newest_state_and_merges_eval_rows(tmp_path: Path) -> None:
    old = [{"step": 1, "entropy": 0.9, "reward": 0.1}]
    write_trl_dir(tmp_path, old)
    new = [
        {"step": 1, "entropy": 0.8, "reward": 0.2},
        {"step": 2, "entropy": 0.7, "reward": 0.3},
        {"step": 2, "eval_reward": 0.35},  # TRL logs eval in its own row at the same step
    ]
    write_trl_dir(tmp_path / "checkpoint-2", new)
    t = time.time()
    os.utime(tmp_path / "trainer_state.json", (t - 100, t - 100))
    os.utime(tmp_path / "checkpoint-2" / "trainer_state.json", (t, t))
    stream = MetricStream(tmp_path)
    assert stream.poll(final=True) == [
        {"step": 1, "entropy/mean": 0.8, "reward/mean": 0.2},
        {"step": 2, "entropy/mean": 0.7, "reward/mean": 0.3, "trl/eval_reward": 0.35},
    ]
    assert (stream.format, stream.naming, stream.total_steps) == ("trl", "trl", 12)


def test_parse_verl_file_logger_flat_and_console_lines(tmp_path: Path) -> None:
    path = tmp_path / "verl.jsonl"
    path.write_text(
        json.dumps({"step": 1, "data": {"actor/entropy": 0.6, "critic/score/mean": 0.1}})
        + "\n"
        + json.dumps({"step": 2, "actor/entropy": 0.5})
        + "\n(TaskRunner pid=1) some log line\n"
        + "step:3 - actor/entropy:0.4 - critic/score/mean:0.3\n"
    )
    assert parse_stream(path) == [
        {"step": 1, "entropy/mean": 0.6, "reward/mean": 0.1},
        {"step": 2, "entropy/mean": 0.5},
        {"step": 3, "entropy/mean": 0.4, "reward/mean": 0.3},
    ]


def test_parse_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no metric stream found"):
        parse_stream(tmp_path)
    (tmp_path / "x.jsonl").write_text('{"step": 1, "foo": 2}\n')
    with pytest.raises(UserError, match="metric names not recognised"):
        parse_stream(tmp_path)


def test_tensorboard_missing_names_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "events.out.tfevents.1.host").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'entropy-rl\[tensorboard\]'"):
        parse_stream(tmp_path)


def test_tensorboard_trl_tags(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "runs" / "a"))
    for k, h in enumerate([0.9, 0.8, 0.7], start=1):
        writer.add_scalar("train/entropy", h, k)  # TRL's TensorBoardCallback prefixes train/
        writer.add_scalar("train/reward", 0.1 * k, k)
    writer.close()
    rows = parse_stream(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["entropy/mean"] for r in rows] == pytest.approx([0.9, 0.8, 0.7], abs=1e-6)
    assert [r["reward/mean"] for r in rows] == pytest.approx([0.1, 0.2, 0.3], abs=1e-6)


# --------------------------------------------------------------------------- watch


def test_watch_no_follow_trl_dir_reports_collapse(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    run = tmp_path / "trl-out"
    write_trl_dir(run, trl_rows())
    out = io.StringIO()
    n = watch(run, follow=False, report_dir=tmp_path / "rep", out=out)
    assert n == 2
    lines = out.getvalue().splitlines()
    event_lines = [ln for ln in lines if ln.startswith("step ")]
    assert len(event_lines) == 2
    assert "WARNING" in event_lines[0] and "entropy_drop" in event_lines[0]
    assert "CRITICAL" in event_lines[1] and "entropy_floor" in event_lines[1]
    assert event_lines[0].split()[1] == "5"
    assert "12 planned steps" in lines[0]  # TRL's max_steps
    assert "12 steps read, 2 collapse events" in out.getvalue()
    events = [
        json.loads(ln) for ln in (tmp_path / "rep" / "events.jsonl").read_text().split("\n")[:-1]
    ]
    assert [(e["step"], e["rule"], e["severity"]) for e in events] == [
        (5, "entropy_drop", "warning"),
        (5, "entropy_floor", "critical"),
    ]
    # drop uses reward/mean as the accuracy proxy for TRL: gain 0 over the window
    assert events[0]["values"]["acc_gain"] == 0.0
    metrics = (tmp_path / "rep" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(metrics[4]) == {
        "step": 5,
        "entropy/mean": 0.04,
        "reward/mean": 0.5,
        "loss/total": 0.1,
        "trl/epoch": 5 / 12,
    }
    assert (tmp_path / "rep" / "report.html").is_file()


def test_watch_no_follow_length_from_data_and_detector_kwargs(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(
        "".join(
            json.dumps({"step": k, "actor/entropy": h}) + "\n" for k, h in enumerate(ENTROPY, 1)
        )
    )
    out = io.StringIO()
    # no accuracy at all -> entropy_drop cannot be evaluated; floor with total = last step 12
    n = watch(path, follow=False, detector_kwargs={"accuracy_keys": ["acc/train"]}, out=out)
    assert n == 1
    assert "entropy_floor" in out.getvalue() and "12 planned steps" in out.getvalue()


def test_watch_follow_sees_lines_as_they_are_written(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    path.write_text("")

    def writer() -> None:
        for k, h in enumerate(ENTROPY, start=1):
            with open(path, "a") as f:
                row = {"step": k, "actor/entropy": h, "critic/score/mean": 0.5}
                text = json.dumps(row) + "\n"
                f.write(text[:10])  # a torn line between two polls must wait for its end
                f.flush()
                time.sleep(0.01)
                f.write(text[10:])
            time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    out = io.StringIO()
    n = watch(path, follow=True, poll_s=0.02, idle_stop_s=0.5, total_steps=12, out=out)
    thread.join()
    assert n == 2
    assert "12 steps read, 2 collapse events" in out.getvalue()


def test_watch_follow_unknown_length_turns_floor_off(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(
        "".join(
            json.dumps({"step": k, "actor/entropy": h}) + "\n" for k, h in enumerate(ENTROPY, 1)
        )
    )
    out = io.StringIO()
    n = watch(path, follow=True, poll_s=0.01, idle_stop_s=0.05, out=out)
    assert n == 0
    assert "entropy_floor rule off" in out.getvalue()


def test_watch_follow_nothing_appears(tmp_path: Path) -> None:
    out = io.StringIO()
    assert watch(tmp_path / "not-yet", follow=True, poll_s=0.01, idle_stop_s=0.05, out=out) == 0
    assert "0 steps read" in out.getvalue()


def test_watch_argument_errors(tmp_path: Path) -> None:
    write_trl_dir(tmp_path, trl_rows())
    with pytest.raises(ValueError, match="poll_s must be"):
        watch(tmp_path, poll_s=0)
    with pytest.raises(ValueError, match="total_steps must be"):
        watch(tmp_path, total_steps=0)
    with pytest.raises(ValueError, match="unknown detector options"):
        watch(tmp_path, follow=False, detector_kwargs={"nope": 1})
    with pytest.raises(ValueError, match="is the run being read"):
        watch(tmp_path, follow=False, report_dir=tmp_path)


# --------------------------------------------------------------------------- trackers
# (train.logging; wandb and mlflow are replaced by recording stubs of the calls we use)


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name: str):
        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return self

        return record


def test_wandb_logger_sends_finite_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from entropy_rl.train.logging import make_loggers

    fake = _Recorder()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    config = {"run": {"name": "dapo-s0", "seed": 0}}
    (logger,) = make_loggers(["wandb"], tmp_path, config)
    logger.log(3, {"step": 3, "entropy/mean": 0.5, "entropy/pos_3": float("nan"), "ok": True})
    logger.close()
    assert fake.calls == [
        (
            "init",
            (),
            {"project": "entropy-rl", "name": "dapo-s0", "dir": str(tmp_path), "config": config},
        ),
        ("log", ({"entropy/mean": 0.5},), {"step": 3}),
        ("finish", (), {}),
    ]


def test_mlflow_logger_params_and_key_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from entropy_rl.train.logging import make_loggers, mlflow_key

    fake = _Recorder()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (logger,) = make_loggers(["mlflow"], tmp_path, {"run": {"name": "r1"}, "algo": {"eps": 0.2}})
    logger.log(2, {"eval/pass@4": 0.9, "reward/mean": float("inf")})
    logger.close()
    assert fake.calls == [
        ("set_tracking_uri", ((tmp_path / "mlruns").resolve().as_uri(),), {}),
        ("set_experiment", ("entropy-rl",), {}),
        ("start_run", (), {"run_name": "r1"}),
        ("log_params", ({"run.name": "r1", "algo.eps": "0.2"},), {}),
        ("log_metrics", ({"eval/pass_at_4": 0.9},), {"step": 2}),
        ("end_run", (), {}),
    ]
    assert mlflow_key("entropy/pos_0") == "entropy/pos_0"
    assert mlflow_key("a@b#c") == "a_at_b_c"


def test_make_loggers_jsonl_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from entropy_rl.train.logging import make_loggers

    (logger,) = make_loggers(["jsonl"], tmp_path, {})
    logger.log(1, {"step": 1, "entropy/mean": 0.5})
    logger.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "entropy/mean": 0.5}
    with pytest.raises(ValueError, match=r"unknown logger\(s\) \['neptune'\]; valid: jsonl"):
        make_loggers(["neptune"], tmp_path, {})
    with pytest.raises(ValueError, match="named more than once"):
        make_loggers(["jsonl", "jsonl"], tmp_path, {})
    for name in ("wandb", "mlflow"):
        monkeypatch.setitem(sys.modules, name, None)
        with pytest.raises(MissingExtraError, match=rf"pip install 'entropy-rl\[{name}\]'"):
            make_loggers([name], tmp_path, {})
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(MissingExtraError, match=r"entropy-rl\[tensorboard\]"):
        make_loggers(["tensorboard"], tmp_path, {})


def test_watch_prints_what_would_act_on_each_event_in_that_host(tmp_path: Path) -> None:
    from entropy_rl.control.detector import RULES
    from entropy_rl.integrations._hints import HOSTS, event_hint

    run = tmp_path / "trl-out"
    write_trl_dir(run, trl_rows())
    out = io.StringIO()
    assert watch(run, follow=False, out=out) == 2
    lines = out.getvalue().splitlines()
    i = next(k for k, ln in enumerate(lines) if "entropy_drop" in ln)
    assert lines[i + 1] == (
        '              -> in TRL: EntropyCallback(preset="rate-clip") narrows the clip while'
        " entropy falls faster than scheduled; or"
        ' EntropyCallback(detector_kwargs={"entropy_drop_action": "raise_eps_high"})'
    )
    assert "entropy_floor" in lines[i + 2]
    assert lines[i + 3].endswith('EntropyCallback(preset="target-schedule") raises the entropy'
                                 " bonus while entropy is under its target; or"
                                 ' EntropyCallback(detector_kwargs={"entropy_floor_action":'
                                 ' "raise_entropy_coef"})')  # fmt: skip
    path = tmp_path / "verl.jsonl"
    path.write_text("".join(json.dumps({"step": k, "actor/entropy": h}) + "\n"
                            for k, h in enumerate(ENTROPY, 1)))  # fmt: skip
    out = io.StringIO()
    watch(path, follow=False, out=out)
    assert "-> in verl: +entropy_rl.preset=target-schedule raises the entropy bonus" in (
        out.getvalue()
    )
    assert event_hint("repetition_rise", "entropy_rl") == (
        "in entropy-rl: control.detector_kwargs.repetition_rise_action=stop"
    )
    assert event_hint("truncation", "verl") == "in verl: raise data.max_response_length"
    for rule in RULES:  # every rule has a line in every host
        for naming in HOSTS:
            assert event_hint(rule, naming).startswith(f"in {HOSTS[naming]}: ")
    with pytest.raises(ValueError, match="no hint"):
        event_hint("entropy_drop", "openrlhf")


def test_a_file_that_is_no_metric_stream_is_refused_in_one_line(tmp_path: Path) -> None:
    """Binary data, text without line breaks, and lines none of which is a metrics row: each
    is a UserError naming the file and what it holds (it was "0 steps read", exit 0)."""
    binary = tmp_path / "blob.jsonl"
    binary.write_bytes(b"\x89PNG\r\n" + bytes(range(256)) * 4)  # 6 bytes, then the NUL
    with pytest.raises(UserError, match=r"blob.jsonl: binary data \(a NUL byte at offset 6\); not a metric stream"):  # fmt: skip
        watch(binary, follow=False, out=io.StringIO())
    one_line = tmp_path / "one.jsonl"
    one_line.write_bytes(b"x" * ((1 << 20) + 1))  # no newline, longer than any metrics row
    with pytest.raises(UserError, match=r"one.jsonl: more than 1048576 bytes without a line break"):
        watch(one_line, follow=False, out=io.StringIO())
    prose = tmp_path / "notes.jsonl"
    prose.write_text("hello\nworld\n[1, 2]\n")
    with pytest.raises(UserError, match=r"notes.jsonl: none of its 3 line\(s\) is a metrics row"):
        watch(prose, follow=False, out=io.StringIO())
