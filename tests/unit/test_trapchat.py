"""trap-chat: rewards and answers by hand, the response prefix through the encoder, the exact
answer masses (aggregation by hand; log-probs against unbatched forwards of the tiny chat
models, tests/chat_models.py) and a training step through the trainer's chat path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from entropy_rl.errors import ConfigError
from entropy_rl.tasks import TrapChatTask, get_task
from entropy_rl.tasks.base import Example
from entropy_rl.tasks.trapchat import QUESTION, RESPONSE_PREFIX, sequence_logprobs
from entropy_rl.train.config import DataConfig
from entropy_rl.train.data import build_task

transformers = pytest.importorskip("transformers")


def _ex(low: int, high: int) -> Example:
    return Example(prompt=QUESTION.format(low=low, high=high), meta={"low": low, "high": high})


def _load(d: Path) -> tuple[Any, Any]:
    tok = transformers.AutoTokenizer.from_pretrained(d)
    return transformers.AutoModelForCausalLM.from_pretrained(d).eval(), tok


# ---------------------------------------------------------------- task and reward
@pytest.mark.parametrize(
    ("window", "completion", "reward"),
    [
        ((12, 20), " 18.", 1.0),  # the window's multiple of 9, with the period
        ((12, 20), "18", 1.0),
        ((12, 20), " 14", 0.5),  # valid, not a multiple of 9
        ((12, 20), " 12. ", 0.5),  # both bounds are in the window; whitespace is cleaned
        ((12, 20), " 20", 0.5),
        ((12, 20), " 14.<eos>junk", 0.5),  # cleaned up to a literal <eos>
        ((12, 20), " 27.", 0.0),  # a multiple of 9 outside the window
        ((12, 20), " 9", 0.0),
        ((12, 20), " 11", 0.0),
        ((21, 29), " 27.", 1.0),
        ((21, 29), " 18.", 0.0),
        ((147, 155), " 153", 1.0),
        ((12, 20), "014", 0.0),  # no leading zero
        ((12, 20), " 14 apples", 0.0),  # more text after the number
        ((12, 20), "14..", 0.0),
        ((12, 20), "fourteen", 0.0),
        ((12, 20), "", 0.0),
    ],
)
def test_reward_values(window: tuple[int, int], completion: str, reward: float):
    assert get_task("trap-chat").reward(_ex(*window), completion) == reward


def test_prompts_answers_and_prefix():
    ev = get_task("trap-chat").eval_set()
    assert [(e.meta["low"], e.meta["high"]) for e in ev[:2]] == [(12, 20), (21, 29)]
    assert (ev[-1].meta["low"], ev[-1].meta["high"]) == (147, 155) and len(ev) == 16
    assert ev[1].prompt == "Pick a number between 21 and 29. Reply with the number only."
    assert ev[1].meta["response_prefix"] == RESPONSE_PREFIX == "My number is"
    task = get_task("trap-chat", first=10, prompts=3, width=5, divisor=4)
    assert [(e.meta["low"], e.meta["high"]) for e in task.eval_set()] == [
        (10, 14), (15, 19), (20, 24),
    ]  # fmt: skip
    assert task.classify(_ex(10, 14), " 12.") == (True, True, "12")  # 4 divides 12
    assert task.classify(_ex(10, 14), " 13") == (True, False, "13")
    assert task.classify(_ex(10, 14), " 16") == (False, False, "16")
    train = task.sample_train(200, __import__("random").Random(0))
    assert {e.meta["low"] for e in train} == {10, 15, 20}
    assert task.canonical_answers(3, 4) == [(3, " 3"), (3, " 3."), (4, " 4"), (4, " 4.")]
    bare = get_task("trap-chat", response_prefix="")
    assert "response_prefix" not in bare.eval_set()[0].meta
    assert bare.canonical_answers(1, 1) == [(1, "1"), (1, "1.")]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"first": 0}, "first >= 1"),
        ({"prompts": 0}, "prompts >= 1"),
        ({"width": 1}, "width >= 2"),
        ({"divisor": 10}, r"divisor must be in 2\.\.9"),
        ({"divisor": 1}, r"divisor must be in 2\.\.9"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, Any], match: str):
    with pytest.raises(ConfigError, match=match):
        build_task(DataConfig(task="trap-chat", task_kwargs=kwargs, chat_template=True))


def test_without_the_chat_template_is_a_config_error():
    with pytest.raises(ConfigError, match=r"asks a chat model: set data\.chat_template=true"):
        build_task(DataConfig(task="trap-chat"))
    assert isinstance(build_task(DataConfig(task="trap-chat", chat_template=True)), TrapChatTask)


def test_rollout_metrics_by_hand():
    task = get_task("trap-chat")
    texts = [" 18.", " 12", " 27", "Sure! 27"]  # G = 2 per prompt
    out = task.rollout_metrics([_ex(12, 20), _ex(21, 29)], texts, [1.0, 0.5, 1.0, 0.0])
    assert out == {"trap/p_frac": 0.5, "trap/valid_frac": 0.75}


# ---------------------------------------------------------------- the prefix and exact masses
def test_response_prefix_follows_the_generation_prompt(chat_model_dir: Path):
    from entropy_rl.train.encoding import Encoder

    _, tok = _load(chat_model_dir)
    prefix = tok("My number is", add_special_tokens=False)["input_ids"]
    for chat in (True, False):
        enc = Encoder(tok, chat_template=chat)
        ex = Example("Pick a number.", meta={"response_prefix": "My number is"})
        assert enc.encode(ex) == enc.encode_prompt("Pick a number.") + prefix
        assert enc.encode(Example("Pick a number.")) == enc.encode_prompt("Pick a number.")


def test_sequence_logprobs_match_unbatched_forwards(chat_model_dir: Path):
    model, tok = _load(chat_model_dir)
    p1 = tok("Pick a number between 1 and 20.")["input_ids"]
    p2 = tok("Pick one.")["input_ids"]
    prompts = [p1, p1, p1, p2, p2]  # rows sharing a prompt sit next to each other
    completions = [[5, 9, 2], [7], [5, 9, 3, 4], [11, 2], [8]]
    got = sequence_logprobs(model, prompts, completions, pad_token_id=0, chunk=4)  # 2 chunks
    hot = sequence_logprobs(model, prompts, completions, pad_token_id=0, temperature=2.0)
    for r, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + c])).logits[0]  # (L, V), no padding
        for temp, out in ((1.0, got), (2.0, hot)):
            logp = torch.log_softmax(logits / temp, -1)
            ref = sum(float(logp[len(p) - 1 + t, c[t]]) for t in range(len(c)))
            assert float(out[r]) == pytest.approx(ref, abs=2e-5)
    assert not model.training  # restored: it came in eval mode
    model.train()
    sequence_logprobs(model, [p1], [[5]], pad_token_id=0)
    assert model.training
    with pytest.raises(ValueError, match="pairs"):
        sequence_logprobs(model, [p1], [[5], [6]], pad_token_id=0)
    with pytest.raises(ValueError, match="at least one token"):
        sequence_logprobs(model, [p1], [[]], pad_token_id=0)


def test_exact_masses_sum_the_canonical_answers_by_hand(monkeypatch: pytest.MonkeyPatch):
    import entropy_rl.tasks.trapchat as trapchat

    class Tok:
        eos_token_id, pad_token_id, chat_template = 2, 0, "x"

        def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
            return {"input_ids": [ord(ch) for ch in text]}

        def apply_chat_template(self, *a: Any, **kw: Any) -> str:
            raise ValueError("no template")  # end_of_turn_id -> None: eos ends the answer

    class Enc:
        chat_template = True

        def encode(self, e: Example) -> list[int]:
            return [100 + int(e.meta["low"])]

    # window 1..2: pi(" n") = pi(" n.") = 0.2; window 3..4: pi(" n") = 0.1 n, pi(" n.") = 0.01 n
    def fake(model, prompts, completions, *, pad_token_id, temperature=1.0, chunk=512):
        assert pad_token_id == 0 and temperature == 0.5
        out = []
        for p, c in zip(prompts, completions, strict=True):
            assert c[-1] == 2 and chr(c[0]) == " "  # the end token, the space after the prefix
            text = "".join(chr(x) for x in c[1:-1])
            n = int(text.rstrip("."))
            prob = 0.2 if p == [101] else (0.01 if text.endswith(".") else 0.1) * n
            out.append(float(torch.tensor(prob).log()))
        return torch.tensor(out)

    monkeypatch.setattr(trapchat, "sequence_logprobs", fake)
    task = get_task("trap-chat", first=1, prompts=2, width=2, divisor=2)
    p_mass, v_mass = task.exact_masses(None, Tok(), task.eval_set(), temperature=0.5, encoder=Enc())
    # window 1..2: answers 1, 2, two forms each at 0.2: valid 0.8, P (n = 2) 0.4
    # window 3..4: valid 0.11 (3 + 4) = 0.77, P (n = 4) 0.11 * 4 = 0.44
    assert p_mass == pytest.approx([0.4, 0.44], abs=1e-6)
    assert v_mass == pytest.approx([0.8, 0.77], abs=1e-6)
    with pytest.raises(ConfigError, match=r"data\.chat_template=true"):
        task.exact_masses(None, Tok(), task.eval_set(), encoder=None)


def test_a_training_step_and_the_start_prior(chat_model_dir: Path, tmp_path: Path):
    from entropy_rl.train.config import build_config
    from entropy_rl.train.trainer import Trainer

    out = tmp_path / "run"
    cfg = build_config(
        preset="grpo",
        overrides=[
            f"model.path={chat_model_dir}", "data.task=trap-chat", "data.chat_template=true",
            "data.task_kwargs={first: 10, prompts: 2, width: 3, divisor: 3}", "rollout.prompts_per_step=2",
            "rollout.group_size=2", "eval.every=1", "eval.samples=2", "run.steps=1",
            f"run.out_dir={out}", "run.progress=false", "run.save_every=0",
        ],
    )  # fmt: skip
    trainer = Trainer(cfg)
    assert isinstance(trainer.task, TrapChatTask)
    trainer.fit()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    start, step = rows[0], rows[-1]
    assert start["step"] == 0 and step["step"] == 1
    # random weights: every canonical answer has a small, positive exact probability
    assert 0.0 < start["trap/prior_p"] < start["trap/prior_valid"] < 0.05
    assert start["trap/prior_p_min"] <= start["trap/prior_p"] <= start["trap/prior_p_max"]
    assert 0.0 < step["trap/p_prob_eval"] < step["trap/valid_prob_eval"]
    assert {"trap/p_frac", "trap/valid_frac", "trap/trapped_eval"} <= set(step)
