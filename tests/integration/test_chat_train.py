"""Instruct models through the chat path: generation stops at the template's end-of-turn token
on both engines, the stop token is the last trained token, Trainer steps with data.chat_template
on Qwen2 and Llama with either engine, and run_info.json records what the run runs on.

Fixture models: tests/chat_models.py (random weights, trained BPE, ChatML / Llama-3 templates).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from entropy_rl.engine.build import build_engine
from entropy_rl.tasks.base import Example
from entropy_rl.train.config import build_config
from entropy_rl.train.encoding import Encoder, end_of_turn_id, stop_token_ids
from entropy_rl.train.trainer import Trainer

transformers = pytest.importorskip("transformers")

PROMPTS = [
    {"prompt": "What is 3 + 4?", "answer": "7"},
    {"prompt": "Ann has 5 coins and buys 2 more. How many?", "answer": "7", "system": "Be brief."},
    {"prompt": "Compute 9 minus 4.", "answer": "5"},
    {"prompt": "What is 10 + 12?", "answer": "22"},
]


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """One intra-op thread, as the trainer picks for models this small (and restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load(d: Path) -> tuple[Any, Any]:
    tok = transformers.AutoTokenizer.from_pretrained(d)
    return transformers.AutoModelForCausalLM.from_pretrained(d).eval(), tok


def _favour(model: Any, token: int, bias: float) -> Any:
    """Replace the lm_head by one with a bias of ``bias`` on ``token`` (the random model's logits
    are ~0, so p(token) ~ e^bias / (e^bias + V - 1) at every step)."""
    head = model.get_output_embeddings()
    new = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        new.weight.copy_(head.weight)
        new.bias.zero_()
        new.bias[token] = bias
    model.set_output_embeddings(new)
    model.config.tie_word_embeddings = False
    return model


@pytest.mark.parametrize("engine", ["kv", "hf"])
def test_generation_stops_at_the_end_of_turn_token(chat_model_dir: Path, engine: str):
    model, tok = _load(chat_model_dir)
    eot = end_of_turn_id(tok)
    assert eot is not None
    # V ~ 570: bias ln(569 * 0.3 / 0.7) = 5.5 -> p(eot) ~ 0.3 per step; P(no eot in 40) ~ 1e-6
    _favour(model, eot, 5.5)
    enc = Encoder(tok, chat_template=True)
    prompts = [enc.encode_prompt(p["prompt"]) for p in PROMPTS]
    stops = stop_token_ids(tok, model, chat_template=True)
    pad = tok.pad_token_id

    def run(stop: list[int], **kw: Any) -> Any:
        torch.manual_seed(0)
        e = build_engine(engine, model, pad_token_id=pad, stop_token_ids=stop)
        return e.generate(prompts, n=4, temperature=1.0, top_p=1.0, max_new_tokens=40, **kw)

    gen = run(stops)
    assert len(gen) == 16 and not any(gen.truncated)
    assert all(c[-1] == eot and eot not in c[:-1] for c in gen.completion_ids)
    assert len({len(c) for c in gen.completion_ids}) > 3  # stopped mid-way, at varied lengths
    texts = enc.decode(gen.completion_ids)
    assert not any(tok.convert_ids_to_tokens(eot) in t for t in texts)
    greedy = run(stops, greedy=True)  # argmax is eot at once
    assert greedy.completion_ids == [[eot]] * 4 and enc.decode(greedy.completion_ids) == [""] * 4
    # EOS alone (what the trainer passed before): the same draws run on past the end of turn
    eos_only = run([tok.eos_token_id])
    assert any(eot in c[:-1] for c in eos_only.completion_ids)


def _config(d: Path, out: Path, engine: str, **extra: object) -> Any:
    data = out.parent / "prompts.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    base: dict[str, object] = {
        "model.path": str(d), "run.out_dir": str(out), "run.steps": 2, "run.progress": False,
        "run.save_every": 0, "rollout.prompts_per_step": 2, "rollout.group_size": 4,
        "rollout.max_new_tokens": 12, "algo.micro_batch_size": 8, "algo.warmup_steps": 1,
        "algo.lr": 1e-3, "eval.every": 0, "rollout.engine": engine, "data.chat_template": True,
        "data.prompts": str(data), "data.eval_prompts": str(data),
        "data.system_prompt": "You answer with a number.",
    }  # fmt: skip
    base.update(extra)
    overrides = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in base.items()]
    return build_config(preset="grpo", overrides=overrides)


def _odd_length(example: Example, completion: str) -> float:
    return float(len(completion) % 2)


@pytest.mark.parametrize("engine", ["kv", "hf"])
def test_chat_path_training_steps_and_run_info(
    chat_model_dir: Path, tmp_path: Path, engine: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    trainer = Trainer(_config(chat_model_dir, out, engine), reward_fn=_odd_length)
    eot = end_of_turn_id(trainer.tokenizer)
    assert eot in trainer.stop_ids and set(trainer.engine.eos_ids) == set(trainer.stop_ids)
    info = json.loads((out / "run_info.json").read_text())
    assert info["engine"] == engine
    assert info["logits"] == trainer.settings().logits_mode == "full"  # V ~ 570 < 4096
    assert info["dtype"] == "float32"
    assert info["threads"] == torch.get_num_threads() == 1  # < 20M parameters on CPU
    assert info["device"] == "cpu" and info["chat_template"] is True
    assert info["stop_token_ids"] == trainer.stop_ids
    assert info["shared_prompt"] is True  # Qwen2 / Llama: each prompt once per forward
    assert trainer.optimizer.defaults["fused"] is True  # one AdamW kernel on CPU
    assert trainer.tokenizer.convert_ids_to_tokens(eot) in info["stop_tokens"]
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("entropy-rl:")]
    assert len(line) == 1
    assert f"engine={engine} logits=full dtype=float32 shared_prompt=on threads=1" in line[0]
    trainer.fit()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["update/optimizer_steps"] > 0 for r in rows)
    assert 0.0 < rows[0]["entropy/mean"] <= float(torch.log(torch.tensor(len(trainer.tokenizer))))


def test_the_stop_token_is_the_last_trained_token(chat_model_dir: Path, tmp_path: Path) -> None:
    model, tok = _load(chat_model_dir)
    eot = end_of_turn_id(tok)
    assert eot is not None
    _favour(model, eot, 4.0)  # p(eot) ~ 0.09 per step: some rows stop, some hit the 12-token cap
    cfg = _config(chat_model_dir, tmp_path / "run", "kv", **{"run.log_samples": 8})
    trainer = Trainer(cfg, model=model, tokenizer=tok, reward_fn=_odd_length)
    batch, metrics = trainer.rollout()
    assert batch is not None
    lens = batch.mask.sum(1).long()  # every row is in the loss (mask_truncated is off)
    stops = set(trainer.stop_ids)  # eot, and the tokenizer's EOS: either ends a completion
    stopped = [i for i in range(len(batch)) if int(batch.targets[i, lens[i] - 1]) in stops]
    assert 0 < len(stopped) < len(batch)  # both kinds present
    assert metrics["length/truncated_frac"] == pytest.approx(1 - len(stopped) / len(batch))
    for i in range(len(batch)):
        n = int(lens[i])
        assert batch.mask[i, :n].eq(1).all() and batch.mask[i, n:].eq(0).all()
        assert (batch.targets[i, n:] == -1).all()
        assert n == 12 or i in stopped  # a row shorter than the cap ended at eot
    metrics = trainer.update(batch)  # and the update takes it, eot included
    assert metrics["update/optimizer_steps"] > 0
    samples = (tmp_path / "run" / "samples.jsonl").read_text()
    assert tok.convert_ids_to_tokens(eot) not in samples  # decoded without special tokens
