"""The trainer: rollout -> reward -> advantage -> filter -> update -> monitor -> log.

``Trainer(config).fit()`` runs the loop. Every part can be replaced by passing an object:
``model``/``tokenizer``, ``engine`` (a RolloutEngine), ``reward_fn`` ((example, text) -> float),
``prompt_source``, ``advantage_fn`` ((rewards, group_size=G) -> advantages), ``optimizer``,
``loggers`` (objects with ``log(step, metrics)`` and ``close()``), ``controller``.
"""

from __future__ import annotations

import copy
import json
import math
import random
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entropy_rl.control.controllers import controller_settings
from entropy_rl.control.evaluation import EntropyPerformanceFit
from entropy_rl.control.monitor import (
    EntropyDynamics,
    entropy_by_position,
    entropy_stats,
    logp_adv_covariance,
)
from entropy_rl.engine.base import RolloutEngine
from entropy_rl.engine.build import build_engine, format_run_info, run_info, set_threads
from entropy_rl.models import load_model
from entropy_rl.tasks.pretrain import builtin_checkpoint
from entropy_rl.train import checkpoint as ckpt
from entropy_rl.train.batch import RolloutBatch
from entropy_rl.train.config import Config, ConfigError
from entropy_rl.train.data import (
    PromptSource,
    RewardFn,
    build_prompt_source,
    build_reward,
    build_task,
    check_prompts,
)
from entropy_rl.train.distributed import all_gather_rows, all_reduce, init_from_env, reduce_metrics
from entropy_rl.train.encoding import Encoder, stop_token_ids
from entropy_rl.train.evaluate import evaluate, start_metrics
from entropy_rl.train.forecast import capture_head_inputs, forecast_due, same_batch_entropy_change
from entropy_rl.train.logging import (
    Logger,
    ProgressBar,
    append_lines,
    default_loggers,
    quiet_progress_bars,
)
from entropy_rl.train.parts import (
    build_controller,
    build_detector,
    build_optimizer,
    pick_device,
    validate_algo,
    warmup_scheduler,
)
from entropy_rl.train.precision import LossScaler, compute_dtype, to_master_weights
from entropy_rl.train.rollout import collect
from entropy_rl.train.rundir import RunDir, disk_error, restore_rng
from entropy_rl.train.sharding import make_sharding
from entropy_rl.train.shared_prompt import resolve_shared_prompt
from entropy_rl.train.signals import SIGINT, Interrupted, StopSignals, signal_name
from entropy_rl.train.token_weights import importance_weights, shape_advantages
from entropy_rl.train.update import (
    UpdateSettings,
    pi_old_from_update,
    ppo_update,
    record_old_logprobs,
    sampler_is_pi_old,
    warn_if_on_policy,
)

_ROLLOUT_REDUCE = {"groups/kept": "sum", "reward/errors": "sum", "groups/sample_rounds": "max",
                   "_tokens": "sum", "_entropy_sum": "sum", "_entropy_tokens": "sum"}  # fmt: skip


class TrainingStopped(RuntimeError):
    """The run stopped itself (repeated non-finite steps, or a detector rule with action=stop)."""


class Trainer:
    def __init__(
        self,
        config: Config,
        *,
        model: Any = None,
        tokenizer: Any = None,
        engine: RolloutEngine | None = None,
        reward_fn: RewardFn | None = None,
        prompt_source: PromptSource | None = None,
        advantage_fn: Callable[..., torch.Tensor] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        loggers: list[Logger] | None = None,
        controller: Any = None,
        resume: bool = False,
        allow_config_change: bool = False,
    ) -> None:
        self.cfg = c = config
        validate_algo(c, controller)
        self.device = pick_device(c.run.device)
        self.dist = init_from_env(self.device)
        self.sharding = make_sharding(c.run.sharding, self.dist)  # FSDP under accelerate launch
        if c.rollout.prompts_per_step % self.dist.world_size:
            raise ConfigError(
                f"rollout.prompts_per_step={c.rollout.prompts_per_step} must be a multiple of the "
                f"number of processes ({self.dist.world_size})"
            )
        self.prompts_per_rank = c.rollout.prompts_per_step // self.dist.world_size
        self._seed(c.run.seed + self.dist.rank)  # ranks sample differently; rank 0 as 1 process
        self.run_dir = Path(c.run.out_dir or f"runs/{c.run.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        self.rundir = RunDir(self.run_dir, resume=resume, allow_config_change=allow_config_change)
        if self.dist.is_main:  # fail fast: busy, already a run, unwritable, config change
            self.rundir.check(c)
        if not c.run.progress:
            quiet_progress_bars()
        self.task = build_task(c.data)
        self.source = prompt_source or build_prompt_source(c.data, self.task, c.run.seed)
        self.reward_fn = reward_fn or build_reward(c.data, self.task)
        if model is None:
            model, tokenizer = load_model(c)
        if tokenizer is None:
            raise ValueError("pass the tokenizer together with a model")
        # None: float32; else the autocast dtype over float32 master weights (train.precision)
        self.compute_dtype = compute_dtype(c.model.dtype)
        if cast := to_master_weights(model):
            warnings.warn(f"{len(cast)} low-precision parameters cast to float32 master weights "
                          f"(model.dtype={c.model.dtype} sets the compute dtype)", stacklevel=2)  # fmt: skip
        set_threads(c.run.threads, model, self.device)
        self.model = model.to(self.device)
        self.model.eval()  # no dropout during RL: the ratio must compare the same function
        self.tokenizer = tokenizer
        self.encoder = Encoder(
            tokenizer, chat_template=c.data.chat_template, system_prompt=c.data.system_prompt
        )
        self.stop_ids = stop_token_ids(tokenizer, self.model, chat_template=c.data.chat_template)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]
        self.engine = engine or build_engine(
            c.rollout.engine, self.model, pad_token_id=self.pad_id, stop_token_ids=self.stop_ids,
            batch_size=c.rollout.batch_size, tokenizer=tokenizer, seed=c.run.seed + self.dist.rank,
            engine_kwargs=c.rollout.engine_kwargs, compute_dtype=self.compute_dtype,
            model_path=c.model.path
            or (str(builtin_checkpoint(c.data.task)) if c.rollout.engine == "vllm" else None),
        )  # fmt: skip
        default_len = self.task.default_max_new_tokens if self.task is not None else 256
        self.max_new_tokens = c.rollout.max_new_tokens or default_len
        check_prompts(self.source, self.encoder.encode, max_new_tokens=self.max_new_tokens,
                      context=getattr(self.model.config, "max_position_embeddings", None),
                      unk_id=getattr(tokenizer, "unk_token_id", None))  # fmt: skip
        self.ref_model = None
        if c.algo.kl_coef > 0:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        if optimizer is not None and self.sharding.enabled:
            raise ValueError("a sharded run builds its own optimizer: do not pass one")
        self.model, self.ref_model, self.engine = self.sharding.prepare(
            self.model, self.ref_model, self.engine
        )  # sharded: the engine generates with a full-weight replica
        try:  # each prompt once per forward where the model allows (train.shared_prompt)
            self.shared_prompt = resolve_shared_prompt(
                c.model.shared_prompt, self.model, sharded=self.sharding.enabled
            )
        except ValueError as e:
            raise ConfigError(str(e)) from e
        self.advantage_fn = advantage_fn
        self.optimizer = optimizer or build_optimizer(
            self.model,
            c.algo,
            fused=self.device.type in ("cpu", "cuda") and not self.sharding.enabled,
        )
        self.scheduler = warmup_scheduler(self.optimizer, c.algo.warmup_steps)
        self.controller = build_controller(c) if controller is None else controller
        self.detector = build_detector(c)
        self.dynamics = EntropyDynamics()
        self.entropy_fit = EntropyPerformanceFit()
        self.last_entropy: float | None = None
        self.rng = random.Random(c.run.seed + self.dist.rank)
        self.shuffle = torch.Generator().manual_seed(c.run.seed)
        self.loss_kwargs = dict(c.algo.loss_kwargs)
        self.entropy_coef = c.algo.entropy_coef
        self.entropy_adv_alpha = c.algo.entropy_adv_alpha
        # float16 needs loss scaling, bfloat16 (float32's exponent range) does not
        self.scaler = LossScaler() if self.compute_dtype == torch.float16 else None
        self.step = 0
        self.bad_in_a_row = 0
        self.stop_reason: str | None = None
        warn_if_on_policy(c.algo.ppo_epochs, c.algo.mini_batches)
        self.loggers: list[Logger] = []
        latest = self.rundir.open(c, self.dist)  # main: lock, tidy, newest intact checkpoint
        try:
            if latest is not None:
                self._resume(latest)
            if self.dist.is_main:
                self.rundir.record(c, self.step)  # lost steps' logs, config segment
                self._announce()
                if loggers is None:
                    try:
                        loggers = default_loggers(self.run_dir, c.run.loggers, c.to_dict())
                    except ValueError as e:
                        raise ConfigError(f"run.loggers: {e}") from e
                self.loggers = loggers
        except BaseException:
            self.rundir.release()
            raise

    def _announce(self) -> None:
        """Engine, logits path, dtype and threads actually chosen: one line on stderr, and
        run_info.json in the run directory."""
        info = run_info(
            self.engine, self.model, logits=self.settings().logits_mode, device=self.device,
            stop_token_ids=self.stop_ids, tokenizer=self.tokenizer,
            chat_template=self.cfg.data.chat_template, world_size=self.dist.world_size,
            compute_dtype=self.compute_dtype, shared_prompt=self.shared_prompt,
        )  # fmt: skip
        (self.run_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
        print(format_run_info(info), file=sys.stderr)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, float]:
        """Train for run.steps RL steps; returns the last step's metrics."""
        c = self.cfg
        last: dict[str, float] = {}
        bar = ProgressBar(c.run.steps, self.step, enabled=c.run.progress and self.dist.is_main)
        if self.dist.is_main:
            self.rundir.lock.acquire()  # held since __init__, unless a fit() before released it
        saved = -1  # the step last checkpointed by this fit()
        # SIGINT / SIGTERM: the step in progress finishes, is saved, then Interrupted is raised
        signals = StopSignals(self._on_signal)
        try:
            signals.__enter__()
            first = self.step == 0  # step 0: where the policy starts (and the task's start metrics)
            if first and (row := start_metrics(self) | (self.evaluate() if c.eval.every else {})):
                self.log(row)
            while self.step < c.run.steps and self.stop_reason is None:
                if self._signalled(signals):
                    break
                self.step += 1
                t0 = time.perf_counter()
                batch, metrics = self.rollout()  # rollout -> reward -> advantage -> filter
                t1 = time.perf_counter()
                if self._all_ranks_have(batch) and batch is not None:
                    metrics |= self.update(batch)  # old log-probs, then epochs x mini-batches
                metrics |= {"time/rollout": t1 - t0, "time/update": time.perf_counter() - t1}
                if c.eval.every and (self.step % c.eval.every == 0 or self.step == c.run.steps):
                    metrics |= self.evaluate()
                metrics |= self.control(metrics)  # controller, collapse detector
                metrics["time/step"] = time.perf_counter() - t0
                metrics["throughput/tokens_per_s"] = (
                    metrics.pop("_tokens", 0.0) / metrics["time/step"]
                )
                self.log(metrics)
                bar.update(metrics)
                last = metrics
                if c.run.save_every and self.step % c.run.save_every == 0:
                    self.save()
                    saved = self.step
            interrupted = self._signalled(signals)  # also a signal during the last step's save
            if saved != self.step and not (interrupted and self.step == 0):  # 0: nothing trained
                self.save()
            if interrupted:
                got = signals.received or SIGINT  # another rank's signal: stop as for Ctrl-C
                raise Interrupted(got, self.step, saved=self.step > 0)
        except KeyboardInterrupt as e:
            bar.close()
            if not isinstance(e, Interrupted):  # a second signal: stopped at once, mid-step
                last_ckpt = ckpt.latest_checkpoint(self.run_dir) if self.dist.is_main else None
                print(f"\nstopped at once during step {self.step}, not saved; a resume goes on "
                      f"from {last_ckpt.name if last_ckpt else 'step 0'}", file=sys.stderr)  # fmt: skip
            raise
        except OSError as e:  # disk full or read-only while writing logs: one line, not a trace
            if (err := disk_error(e, self.run_dir)) is None:
                raise
            raise err from e
        finally:
            signals.__exit__(None, None, None)
            bar.close()
            for lg in self.loggers:
                lg.close()
            self.rundir.release()
        if self.stop_reason:
            print(f"stopped at step {self.step}: {self.stop_reason}", file=sys.stderr)
        return last

    def _on_signal(self, signum: int) -> None:
        if self.dist.is_main:
            doing = (f"finishing step {self.step}, then saving a checkpoint" if self.step
                     else "stopping before step 1 (nothing trained yet)")  # fmt: skip
            print(f"\n{signal_name(signum)}: {doing} (signal again to stop at once, without "
                  "saving)", file=sys.stderr, flush=True)  # fmt: skip

    def _signalled(self, signals: StopSignals) -> bool:
        """Whether a stop signal arrived (on any rank: all stop after the same step)."""
        got = signals.received is not None
        if self.dist.enabled:
            got = bool(all_reduce(torch.tensor(float(got)), self.dist, "max") > 0)
        return got

    # ------------------------------------------------------------------ parts
    def rollout(self) -> tuple[RolloutBatch | None, dict[str, float]]:
        self.sharding.gather(self.model)  # sharded: refresh the rollout replica (every rank)
        self.engine.sync_weights(self.model)
        batch, samples, metrics = collect(
            self.cfg, source=self.source, engine=self.engine, encoder=self.encoder,
            reward_fn=self.reward_fn, rng=self.rng, max_new_tokens=self.max_new_tokens,
            pad_token_id=self.pad_id, advantage_fn=self.advantage_fn,
            prompts_per_step=self.prompts_per_rank,
        )  # fmt: skip
        metrics["_tokens"] = float(sum(len(c) for c in samples.completion_ids))
        if self.task is not None:  # the task's own metrics of the first-round samples
            metrics |= self.task.rollout_metrics(samples.examples, samples.texts, samples.correct)
        metrics = reduce_metrics(metrics, self.dist, how=_ROLLOUT_REDUCE)
        if (n := metrics.pop("_entropy_tokens", 0.0)) > 0:  # a token mean over all processes
            metrics["entropy/rollout"] = metrics.pop("_entropy_sum") / n
        if self.dist.is_main:
            self._write_samples(samples)
        return batch, metrics

    def _all_ranks_have(self, batch: RolloutBatch | None) -> bool:
        """Every rank must take part in the update's collectives: skip it everywhere if any rank
        kept no group (dynamic sampling can leave a rank empty)."""
        return bool(all_reduce(torch.tensor(float(batch is not None)), self.dist, "min") > 0)

    def evaluate(self) -> dict[str, float]:
        """Held-out evaluation on the main process; the numbers are shared with every rank so
        that controllers and the collapse detector decide the same everywhere."""
        self.sharding.gather(self.model)  # every rank, before evaluation on rank 0
        out = [evaluate(self) if self.dist.is_main else {}]
        if self.dist.enabled:
            torch.distributed.broadcast_object_list(out, src=0)
        return out[0]

    def settings(self) -> UpdateSettings:
        c = self.cfg
        vocab = self.model.get_output_embeddings().weight.shape[0]
        mode = c.model.logits
        if mode == "auto":
            softcap = getattr(self.model.config, "final_logit_softcapping", None)
            mode = "fused" if vocab >= 4096 and not softcap else "full"
        return UpdateSettings(
            loss=c.algo.loss, loss_kwargs=self.loss_kwargs, agg=c.algo.agg, epochs=c.algo.ppo_epochs,
            mini_batches=c.algo.mini_batches, micro_batch_size=c.algo.micro_batch_size,
            temperature=c.rollout.temperature, grad_clip=c.algo.grad_clip, entropy_coef=self.entropy_coef,
            kl_coef=c.algo.kl_coef, kl_kind=c.algo.kl_kind, kl_in_loss=c.algo.kl_in == "loss",
            logits_mode=mode, chunk_size=c.model.chunk_size, max_len=self.max_new_tokens,
            sharded=self.sharding.enabled, autocast=self.compute_dtype,
            shared_prompt=self.shared_prompt, skip_zero_advantage=c.algo.skip_zero_advantage,
        )  # fmt: skip

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        s = self.settings()
        # then no pi_old forward, no TIS (ratio 1)
        exact = sampler_is_pi_old(self.engine, batch, autocast=s.autocast)
        reward_kl = self.ref_model is not None and not s.kl_in_loss
        needs_old_first = self.entropy_adv_alpha > 0 or reward_kl
        if pi_old_from_update(s, exact=exact, needs_old_first=needs_old_first):
            s = replace(s, old_in_update=True, tis_cap=self.cfg.algo.tis_cap)
        old = record_old_logprobs(
            self.model, self.ref_model, batch, s, from_sampler=exact, info=self.dist
        )
        batch.old_logprobs, batch.ref_logprobs = old.get("logprobs"), old.get("ref_logprobs")
        tis = (
            {}
            if exact or s.old_in_update
            else importance_weights(batch, cap=self.cfg.algo.tis_cap, info=self.dist)
        )
        if self.entropy_adv_alpha > 0:  # Cheng et al.: A + min(alpha H_old, |A|/kappa)
            tis |= shape_advantages(
                batch, old["entropy"], alpha=self.entropy_adv_alpha,
                kappa=self.cfg.algo.entropy_adv_kappa, info=self.dist,
            )  # fmt: skip
        if reward_kl:  # KL as a per-sequence reward penalty
            from entropy_rl.ops.kl import kl_estimate

            kl_seq = (
                kl_estimate(old["logprobs"], old["ref_logprobs"], kind=s.kl_kind) * batch.mask
            ).sum(1)
            batch.advantages = batch.advantages - self.cfg.algo.kl_coef * kl_seq
        due = forecast_due(self.step, self.cfg.control.forecast_every, s)  # same-batch change
        before = capture_head_inputs(self.model, batch, s) if due else None
        upd, bad = ppo_update(
            self.model, self.optimizer, batch, s, generator=self.shuffle, info=self.dist,
            scaler=self.scaler, pi_old_out=old if s.old_in_update else None,
        )  # fmt: skip
        if s.old_in_update:  # pi_old's statistics came from the update's own forward
            batch.old_logprobs = old["logprobs"]
        metrics = self._rollout_policy_metrics(batch, old)
        if before is not None:
            upd |= same_batch_entropy_change(self.model, batch, s, before, info=self.dist)
        metrics |= upd | tis
        all_bad = bad > 0 and upd["update/optimizer_steps"] == 0
        self.bad_in_a_row = self.bad_in_a_row + 1 if all_bad else 0
        if self.bad_in_a_row >= self.cfg.algo.max_bad_steps:
            raise TrainingStopped(
                f"{self.bad_in_a_row} RL steps in a row had only non-finite losses or gradients; "
                "lower algo.lr or check the reward scale (the last checkpoint is intact)"
            )
        lr = float(self.scheduler.get_last_lr()[0])
        metrics["lr"] = lr
        lr_scale = lr * upd["update/optimizer_steps"]
        metrics |= self.dynamics.update(metrics["entropy/mean"], metrics["cov/logp_adv"], lr_scale)
        if upd["update/optimizer_steps"]:  # warm-up counts steps that updated the weights
            self.scheduler.step()
        return metrics

    def _rollout_policy_metrics(
        self, batch: RolloutBatch, old: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """The monitor's entropy, surprisal, top-1 and covariance metrics from pi_old's token
        statistics ``old`` (no forward of its own), gathered over ranks (identity for one
        process) so that every metric is a global one."""
        g = {k: all_gather_rows(v, self.dist) for k, v in old.items() if k != "ref_logprobs"}
        seen = all_gather_rows((batch.targets != -1).float(), self.dist)
        mask = all_gather_rows(batch.mask, self.dist)
        adv = all_gather_rows(batch.advantages, self.dist)
        metrics = entropy_stats(g["entropy"], g["logprobs"], seen, top1_prob=g["top1"])
        metrics |= entropy_by_position(g["entropy"], seen, max_len=self.max_new_tokens)
        self.last_entropy = metrics["entropy/mean"]
        metrics["cov/logp_adv"] = logp_adv_covariance(
            g["logprobs"], adv[:, None].expand_as(mask), mask
        )
        return metrics

    def control(self, metrics: dict[str, float]) -> dict[str, float]:
        """Controller update, then the collapse detector; applies the actions it may take.

        Everything the controller sets (``controller_settings``) goes through
        :meth:`apply_settings` and is logged as ``control/<name>``, with the bonus coefficient
        and the clip bounds in force."""
        out: dict[str, float] = {}
        sets = controller_settings(self.controller)
        if self.controller is not None and "entropy/mean" in metrics:  # no update, nothing measured
            out = self.controller.update(self.step, metrics)
            sets = controller_settings(self.controller)
            self.apply_settings(sets)
        out["control/entropy_coef"] = self.entropy_coef
        if "entropy_adv_alpha" in sets:
            out["control/entropy_adv_alpha"] = self.entropy_adv_alpha
        for key in ("eps_high", "eps_low", *sets):
            if key in self.loss_kwargs:
                out[f"control/{key}"] = float(self.loss_kwargs[key])
        if self.detector is None:
            return out
        for event in self.detector.observe({**metrics, **out, "step": self.step}):
            self._on_event(event)
        return out

    def apply_settings(self, settings: Mapping[str, float]) -> None:
        """Set a controller's settings (names of ``controllers.SETTINGS``) for the next update:
        ``entropy_coef`` and ``entropy_adv_alpha`` here, the rest (``LOSS_SETTINGS``: clip
        bounds, loss weights) in the loss's keyword arguments, checked by ``validate_algo``."""
        for name, value in settings.items():
            if name == "entropy_coef":
                self.entropy_coef = float(value)
            elif name == "entropy_adv_alpha":
                self.entropy_adv_alpha = float(value)
            else:
                self.loss_kwargs[name] = float(value)

    def _on_event(self, event: Any) -> None:
        record = event.to_dict()
        if self.dist.is_main:
            append_lines(self.run_dir / "events.jsonl", [json.dumps(record)])
            print(f"[step {self.step}] {record['rule']}: {record['message']}", file=sys.stderr)
        action = record.get("action")
        if action == "stop":
            self.stop_reason = f"collapse detector rule {record['rule']} (action=stop)"
        elif action == "raise_eps_high":  # through the controllers' path (apply_settings)
            self.apply_settings({"eps_high": float(self.loss_kwargs.get("eps_high", 0.2)) + 0.05})
        elif action == "raise_entropy_coef":
            self.apply_settings({"entropy_coef": max(self.entropy_coef * 2.0, 1e-3)})
        elif action == "rollback":
            self._rollback()

    def _rollback(self) -> None:
        """Reload weights and optimizer from the newest checkpoint (training goes on from there)."""
        latest = ckpt.latest_checkpoint(self.run_dir)
        if latest is None:
            print("rollback requested but no checkpoint exists yet; continuing", file=sys.stderr)
            return
        self._load_weights(latest)
        opt_state = ckpt.load_state(latest)["optimizer"]
        self.sharding.load_optimizer_state(self.model, self.optimizer, opt_state)

    def log(self, metrics: dict[str, float]) -> None:
        row = {
            "step": self.step,
            **{k: _finite(v) for k, v in metrics.items() if not k.startswith("_")},
        }
        for lg in self.loggers:
            lg.log(self.step, row)

    def _write_samples(self, samples: Any) -> None:
        n = self.cfg.run.log_samples
        if n <= 0:
            return
        g = self.cfg.rollout.group_size
        groups = len(samples.texts) // g
        lines = []  # each group's first completion, then each one's second, ...: once each
        for i in range(min(n, len(samples.texts))):
            row = (i % groups) * g + i // groups
            ex = samples.examples[row // g]
            rec = {"step": self.step, "prompt": ex.prompt, "completion": samples.texts[row],
                   "reward": samples.rewards[row]}  # fmt: skip
            lines.append(json.dumps(rec))
        append_lines(self.run_dir / "samples.jsonl", lines)  # whole lines, even on a full disk

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        st: dict[str, Any] = {
            "step": self.step,
            "optimizer": self.sharding.optimizer_state(self.model, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "rng": ckpt.rng_state(),
            "trainer_rng": self.rng.getstate(),
            "shuffle_rng": self.shuffle.get_state(),
            "dynamics": self.dynamics.state_dict(),
            "loss_kwargs": dict(self.loss_kwargs),
            "entropy_coef": self.entropy_coef,
            "entropy_adv_alpha": self.entropy_adv_alpha,
            "bad_in_a_row": self.bad_in_a_row,
            "last_entropy": self.last_entropy,
            "loss_scaler": None if self.scaler is None else self.scaler.state_dict(),
        }
        for name in ("controller", "detector", "source", "entropy_fit"):
            obj = getattr(self, name)
            if obj is not None and hasattr(obj, "state_dict"):
                st[name] = obj.state_dict()
        return st

    def save(self) -> Path | None:
        """Checkpoint on the main process (with every rank's RNG states); others wait for it."""
        state = self.state()
        per_rank = [{"rng": state["rng"], "trainer_rng": state["trainer_rng"]}]
        if self.dist.enabled:
            per_rank = [{} for _ in range(self.dist.world_size)]
            torch.distributed.all_gather_object(
                per_rank, {"rng": state["rng"], "trainer_rng": state["trainer_rng"]}
            )
        state["rank_rng"] = per_rank
        path = None
        full = self.sharding.full_model(self.model)  # sharded: gathered on every rank
        if self.dist.is_main:
            path = ckpt.save_checkpoint(
                self.run_dir, self.step, model=full, tokenizer=self.tokenizer,
                state=state, keep=self.cfg.run.keep_checkpoints,
            )  # fmt: skip
        if self.dist.enabled:
            torch.distributed.barrier()
        return path

    def _load_weights(self, path: Path) -> None:
        missing, unexpected = self.sharding.load_model_state(self.model, ckpt.load_weights(path))
        tied = {k for k in missing if "lm_head" in k}  # tied embeddings are saved once
        if set(missing) - tied or unexpected:
            raise RuntimeError(
                f"checkpoint {path} does not fit the model: missing {missing}, unexpected {unexpected}"
            )

    def _resume(self, latest: Path) -> None:
        self._load_weights(latest)
        st = ckpt.load_state(latest)
        self.step = int(st["step"])
        self.sharding.load_optimizer_state(self.model, self.optimizer, st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        restore_rng(st, self.rng, self.dist, latest)  # this rank's global + sampling RNG
        self.shuffle.set_state(st["shuffle_rng"])
        self.dynamics.load_state_dict(st["dynamics"])
        self.loss_kwargs = dict(st["loss_kwargs"])
        self.entropy_coef = float(st["entropy_coef"])
        self.entropy_adv_alpha = float(st.get("entropy_adv_alpha", self.entropy_adv_alpha))
        self.bad_in_a_row = int(st["bad_in_a_row"])
        self.last_entropy = st.get("last_entropy")
        if self.scaler is not None and st.get("loss_scaler"):
            self.scaler.load_state_dict(st["loss_scaler"])
        for name in ("controller", "detector", "source", "entropy_fit"):
            obj = getattr(self, name)
            if name in st and obj is not None and hasattr(obj, "load_state_dict"):
                obj.load_state_dict(st[name])

    def _seed(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
