"""`wordpick`: many valid answers made of rare tokens in a large word-level vocabulary.

Why (docs/experiments.md): DAPO's clip-higher argument (Yu et al. 2025, "DAPO", sec. 3.1)
is about exploring tokens near p = 0.01, whose growth the upper clip caps (0.01 -> 0.012 at
eps 0.2 vs 0.0128 at 0.28). With the 19-token character vocabulary no token is that rare, and
clip-higher did not raise entropy there. This task puts the mechanism where DAPO argued it.

Vocabulary (`build_word_tokenizer`, 3,053 ids, fixed)::

    0 <pad>  1 <bos>  2 <eos>  3 <unk>  4 ':'  5..52 'c00'..'c47'  53..3052 'w0000'..'w2999'

Prompt ``"c17"`` (tokens ``<bos> c17``); a valid answer is ONE word of category 17, then
<eos>. The category token sits at the last prompt position, so the model needs no attention hop
to read it (':' stays in the vocabulary, unused by the task). Categories are disjoint, contiguous blocks of words: with the defaults the 32 normal
categories c00..c31 hold 64 words each (c00 = w0000..w0063, c01 = w0064..w0127, ...), then the
8 hard categories c32..c39 hold (2, 2, 3, 3, 3, 4, 4, 4) words (c32 = w2048, w2049; ...); the
remaining words belong to no category and are only ever wrong. 64 rather than 100 words per
normal category so that at the measured T = 1 valid rate (~0.5-0.6) the mean valid word sits at
p ~ 0.5 / 64 ~ 0.008-0.01, the regime of DAPO's argument (100 words would put it at ~0.005).

RL training prompts are the normal categories; the evaluation set holds each of them once plus
the hard ones, marked ``meta["hard"] = True`` (pass@k only says something there). Supervised
pretraining (`sample_pretrain`) covers every category: a uniformly drawn valid word with
probability 1 - `invalid_frac`, else a uniformly drawn word outside the category, so the start
policy is spread thin over many valid words and valid only part of the time. A `reverse_frac`
(0.5) of the pairs run the other way, ``"w0012" -> "c00"``: measured here, forward pairs alone
left the 2,048 normal words on a plateau at the unigram distribution (valid mass 0.026 = chance)
for 200+ steps at lr 3e-3 and 1e-2; the reverse pairs cluster the (tied) word embeddings by
category and the forward direction then breaks through after ~200 steps. RL never sees them.

Regenerate the shipped checkpoint (settings in `PRETRAIN_SETTINGS`):

    python -c "import sys; from entropy_rl.tasks.wordpick import main; main(sys.argv[1:])" \
        --out src/entropy_rl/tasks/checkpoints/wordpick

(not ``python -m``: run as ``__main__`` the module would register the task a second time).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from entropy_rl.tasks.base import Example, Task, clean_completion, register_task

__all__ = [
    "NUM_CATEGORY_TOKENS",
    "NUM_WORDS",
    "PRETRAIN_SETTINGS",
    "WordPickTask",
    "build_word_tokenizer",
    "word_probability_stats",
]

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
NUM_CATEGORY_TOKENS = 48
NUM_WORDS = 3000
SEPARATOR = ":"

# Shipped checkpoint (pretrain.json records them with the measured start metrics): 537 s on one
# busy core. Measured at T = 1 on the 32 normal prompts x 64 samples: 27% valid, first-token
# entropy 7.0 nats, 14.6 distinct correct per 64; first-token valid mass 0.28, mean valid-word
# p 0.0044 (median 0.0038, 33% in [0.005, 0.02]); hard prompts 62% valid. Still rising at stop
# (valid mass 0.14 at step 350): more steps would move it into the 0.3-0.6 band.
PRETRAIN_SETTINGS: dict[str, Any] = {
    "steps": 500,
    "schedule_steps": 600,
    "batch_size": 512,
    "lr": 3e-3,
    "seed": 0,
    "eval_samples": 64,
    "num_threads": 1,
}


def category_token(category: int) -> str:
    """Token of category `category`: ``"c07"``."""
    return f"c{category:02d}"


def word_token(index: int) -> str:
    """Token of word `index`: ``"w0042"``."""
    return f"w{index:04d}"


def build_word_tokenizer() -> Any:
    """The 3,053-token word-level tokenizer described in the module docstring.

    A `tokenizers` WordLevel model behind a `Whitespace` pre-tokenizer (``"c17:"`` and
    ``"c17 :"`` both give ``c17 :``); unknown words map to <unk>; encoding adds <bos> in front;
    decoding joins tokens with single spaces; ``padding_side="left"``. Special ids match the
    character tokenizer (pad/bos/eos/unk = 0/1/2/3), so `build_tiny_model`'s defaults fit.

    Returns:
        A `transformers.PreTrainedTokenizerFast`; next to a qwen2 config.json load it with
        ``PreTrainedTokenizerFast.from_pretrained`` (AutoTokenizer forces Qwen2Tokenizer there).
    """
    from tokenizers import decoders, pre_tokenizers

    from entropy_rl.tasks.tokenizer import word_level_tokenizer

    tokens = (
        *SPECIAL_TOKENS,
        SEPARATOR,
        *(category_token(c) for c in range(NUM_CATEGORY_TOKENS)),
        *(word_token(w) for w in range(NUM_WORDS)),
    )
    return word_level_tokenizer(
        tokens,
        pre_tokenizer=pre_tokenizers.Whitespace(),
        decoder=decoders.WordPiece(prefix="##", cleanup=False),  # join with " "
    )


@register_task
class WordPickTask(Task):
    """Name one word of the prompted category.

    Args:
        normal_categories: number of RL training categories (c00 onwards).
        words_per_category: valid words of each normal category.
        hard_sizes: valid-word counts of the hard evaluation categories (after the normal ones).
        invalid_frac: fraction of forward pretraining answers drawn outside the category.
        reverse_frac: fraction of pretraining pairs that map a word to its category.
    """

    name: ClassVar[str] = "wordpick"

    def __init__(
        self,
        *,
        normal_categories: int = 32,
        words_per_category: int = 64,
        hard_sizes: tuple[int, ...] = (2, 2, 3, 3, 3, 4, 4, 4),
        invalid_frac: float = 0.4,
        reverse_frac: float = 0.5,
    ) -> None:
        if normal_categories < 1 or words_per_category < 1:
            raise ValueError(
                "normal_categories and words_per_category must be >= 1, got "
                f"{normal_categories} and {words_per_category}"
            )
        if any(size < 1 for size in hard_sizes):
            raise ValueError(f"hard_sizes must all be >= 1, got {hard_sizes}")
        n_categories = normal_categories + len(hard_sizes)
        if n_categories > NUM_CATEGORY_TOKENS:
            raise ValueError(
                f"normal_categories + len(hard_sizes) = {n_categories} exceeds the "
                f"{NUM_CATEGORY_TOKENS} category tokens of the vocabulary"
            )
        sizes = [words_per_category] * normal_categories + list(hard_sizes)
        if sum(sizes) >= NUM_WORDS:
            raise ValueError(
                f"the categories need {sum(sizes)} words; the vocabulary has {NUM_WORDS} "
                "(and at least one must stay outside every category)"
            )
        if not 0.0 <= invalid_frac < 1.0:
            raise ValueError(f"invalid_frac must be in [0, 1), got {invalid_frac}")
        if not 0.0 <= reverse_frac < 1.0:
            raise ValueError(f"reverse_frac must be in [0, 1), got {reverse_frac}")
        self.normal_categories = normal_categories
        self.words_per_category = words_per_category
        self.hard_sizes = tuple(hard_sizes)
        self.invalid_frac = invalid_frac
        self.reverse_frac = reverse_frac
        self._words: list[list[str]] = []
        start = 0
        for size in sizes:
            self._words.append([word_token(w) for w in range(start, start + size)])
            start += size
        self._sets = [frozenset(words) for words in self._words]
        self._all_words = [word_token(w) for w in range(NUM_WORDS)]
        self.default_max_new_tokens = 3  # word, <eos>, one token of slack for overlong shaping

    @property
    def num_categories(self) -> int:
        """Normal plus hard categories."""
        return len(self._words)

    def category_words(self, category: int) -> list[str]:
        """The valid words of `category`, in increasing order."""
        if not 0 <= category < self.num_categories:
            raise ValueError(f"category must be in 0..{self.num_categories - 1}, got {category}")
        return list(self._words[category])

    def build_tokenizer(self) -> Any:
        """The word-level tokenizer (`build_word_tokenizer`)."""
        return build_word_tokenizer()

    def _example(self, category: int) -> Example:
        hard = category >= self.normal_categories
        prompt = category_token(category)
        return Example(prompt=prompt, answer=None, meta={"category": category, "hard": hard})

    def sample_train(self, n: int, rng: random.Random) -> list[Example]:
        """`n` prompts with a normal category drawn uniformly."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return [self._example(rng.randrange(self.normal_categories)) for _ in range(n)]

    def eval_set(self, hard: bool | None = None) -> list[Example]:
        """Every normal category once (``hard=False``), the hard ones (True), or both (None)."""
        normal = [self._example(c) for c in range(self.normal_categories)]
        hard_set = [self._example(c) for c in range(self.normal_categories, self.num_categories)]
        if hard is None:
            return normal + hard_set
        return hard_set if hard else normal

    def sample_pretrain(self, n: int, rng: random.Random) -> list[Example]:
        """Pretraining pairs over every category: with prob. `reverse_frac` a reverse pair
        (prompt a valid word, answer its category token); otherwise the category prompt with a
        valid word drawn uniformly (prob. 1 - `invalid_frac`) or a word drawn uniformly from those
        outside the category."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        out: list[Example] = []
        for _ in range(n):
            category = rng.randrange(self.num_categories)
            if rng.random() < self.reverse_frac:
                word = rng.choice(self._words[category])
                meta = {"category": category, "reverse": True}
                out.append(Example(prompt=word, answer=category_token(category), meta=meta))
                continue
            if rng.random() >= self.invalid_frac:
                answer = rng.choice(self._words[category])
            else:
                while True:
                    answer = rng.choice(self._all_words)
                    if answer not in self._sets[category]:
                        break
            example = self._example(category)
            out.append(Example(prompt=example.prompt, answer=answer, meta=example.meta))
        return out

    def extract_answer(self, completion: str) -> str | None:
        """The completion if it is exactly one word token (``w`` + 4 digits), else None."""
        text = clean_completion(completion)
        if len(text) == 5 and text[0] == "w" and text[1:].isascii() and text[1:].isdigit():
            return text if int(text[1:]) < NUM_WORDS else None
        return None

    def is_correct(self, example: Example, completion: str) -> bool:
        """Whether the completion is one word of category ``meta["category"]``."""
        category = example.meta.get("category")
        if not isinstance(category, int) or not 0 <= category < self.num_categories:
            raise ValueError(
                f"example.meta['category'] must be an int in 0..{self.num_categories - 1}, "
                f"got {category!r}"
            )
        return self.extract_answer(completion) in self._sets[category]


def word_probability_stats(
    model: Any, tokenizer: Any, task: WordPickTask, examples: Sequence[Example]
) -> dict[str, float]:
    """First-token probabilities of the valid words at T = 1.

    For prompt i with valid words V_i, p_i = softmax(logits at the first answer position), (V,):
        valid_mass      mean_i sum_{w in V_i} p_i(w)
        valid_p_mean    mean over all (i, w in V_i) of p_i(w)  (= mean_i mass_i / |V_i| when
                        all |V_i| are equal)
        valid_p_median  median of the same p_i(w)
        valid_p_in_band fraction of those p_i(w) in [0.005, 0.02], DAPO's "rare token" range
        top_p_max       mean_i max_w p_i(w) over the whole vocabulary
    """
    if not examples:
        raise ValueError("word_probability_stats needs at least one example")
    import torch

    enc = tokenizer([e.prompt for e in examples], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions)
    model.train(was_training)
    logits = out.logits[:, -1]  # (B, V)
    probs = torch.softmax(logits.float(), dim=-1)  # (B, V)
    masses, valid_p = [], []
    for row, example in zip(probs, examples, strict=True):
        words = task.category_words(example.meta["category"])
        p = row[tokenizer.convert_tokens_to_ids(words)]  # (|V_i|,)
        masses.append(float(p.sum()))
        valid_p.append(p)
    flat = torch.cat(valid_p)
    in_band = ((flat >= 0.005) & (flat <= 0.02)).float().mean()
    return {
        "valid_mass": sum(masses) / len(masses),
        "valid_p_mean": float(flat.mean()),
        "valid_p_median": float(flat.median()),
        "valid_p_in_band": float(in_band),
        "top_p_max": float(probs.max(dim=-1).values.mean()),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """``main(["--out", DIR, "--steps", N, ...])``: pretrain with
    `PRETRAIN_SETTINGS`, then add the valid-word probability stats to ``pretrain.json``."""
    from entropy_rl.tasks.pretrain import pretrain

    parser = argparse.ArgumentParser(description="Pretrain the wordpick starting checkpoint.")
    parser.add_argument("--out", required=True)
    for key in ("steps", "schedule_steps", "batch_size", "seed", "eval_samples", "num_threads"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    args = parser.parse_args(argv)
    settings = dict(PRETRAIN_SETTINGS)
    settings.update({k: v for k, v in vars(args).items() if k != "out" and v is not None})
    record = pretrain("wordpick", out_dir=args.out, **settings)
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    model = AutoModelForCausalLM.from_pretrained(args.out)
    # Not AutoTokenizer: transformers 5 forces Qwen2Tokenizer (byte-level BPE) on any
    # model_type "qwen2" checkpoint, which maps every word of this vocabulary to nothing.
    tokenizer = PreTrainedTokenizerFast.from_pretrained(args.out)
    task = WordPickTask()
    record["start_word_probs"] = word_probability_stats(
        model, tokenizer, task, task.eval_set(hard=False)
    )
    record["start_hard_word_probs"] = word_probability_stats(
        model, tokenizer, task, task.eval_set(hard=True)
    )
    (Path(args.out) / "pretrain.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in record if k != "history"}, indent=2))
