"""The `wordpick` task: word-level tokenizer, reward, eval set, pretraining data, checkpoint."""

from __future__ import annotations

import json
import random

import pytest

from entropy_rl.tasks import Example, WordPickTask, available_tasks, get_task
from entropy_rl.tasks.wordpick import (
    NUM_CATEGORY_TOKENS,
    NUM_WORDS,
    build_word_tokenizer,
    word_probability_stats,
)


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer()


@pytest.fixture(scope="module")
def task():
    return WordPickTask()


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_ids_and_conventions(tok):
    # ids: <pad> 0, <bos> 1, <eos> 2, <unk> 3, ':' 4, c00..c47 -> 5..52, w0000..w2999 -> 53..3052
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == 4 + 1 + NUM_CATEGORY_TOKENS + NUM_WORDS == 3053
    assert tok("c17 :")["input_ids"] == [1, 5 + 17, 4]  # <bos> c17 :
    assert tok("c17:")["input_ids"] == [1, 22, 4]  # whitespace pre-tokenizer splits ':' off
    assert tok("w0000 w2999", add_special_tokens=False)["input_ids"] == [53, 53 + 2999]
    assert tok("w3000 cat", add_special_tokens=False)["input_ids"] == [3, 3]  # unknown -> <unk>
    # completion "w0012 <eos>" decodes to "w0012"; two words join with one space
    assert tok.decode([53 + 12, 2], skip_special_tokens=True) == "w0012"
    assert tok.decode([54, 55, 2], skip_special_tokens=True) == "w0001 w0002"
    assert tok(["c01 :", "c02 : w0001"], padding=True)["input_ids"] == [
        [0, 1, 6, 4],  # left padding
        [1, 7, 4, 54],
    ]


def test_tokenizer_save_load_round_trip(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    text = "c39 : w2047 w0063"
    assert back(text)["input_ids"] == tok(text)["input_ids"] == [1, 44, 4, 2100, 116]
    assert back.decode(back(text)["input_ids"], skip_special_tokens=True) == text
    assert (back.pad_token_id, back.bos_token_id, back.eos_token_id) == (0, 1, 2)
    assert back.padding_side == "left"
    assert len(back) == 3053


# ---------------------------------------------------------------- task


def test_registered_and_categories_disjoint(task):
    assert "wordpick" in available_tasks()
    assert isinstance(get_task("wordpick"), WordPickTask)
    # normal categories: 64 contiguous words each; c01 = w0064..w0127
    assert task.category_words(1)[0] == "w0064" and task.category_words(1)[-1] == "w0127"
    # hard categories after the 32 * 64 = 2048 normal words: c32 = w2048, w2049; c33 = w2050, w2051
    assert task.category_words(32) == ["w2048", "w2049"]
    assert task.category_words(33) == ["w2050", "w2051"]
    sizes = [len(task.category_words(c)) for c in range(task.num_categories)]
    assert sizes == [64] * 32 + [2, 2, 3, 3, 3, 4, 4, 4]
    words = [w for c in range(task.num_categories) for w in task.category_words(c)]
    assert len(words) == len(set(words)) == 2048 + 25
    assert task.default_max_new_tokens == 3


def test_reward_hand_cases(task):
    c5 = Example(prompt="c05", meta={"category": 5, "hard": False})  # c05 = w0320..w0383
    assert task.reward(c5, "w0320") == 1.0
    assert task.reward(c5, " w0383 ") == 1.0  # surrounding whitespace ignored
    assert task.reward(c5, "w0383<eos>w0001") == 1.0  # text after a literal <eos> ignored
    assert task.reward(c5, "w0319") == 0.0  # last word of c04
    assert task.reward(c5, "w0384") == 0.0  # first word of c06
    assert task.reward(c5, "w2999") == 0.0  # a word in no category
    assert task.reward(c5, "w0320 w0321") == 0.0  # two words
    assert task.reward(c5, "") == 0.0
    assert task.reward(c5, "c05") == 0.0
    hard = Example(prompt="c39", meta={"category": 39, "hard": True})  # last 4 of 2073 words
    assert [task.reward(hard, f"w{i:04d}") for i in range(2068, 2074)] == [0, 1, 1, 1, 1, 0]
    assert task.extract_answer("w0042<eos>") == "w0042"
    assert task.extract_answer("w3000") is None  # outside the vocabulary
    assert task.extract_answer("w42") is None
    with pytest.raises(ValueError, match="category"):
        task.reward(Example(prompt="c05", meta={"category": 40}), "w0001")


def test_eval_set_fixed_with_hard_prompts(task):
    evals = task.eval_set()
    assert evals == task.eval_set() == WordPickTask().eval_set()
    assert [e.prompt for e in evals[:2]] == ["c00", "c01"]
    hard = [e for e in evals if e.meta["hard"]]
    assert [e.meta["category"] for e in hard] == list(range(32, 40))
    assert hard == task.eval_set(hard=True)
    assert all(2 <= len(task.category_words(e.meta["category"])) <= 4 for e in hard)
    assert len(task.eval_set(hard=False)) == 32
    train = task.sample_train(200, random.Random(0))
    assert {e.meta["category"] for e in train} == set(range(32))  # only normal categories


def test_pretrain_mixture(task):
    # reverse_frac 0.5: about half the pairs map a word to its category token
    everything = task.sample_pretrain(8000, random.Random(1))
    reverse = [e for e in everything if e.meta.get("reverse")]
    assert abs(len(reverse) / 8000 - 0.5) < 0.03  # binomial sd 0.0056
    assert all(e.answer == f"c{e.meta['category']:02d}" for e in reverse)
    assert all(e.prompt in task.category_words(e.meta["category"]) for e in reverse)
    # invalid_frac 0.4: about 60% of the forward pairs are valid; sd at n ~ 4000 is 0.008
    data = [e for e in everything if not e.meta.get("reverse")]
    valid = [task.is_correct(e, str(e.answer)) for e in data]
    assert abs(sum(valid) / len(valid) - 0.6) < 0.03
    assert {e.meta["category"] for e in data} == set(range(40))  # hard categories included
    # valid answers spread over the category: c00's 64 words nearly all seen
    c0 = {e.answer for e, ok in zip(data, valid, strict=True) if ok and e.meta["category"] == 0}
    assert len(c0) > 30


def test_bad_arguments():
    with pytest.raises(ValueError, match="category tokens"):
        WordPickTask(normal_categories=45)
    with pytest.raises(ValueError, match="words"):
        WordPickTask(words_per_category=100)  # 32 * 100 + 25 > 3000
    with pytest.raises(ValueError, match="invalid_frac"):
        WordPickTask(invalid_frac=1.0)
    with pytest.raises(ValueError, match="reverse_frac"):
        WordPickTask(reverse_frac=-0.1)
    with pytest.raises(ValueError, match="hard_sizes"):
        WordPickTask(hard_sizes=(0,))


def test_word_probability_stats_uniform_model(task, tok):
    # A model whose logits are all zero puts p = 1/3053 on every token: valid mass of a normal
    # category = 64/3053 = 0.02096, every valid p = 1/3053 = 3.275e-4, none in [0.005, 0.02].
    import torch

    class Flat(torch.nn.Module):
        def forward(self, input_ids, attention_mask, position_ids):
            class Out:
                logits = torch.zeros(*input_ids.shape, 3053)

            return Out()

    stats = word_probability_stats(Flat(), tok, task, task.eval_set(hard=False))
    assert stats["valid_mass"] == pytest.approx(64 / 3053, rel=1e-5)
    assert stats["valid_p_median"] == pytest.approx(1 / 3053, rel=1e-5)
    assert stats["valid_p_in_band"] == 0.0
    assert stats["top_p_max"] == pytest.approx(1 / 3053, rel=1e-5)


# ---------------------------------------------------------------- shipped checkpoint


def test_shipped_checkpoint_loads_and_matches_record(task):
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from entropy_rl.tasks.pretrain import builtin_checkpoint, evaluate_start

    path = builtin_checkpoint("wordpick")
    record = json.loads((path / "pretrain.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(path)
    # AutoTokenizer would give Qwen2Tokenizer (forced for model_type qwen2 in transformers 5)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    assert len(tokenizer) == model.config.vocab_size == 3053
    assert tokenizer("c17 w0001")["input_ids"] == [1, 22, 54]
    assert sum(f.stat().st_size for f in path.iterdir()) < 10_000_000
    torch.set_num_threads(1)
    # 32 normal prompts x 16 samples at T = 1: binomial sd of the valid rate <= 0.5/sqrt(512)
    # = 0.022; band 0.08 is ~3.5 sd (the record used 64 samples and another seed).
    got = evaluate_start(model, tokenizer, task, n_samples=16, examples=task.eval_set(hard=False))
    assert abs(got["sample_acc"] - record["start"]["sample_acc"]) <= 0.08
    # deterministic: the first-token valid mass is recomputed exactly
    stats = word_probability_stats(model, tokenizer, task, task.eval_set(hard=False))
    assert stats["valid_mass"] == pytest.approx(record["start_word_probs"]["valid_mass"], abs=1e-4)
