"""trap: rewards, rare answers, the exact answer probabilities (on a model whose probabilities
are set by hand, and against unbatched forwards of a real tiny model), and the metrics."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from entropy_rl.tasks import TrapTask, builtin_checkpoint, get_task
from entropy_rl.tasks.base import Example, checkpoint_name
from entropy_rl.tasks.tokenizer import build_char_tokenizer
from entropy_rl.tasks.trap import completion_logprobs, trap_sample_stats
from entropy_rl.train.config import ConfigError, DataConfig
from entropy_rl.train.data import build_task

EOS = 2


def _digit(d: str) -> int:
    return 4 + int(d)  # '0'..'9' are ids 4..13 (tasks/tokenizer.py)


class PositionTable(torch.nn.Module):
    """A policy whose logits at position t are ``table[t]``, whatever the tokens: for a prompt
    whose '=' sits at position s, pi(a b c <eos>) = q_s(a) q_{s+1}(b) q_{s+2}(c) q_{s+3}(<eos>)."""

    def __init__(self) -> None:
        super().__init__()
        probs = {
            2: {_digit("3"): 0.5, _digit("2"): 0.25, _digit("1"): 0.25},
            3: {_digit("0"): 0.5, _digit("1"): 0.25, EOS: 0.25},
            4: {_digit("3"): 0.5, _digit("2"): 0.5},
            5: {EOS: 0.8, _digit("0"): 0.2},
            6: {EOS: 1.0},
        }
        table = torch.zeros(8, 19)  # rows 0, 1, 7: uniform (never scored)
        for row, dist in probs.items():
            table[row] = -math.inf
            for tok, p in dist.items():
                table[row, tok] = math.log(p)
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return SimpleNamespace(logits=self.table[position_ids])  # (B, T, V)


def _ex(n: int) -> Example:
    return Example(prompt=f"{n}=", meta={"target": n, "hard": False})


# ---------------------------------------------------------------- task and reward
@pytest.mark.parametrize(
    ("n", "completion", "valley", "palindrome"),
    [
        (6, "303", 1.0, 1.0),  # 3+0+3 = 6, a = c, 0 < 3
        (6, "222", 0.5, 1.0),  # a = c but b = a: a palindrome, not a valley
        (6, "312", 0.5, 0.5),  # valid, not a palindrome
        (6, "313", 0.0, 0.0),  # a palindrome summing to 7: invalid
        (6, " 303<eos>junk", 1.0, 1.0),  # cleaned like digitsum
        (6, "3030", 0.0, 0.0),
        (14, "707", 1.0, 1.0),
        (14, "464", 0.5, 1.0),  # 6 > 4
    ],
)
def test_reward_values(n, completion, valley, palindrome):
    assert get_task("trap").reward(_ex(n), completion) == valley
    assert get_task("trap", rare="palindrome").reward(_ex(n), completion) == palindrome


def test_rare_answers_by_hand():
    task = get_task("trap")
    assert isinstance(task, TrapTask)
    assert task.rare_answers(6) == ["303"]  # 2a + b = 6, b < a: only a = 3, b = 0
    assert task.rare_answers(14) == ["545", "626", "707"]  # a = 5, 6, 7 (a = 4 gives b = 6)
    assert get_task("trap", rare="palindrome").rare_answers(6) == ["060", "141", "222", "303"]
    # 1-3 valley answers on every training prompt
    assert [len(task.rare_answers(n)) for n in range(6, 22)] == [1, 1, 2, 1, 2, 2, 2, 2, 3, 2,
                                                                 3, 3, 3, 3, 3, 2]  # fmt: skip
    # the held-out set is the training prompts, each once (no hard prompts)
    assert [e.prompt for e in task.eval_set()] == [f"{n}=" for n in range(6, 22)]


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match=r"unknown rare property 'odd'.*valley_palindrome"):
        build_task(DataConfig(task="trap", task_kwargs={"rare": "odd"}))
    with pytest.raises(ConfigError, match=r"N = \[1, 3\]"):  # 1: 010 (b > a); 3: 111 (b = a)
        build_task(DataConfig(task="trap", task_kwargs={"train_targets": [1, 6]}))


def test_trap_starts_from_digitsum_checkpoint():
    assert checkpoint_name("trap") == "digitsum"
    assert checkpoint_name("wordpick") == "wordpick"
    assert checkpoint_name("no-such-task") == "no-such-task"
    assert builtin_checkpoint("trap") == builtin_checkpoint("digitsum")


# ---------------------------------------------------------------- exact probabilities
def test_completion_logprobs_by_hand():
    tok = build_char_tokenizer()
    prompts = ["6=", "6=", "21=", "6=", "6="]
    completions = ["303", "213", "030", "999", "3"]
    got = completion_logprobs(PositionTable(), tok, prompts, completions).exp()
    # "6=": '=' at position 2.  303: .5 * .5 * .5 * .8 = .1;  213: .25 * .25 * .5 * .8 = .025
    # "21=": '=' at position 3 (left padding must not shift it): 0 .5, 3 .5, 0 .2, <eos> 1 = .05
    # 999: q_2(9) = 0;  "3" then <eos>: .5 * q_3(<eos>) .25 = .125
    want = torch.tensor([0.1, 0.025, 0.05, 0.0, 0.125])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    # T = 2: softmax(z / 2) = sqrt(p) renormalised. "3": q_2(3) = .7071 / (.7071 + .5 + .5)
    # = .414214, q_3(<eos>) = .5 / (.7071 + .5 + .5) = .292893; product .121320
    hot = completion_logprobs(PositionTable(), tok, ["6="], ["3"], temperature=2.0).exp()
    torch.testing.assert_close(hot, torch.tensor([0.121320]), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="pairs"):
        completion_logprobs(PositionTable(), tok, ["6="], ["3", "4"])


def test_completion_logprobs_matches_unbatched_forwards():
    from entropy_rl.tasks.model import build_tiny_model

    tok = build_char_tokenizer()
    model = build_tiny_model(19, layers=2, hidden=32, heads=2, kv_heads=1, mlp=64, seed=3)
    prompts = ["6=", "21=", "13=", "7="]
    completions = ["303", "99", "4450", ""]
    got = completion_logprobs(model, tok, prompts, completions, chunk=3)  # 2 chunks
    for r, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids = tok(p)["input_ids"] + tok(c, add_special_tokens=False)["input_ids"] + [EOS]
        n_prompt = len(tok(p)["input_ids"])
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]  # (T, V), no padding
        logp = torch.log_softmax(logits, -1)
        ref = sum(float(logp[t - 1, ids[t]]) for t in range(n_prompt, len(ids)))
        assert float(got[r]) == pytest.approx(ref, abs=1e-5)


def test_exact_masses_and_start_metrics_by_hand():
    tok = build_char_tokenizer()
    task = get_task("trap", train_targets=(6, 10))
    # answers with mass under the table: a in {3, 2, 1}, b in {0, 1}, c in {3, 2}
    # 6=: valid 303 (.1), 312 (.5 * .25 * .5 * .8 = .05), 213 (.025); P: 303 -> P .1, valid .175
    # 7=: valid 313 only (.05), a valley palindrome; 8=, 9=: no valid answer has mass (max 7)
    # 10= (3 characters): a in {0, 1}, b in {3, 2}, c = 0: sums <= 4, nothing valid
    p_mass, v_mass = task.exact_masses(PositionTable(), tok, task.eval_set())
    assert p_mass == pytest.approx([0.1, 0.05, 0.0, 0.0, 0.0], abs=1e-7)
    assert v_mass == pytest.approx([0.175, 0.05, 0.0, 0.0, 0.0], abs=1e-7)
    start = task.start_metrics(PositionTable(), tok)
    assert start == pytest.approx({"trap/prior_p": 0.03, "trap/prior_p_min": 0.0,
                                   "trap/prior_p_max": 0.1, "trap/prior_valid": 0.045})  # fmt: skip


# ---------------------------------------------------------------- sampled metrics
def test_trap_sample_stats_by_hand():
    valid = [[True] * 4, [True, True, False, True], [True] * 4]
    rare = [[False] * 4, [True, False, False, True], [True, False, False, False]]
    answers = [["312"] * 4, ["303", "312", None, "303"], ["303", "312", "213", "321"]]
    s = trap_sample_stats(valid, rare, answers)
    assert s["p_frac"] == pytest.approx(3 / 12)  # 0 + 2 + 1 P samples of 12
    assert s["valid_frac"] == pytest.approx(11 / 12)
    assert s["trapped"] == 1.0  # prompt 0: 100% valid, 0% P; prompt 2: 25% P is not trapped
    assert s["never_p"] == 1.0
    assert s["distinct_p"] == pytest.approx((0 + 1 + 1) / 3)  # prompt 1 found 303 twice
    assert s["reward"] == pytest.approx((3 * 1.0 + 8 * 0.5) / 12)  # 3 P, 11 - 3 other valid
    # the 80% boundary: 4 valid of 5 is trapped, 3 of 5 is not
    edge = trap_sample_stats([[True] * 4 + [False], [True] * 3 + [False] * 2],
                             [[False] * 5] * 2, [[None] * 5] * 2)  # fmt: skip
    assert edge["trapped"] == 1.0 and edge["never_p"] == 2.0
    with pytest.raises(ValueError, match="same n"):
        trap_sample_stats([[True], [True, True]], [[False], [False, False]], [[None], [None, None]])


def test_rollout_and_eval_metrics():
    task = get_task("trap")
    examples = [_ex(6), _ex(14)]
    texts = ["303", "312", "545", "9"]  # G = 2: P, valid; P, invalid
    out = task.rollout_metrics(examples, texts, [1.0, 0.5, 1.0, 0.0])
    assert out == {"trap/p_frac": 0.5, "trap/valid_frac": 0.75}

    tok = build_char_tokenizer()
    ev = task.eval_metrics(PositionTable(), tok, [_ex(6), _ex(7)], [["303", "303"], ["1", "2"]])
    assert ev["trap/p_frac_eval"] == 0.5 and ev["trap/valid_frac_eval"] == 0.5
    assert (ev["trap/trapped_eval"], ev["trap/never_p_eval"], ev["trap/distinct_p_eval"]) == (
        0.0, 1.0, 0.5,
    )  # fmt: skip
    assert ev["trap/reward_eval"] == 0.5  # two P samples of four
    assert ev["trap/p_prob_eval"] == pytest.approx((0.1 + 0.05) / 2)  # exact, as above
    assert ev["trap/valid_prob_eval"] == pytest.approx((0.175 + 0.05) / 2)
