"""Training configuration: typed dataclasses, validated at construction, loaded from YAML.

A config is nested sections (``model``, ``data``, ``rollout``, ``algo``, ``control``, ``eval``,
``run``). Layering, last wins: defaults <- preset YAML <- user YAML (``--config``) <- flags <-
``section.key=value`` overrides. An unknown key or a value of the wrong type fails before any work,
naming the key and the allowed keys or type.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from entropy_rl.errors import ConfigError  # re-exported here, its historical home


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-4 as a float (YAML 1.1 wants 1.0e-4)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


@dataclass
class ModelConfig:
    path: str | None = None
    """Anything ``AutoModelForCausalLM.from_pretrained`` loads (local dir or hub id). None: the
    built-in tiny checkpoint of ``data.task``."""
    dtype: str = "float32"
    """Compute dtype: float32, bfloat16 or float16 (mixed precision, train.precision). The
    parameters, gradients and AdamW moments stay float32 whatever this says (master weights:
    16 bytes per parameter, +4 for a reference model); bfloat16 / float16 run every forward
    (rollout, pi_old, update) under torch.autocast, halving activation memory and using the
    accelerator's low-precision matmuls. float16 adds dynamic loss scaling
    (``update/loss_scale``). With bfloat16 parameters and plain AdamW, RL-sized updates round
    away (at lr 5e-6, <1% of SmolLM2's weights moved in 3 steps). On a CPU it depends on the
    CPU (benchmarks/precision.py): with AVX512-BF16, SmolLM2's sampling ran x1.7 faster and
    its update x1.3 (x1.0 with the pi_old forward mixed precision adds unless the update is
    one epoch of one mini-batch: update.pi_old_from_update); without bfloat16
    matrix instructions a SmolLM2-sized update ran ~8x slower: keep float32 there."""
    logits: str = "auto"
    """How the update gets log-probs and entropy: ``fused`` (hidden states x lm_head, chunked, never
    holds [tokens, V] logits), ``full`` (the model's own logits), or ``auto`` (fused when the
    vocabulary is >= 4096 and the model has a plain linear head)."""
    shared_prompt: bool | None = None
    """Run each prompt once in every forward over the rollout (pi_old, pi_ref, the update, the
    entropy-change passes) and its G completions against its key/value cache: the same
    log-probs, entropies and gradients as repeating the prompt, with the prompt's work done once
    per micro-batch instead of once per row (train.shared_prompt). None (auto): on for the
    tested architectures (Llama, Mistral, Qwen2, Qwen3, GPT-2) unless sharded or gradient
    checkpointed; true: required (an error where unsupported); false: off. The start line
    says which (``shared_prompt=``)."""
    chunk_size: int = 512
    """Rows per chunk for the fused log-prob/entropy computation (512 at V=152k keeps ~1/10 of
    the full-logits peak memory at the same speed: benchmarks/token_stats.py)."""
    trust_remote_code: bool = False
    """Passed to transformers: allow a checkpoint's own modelling code to run (only for models
    you trust)."""

    def __post_init__(self) -> None:
        _choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _choice("model.logits", self.logits, ("auto", "fused", "full"))
        _positive("model.chunk_size", self.chunk_size)


@dataclass
class DataConfig:
    task: str = "addition"
    """Built-in task (its prompts, reward and held-out set); ignored for prompts when ``prompts``
    or ``dataset`` is given, still used for the reward unless ``reward`` is set."""
    task_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra arguments of the built-in task."""
    prompts: str | None = None
    """JSONL file with one object per line: a prompt column and any reference fields."""
    eval_prompts: str | None = None
    """JSONL of held-out prompts (default: the task's eval set, or 5% of ``prompts``)."""
    dataset: str | None = None
    """A ``datasets`` data set name or path (needs the ``datasets`` extra)."""
    dataset_split: str = "train"
    """Split of ``dataset`` to train on."""
    dataset_config: str | None = None
    """Configuration (subset) name of ``dataset``, e.g. ``main`` for gsm8k."""
    prompt_column: str = "prompt"
    """Field of a record (JSONL or data set) that holds the prompt."""
    answer_column: str = "answer"
    """Field that holds the reference answer; the reward receives it as ``answer``."""
    chat_template: bool = False
    """Wrap each prompt as a user message with the tokenizer's chat template (instruct models);
    generation then also stops at the template's end-of-turn token (e.g. ``<|im_end|>``)."""
    system_prompt: str | None = None
    """System message before each user turn (needs ``chat_template``). A JSONL record's own
    ``system`` field replaces it for that prompt. None: the template's default, if any."""
    reward: str | dict[str, Any] | list[str | dict[str, Any]] | None = None
    """Reward function(s) with signature ``fn(prompt, completion, **fields) -> float``: a
    built-in name (last_number, gsm8k, boxed, answer_tags, math_verify, exact_match,
    numeric_match), ``module:function`` (looked up in the current directory first, then on
    sys.path) or ``path/to/file.py:function``; a mapping ``{fn: ..., name: ..., kwargs: {...}}``;
    or a list of these, summed with ``reward_weights`` (tasks.combine). Each one's mean is
    logged as ``reward/<name>``. None: the task's own reward."""
    reward_weights: list[float] | None = None
    """Weight of each reward in ``reward`` (TRL's reward_weights); None: all 1.0."""
    correct_reward: str | None = None
    """Name of the reward that decides correctness: acc/train, acc/eval and pass@k count a
    sample correct when it is > 0.5. None: the first reward in ``reward``."""
    reward_on_error: str = "raise"
    """``raise``: a reward function that raises (or returns NaN / inf) stops the run, reporting
    prompt and completion. ``zero``: that sample gets reward 0 (every combined reward 0) and
    ``reward/errors`` counts it. A reward that returns a non-number (a string, None, a tensor)
    always stops the run: that is the function's bug, not one completion's."""

    def __post_init__(self) -> None:
        _choice("data.reward_on_error", self.reward_on_error, ("raise", "zero"))
        if self.prompts is not None and self.dataset is not None:
            raise ConfigError("set data.prompts (a JSONL file) or data.dataset, not both")
        if self.system_prompt is not None and not self.chat_template:
            raise ConfigError("data.system_prompt needs data.chat_template=true")
        if self.reward is None:
            for key in ("reward_weights", "correct_reward"):
                if getattr(self, key) is not None:
                    raise ConfigError(f"data.{key} needs data.reward (the rewards it refers to)")
            return
        from entropy_rl.tasks.combine import parse_reward_specs

        names = [s.name for s in parse_reward_specs(self.reward)]
        if self.reward_weights is not None:
            if len(self.reward_weights) != len(names):
                raise ConfigError(
                    f"data.reward_weights has {len(self.reward_weights)} weights for "
                    f"{len(names)} rewards {names}; give one weight per reward"
                )
            if not all(math.isfinite(w) for w in self.reward_weights):
                raise ConfigError(f"data.reward_weights must be finite, got {self.reward_weights}")
        if self.correct_reward is not None and self.correct_reward not in names:
            raise ConfigError(
                f"data.correct_reward={self.correct_reward!r} is not one of the rewards {names}"
            )


@dataclass
class RolloutConfig:
    prompts_per_step: int = 32
    """Prompt groups per RL step (after dynamic sampling)."""
    group_size: int = 8
    """Samples per prompt (G)."""
    temperature: float = 1.0
    """Sampling temperature; log-probs and entropy are those of softmax(logits / temperature)."""
    top_p: float = 1.0
    """Nucleus sampling, in (0, 1]. Below 1 the sampler's log-probs are no longer pi_old's, so
    the trainer runs its own pi_old forward."""
    max_new_tokens: int | None = None
    """Completion length cap (None: the task's default, else 256)."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and sample more until the batch is full."""
    max_sample_rounds: int = 4
    """Cap on generation rounds per step under dynamic sampling (verl: 10)."""
    overlong_shaping: bool = False
    """DAPO soft overlong penalty added to the reward (needs ``overlong_cache``)."""
    overlong_cache: int | None = None
    """L_cache of the overlong penalty, in tokens; L_max is max_new_tokens. None: 20% of
    max_new_tokens (DAPO's 4096 of 20480), at least 1."""
    mask_truncated: bool = False
    """Drop truncated completions from the loss (TRL mask_truncated_completions)."""
    batch_size: int = 256
    """Sequences per generate call (memory knob only)."""
    engine: str = "auto"
    """Rollout engine. ``kv``: engine.kv.KVCacheEngine, a lean KV-cached sampler over the policy's
    own weights (Qwen2/Qwen3/Llama/Mistral-style decoders without sliding window; any other model
    fails at construction); with float32 weights and top_p = 1 its per-token log-prob, entropy
    and top-1 are pi_old's, so the trainer skips its pi_old forward (benchmarks/README.md).
    ``hf``: transformers ``generate`` on the policy itself (any model). ``vllm``: colocated vLLM
    (the ``vllm`` extra; its sampler log-probs feed algo.tis_cap; docs/vllm.md). ``auto``: kv
    where the model is supported and float32, hf otherwise."""
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    """Engine options, e.g. {gpu_memory_utilization: 0.3, max_model_len: 2048}."""

    def __post_init__(self) -> None:
        for k in ("prompts_per_step", "group_size", "max_sample_rounds", "batch_size"):
            _positive(f"rollout.{k}", getattr(self, k))
        if self.temperature <= 0:
            raise ConfigError(f"rollout.temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"rollout.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens is not None:
            _positive("rollout.max_new_tokens", self.max_new_tokens)
        _choice("rollout.engine", self.engine, ("auto", "hf", "kv", "vllm"))
        if self.dynamic_sampling and self.group_size < 2:
            raise ConfigError("rollout.dynamic_sampling needs rollout.group_size >= 2")


@dataclass
class AlgoConfig:
    advantage: str = "grpo"
    """Advantage estimator (grpo, dr_grpo, rloo, reinforce_pp_baseline, w_reinforce)."""
    advantage_kwargs: dict[str, Any] = field(default_factory=dict)
    """Options of the estimator, e.g. {eps: 1e-6} for grpo."""
    loss: str = "ppo"
    """Policy loss from the registry (ppo, cispo, gspo, gpg, clip_cov, kl_cov, entropic)."""
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    """Hyperparameters of the loss, e.g. {eps_low: 0.2, eps_high: 0.28}."""
    agg: str = "token-mean"
    """Loss aggregation: token-mean, seq-mean-token-mean, seq-mean-token-sum,
    seq-mean-token-sum-norm."""
    ppo_epochs: int = 4
    """Passes over each rollout. With 1 epoch and 1 mini-batch the ratio is exactly 1 and the clip
    never acts (warned)."""
    mini_batches: int = 2
    """Optimizer steps per epoch (the rollout is shuffled and split)."""
    micro_batch_size: int = 32
    """Sequences per forward/backward (gradient accumulation inside a mini-batch; the gradient
    does not depend on it beyond float summation order). 32, not 64: a mini-batch's rows are
    sorted by length before they are cut, so smaller micro-batches carry less padding, and on
    CPU 32-row passes ran x1.04-1.07 faster than 64-row ones at the same arithmetic, with half
    the activation memory (benchmarks/README.md section 8)."""
    skip_zero_advantage: bool = True
    """Leave out of the update the rows whose advantage is 0 at every token (in GRPO-style
    groups: every sample of the prompt earned the same reward). With an advantage-weighted loss
    and no entropy bonus or KL term in the loss they add exactly 0 to the gradient, so the step
    is the same, less work; ``update/zero_adv_rows_frac`` is the share left out."""
    lr: float = 1e-4
    """AdamW learning rate after warm-up (constant afterwards). 1e-4 suits the built-in tiny
    model; models of 0.5-7B parameters usually want about 1e-6."""
    warmup_steps: int = 10
    """Linear warm-up, in RL steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the global gradient norm (over all parameters and ranks) to this; 0 disables."""
    entropy_coef: float = 0.0
    """Fixed entropy bonus coefficient (controllers may override it)."""
    entropy_adv_alpha: float = 0.0
    """Entropy-based advantage shaping (Cheng et al. 2025, "Reasoning with Exploration: An
    Entropy Perspective"): token t's advantage becomes A + min(alpha * H_old,t, |A| / kappa),
    H_old the rollout policy's entropy at t (no gradient). Never flips the sign of A; 0 (the
    default) turns it off; the paper uses 0.4 with GRPO."""
    entropy_adv_kappa: float = 2.0
    """The clip divisor of entropy_adv_alpha's bonus (> 1 keeps the sign of A)."""
    kl_coef: float = 0.0
    """KL to the reference (starting) model; 0 means no reference model is loaded."""
    kl_kind: str = "k3"
    """KL estimator for ``kl_coef``: k1 = d, k2 = d^2/2, k3 = exp(-d) - 1 + d with
    d = log pi - log pi_ref (verl's kl, mse, low_var_kl are aliases)."""
    kl_in: str = "loss"
    """``loss`` (GRPO style) or ``reward`` (PPO/RLHF style, per-sequence sum)."""
    tis_cap: float | None = 2.0
    """Truncated importance sampling for the train/inference mismatch: when the rollout engine
    reports its own log-probs (vLLM), each token's advantage is weighted by
    min(pi_old / pi_sampler, tis_cap). None turns the correction off."""
    max_bad_steps: int = 5
    """Consecutive non-finite losses or gradients before the run stops."""

    def __post_init__(self) -> None:
        for k in ("ppo_epochs", "mini_batches", "micro_batch_size", "max_bad_steps"):
            _positive(f"algo.{k}", getattr(self, k))
        if self.lr <= 0:
            raise ConfigError(f"algo.lr must be > 0, got {self.lr}")
        for k in (
            "warmup_steps", "weight_decay", "grad_clip", "kl_coef", "entropy_coef",
            "entropy_adv_alpha",
        ):  # fmt: skip
            if getattr(self, k) < 0:
                raise ConfigError(f"algo.{k} must be >= 0, got {getattr(self, k)}")
        if self.entropy_adv_kappa <= 0:
            raise ConfigError(
                f"algo.entropy_adv_kappa must be > 0 (> 1 keeps the sign of A), "
                f"got {self.entropy_adv_kappa}"
            )
        _choice("algo.agg", self.agg, _AGG_MODES)
        _choice("algo.kl_kind", self.kl_kind, ("k1", "k2", "k3"))
        _choice("algo.kl_in", self.kl_in, ("loss", "reward"))
        self.betas = (float(self.betas[0]), float(self.betas[1]))


_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


@dataclass
class ControlConfig:
    controller: str = "none"
    """Entropy controller: none, fixed, adaptive (Skywork-OR1), target (schedule tracked by PI),
    rate (the schedule's slope tracked by PI), entropic (EntroPIC; with algo.loss=entropic)."""
    controller_kwargs: dict[str, Any] = field(default_factory=dict)
    """Arguments of the controller, e.g. {schedule: {kind: cosine, start: 1.3, end: 0.5},
    actuator: eps} for ``target``."""
    detector: bool = True
    """Run the collapse detector on every step's metrics."""
    detector_kwargs: dict[str, Any] = field(default_factory=dict)
    """Rule thresholds and actions (see control.detector.DetectorConfig)."""
    forecast_every: int = 4
    """Measure the update's entropy change on its own batch every N RL steps (train.forecast:
    entropy/delta_same_batch, entropy/first_order_delta); 0 turns it off. The two no-grad
    forwards it takes cost 16-17% of the update's time on the built-in addition and digitsum
    tasks (CPU, 256 rows x 4 epochs), so every 4th step costs about 4%."""

    def __post_init__(self) -> None:
        if self.forecast_every < 0:
            raise ConfigError(f"control.forecast_every must be >= 0, got {self.forecast_every}")


@dataclass
class EvalConfig:
    every: int = 10
    """Evaluate on the held-out set every N steps (and at the start and end); 0 disables."""
    n_prompts: int = 128
    """Held-out prompts per evaluation (the first this-many of the held-out set)."""
    samples: int = 8
    """Samples per held-out prompt (for avg@k, pass@k and distinct answers)."""
    greedy: bool = True
    """Also measure greedy accuracy."""

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ConfigError(f"eval.every must be >= 0, got {self.every}")
        _positive("eval.n_prompts", self.n_prompts)
        _positive("eval.samples", self.samples)


SHARDING_MODES = ("auto", "none", "fsdp")


@dataclass
class RunConfig:
    name: str = "run"
    """Run name: the default run directory is runs/<name>-<time>; trackers show it."""
    seed: int = 0
    """Seeds torch, Python's random, the prompt order and the mini-batch shuffle (rank r of a
    multi-process run samples with seed + r)."""
    steps: int = 100
    """RL steps (one rollout and its update each)."""
    out_dir: str | None = None
    """Run directory (default runs/<name>-<time>)."""
    save_every: int = 25
    """Checkpoint every N steps (and at the end); 0: only at the end."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep; older ones are deleted."""
    log_samples: int = 4
    """Completions written to samples.jsonl per step."""
    threads: int | None = None
    """torch CPU threads. None: 1 for a model under 20M parameters on CPU (measured here: a
    1M-parameter update step ran 0.24 s on 1 thread and 8 s on 2 threads of a busy 2-core
    machine; tiny matrices gain nothing from intra-op threads), else torch's default."""
    progress: bool = True
    """Show a progress bar (rank 0 only)."""
    loggers: list[str] | None = None
    """Metric sinks: any of jsonl, tensorboard, wandb, mlflow. None: jsonl, plus tensorboard
    when installed. metrics.jsonl is always written (reports and resume read it)."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:N."""
    sharding: str = "auto"
    """Parameter sharding across processes (train.sharding, docs/scaling.md). ``auto``: FSDP2
    when ``accelerate launch`` was given an FSDP config (it sets ACCELERATE_USE_FSDP=true) and
    there are >= 2 processes, else plain data parallelism. ``fsdp``: require it (>= 2 processes;
    FSDP options from accelerate's FSDP_* variables, else its defaults). ``none``: plain data
    parallelism (every rank a full replica) even under an FSDP launch. DeepSpeed and
    fsdp_version 1 are refused."""

    def __post_init__(self) -> None:
        _positive("run.steps", self.steps)
        if self.save_every < 0:
            raise ConfigError(f"run.save_every must be >= 0, got {self.save_every}")
        _positive("run.keep_checkpoints", self.keep_checkpoints)
        _choice("run.sharding", self.sharding, SHARDING_MODES)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    preset: str | None = None
    """Name of the preset this config started from (informational)."""

    def __post_init__(self) -> None:
        rows = self.rollout.prompts_per_step * self.rollout.group_size
        if self.algo.mini_batches > rows:  # the update would cap it, silently
            raise ConfigError(
                f"algo.mini_batches={self.algo.mini_batches} exceeds the {rows} completions of a "
                f"step (rollout.prompts_per_step x rollout.group_size); use at most {rows}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        d = self.to_dict()
        d["algo"]["betas"] = list(d["algo"]["betas"])
        return yaml.safe_dump(d, sort_keys=False)


# ----------------------------------------------------------------------------- building


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(allowed)}")


def _positive(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{key} must be >= 1, got {value}")


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; convert int -> float and list -> tuple."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, a, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(key, item, v) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) != len(value):
            raise ConfigError(f"{key} must have {len(args)} items, got {value!r}")
        return tuple(_coerce(key, a, v) for a, v in zip(args, value, strict=True))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp in (int, float, str) and (not isinstance(value, tp) or isinstance(value, bool)):
        raise ConfigError(f"{key} must be of type {tp.__name__}, got {value!r}")
    return value


def _section(key: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown key {key}.{unknown[0]}; allowed keys in {key}: {names}")
    kwargs = {k: _coerce(f"{key}.{k}", hints[k], v) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: {e}") from e


def config_from_dict(d: dict[str, Any]) -> Config:
    """Build and validate a Config from a nested mapping (as loaded from YAML)."""
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
    hints = typing.get_type_hints(Config)
    sections = [f.name for f in dataclasses.fields(Config)]
    unknown = sorted(set(d) - set(sections))
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}; allowed: {sections}")
    kwargs: dict[str, Any] = {}
    for name in sections:
        if name not in d:
            continue
        if name == "preset":
            kwargs[name] = _coerce("preset", hints[name], d[name])
            continue
        value = d[name] if d[name] is not None else {}
        if not isinstance(value, dict):
            raise ConfigError(f"config section {name!r} must be a mapping, got {value!r}")
        kwargs[name] = _section(name, hints[name], value)
    return Config(**kwargs)


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of nested mappings; values of ``top`` win (dict-valued keys merge too)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(item: str) -> dict[str, Any]:
    """``section.key=value`` (value parsed as YAML) -> nested dict.

    ``algo.loss_kwargs.eps_high=0.28`` -> {"algo": {"loss_kwargs": {"eps_high": 0.28}}}.
    """
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. algo.lr=1e-4")
    path, raw = item.split("=", 1)
    keys = path.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise ConfigError(f"override {item!r} needs a section and a key, e.g. algo.lr=1e-4")
    try:
        value: Any = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:  # an unclosed bracket, or a tag such as !!python/... (refused)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(
            f"override {item!r}: the value is not valid YAML ({problem}); write plain values, "
            "e.g. algo.betas=[0.9,0.99] (quote the whole override for the shell)"
        ) from e
    out: dict[str, Any] = {keys[-1]: value}
    for k in reversed(keys[:-1]):
        out = {k: out}
    return out


def available_presets() -> list[str]:
    return sorted(
        p.name[: -len(".yaml")] for p in _preset_dir().iterdir() if p.name.endswith(".yaml")
    )


def _preset_dir() -> Any:
    return resources.files("entropy_rl") / "presets"


def load_preset(name: str) -> dict[str, Any]:
    if name not in available_presets():
        raise ConfigError(f"unknown preset {name!r}; available presets: {available_presets()}")
    d = yaml_load((_preset_dir() / f"{name}.yaml").read_text()) or {}
    d.pop("description", None)
    d["preset"] = name
    return d


def preset_description(name: str) -> str:
    d = yaml_load((_preset_dir() / f"{name}.yaml").read_text()) or {}
    return str(d.get("description", ""))


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        d = yaml_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {p} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
            f"{e.start}); save it as UTF-8"
        ) from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections")
    return d


def build_config(
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    flags: dict[str, Any] | None = None,
) -> Config:
    """defaults <- preset <- config file <- flags <- overrides; validated."""
    d: dict[str, Any] = {}
    file_d = load_yaml(config_file) if config_file is not None else {}
    preset = preset or file_d.get("preset")
    if preset:
        d = merge(d, load_preset(preset))
    d = merge(d, file_d)
    if flags:
        d = merge(d, flags)
    for item in overrides:
        d = merge(d, parse_override(item))
    return config_from_dict(d)
