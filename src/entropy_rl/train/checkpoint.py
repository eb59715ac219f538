"""Atomic checkpoints: a kill at any moment leaves the last good checkpoint loadable.

Layout: ``RUN_DIR/checkpoints/step_000050/`` holds the model (``save_pretrained``, safetensors),
the tokenizer, and ``state.pt`` (optimizer, scheduler, RNG states, step, controller / detector
state). A checkpoint is written to a ``.tmp-*`` directory first, fsynced, then renamed into
place; ``RUN_DIR/checkpoints/latest`` (a one-line file, itself replaced atomically) names the
newest complete one. Loading never trusts a directory that ``latest`` does not name or that
lacks its ``COMPLETE`` marker. Under FSDP sharding the trainer passes the full weights gathered
on every rank (train.sharding's replica) and only rank 0 writes, so the layout is the same.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

COMPLETE = "COMPLETE"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file + fsync + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path, step: int, *, model: Any, tokenizer: Any, state: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, prune to ``keep`` newest."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-step_{step:06d}-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / "state.pt")
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        (tmp / COMPLETE).write_text(str(step))
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. after resume): move the old one aside
            old = root / f".old-step_{step:06d}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / "latest", final.name + "\n")
    done = sorted(p for p in root.glob("step_*") if (p / COMPLETE).exists())
    for old_ckpt in done[:-keep]:
        if old_ckpt != final:
            shutil.rmtree(old_ckpt, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of ``run_dir`` (None if there is none)."""
    root = run_dir / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / COMPLETE).is_file():
            return cand
    done = sorted(p for p in root.glob("step_*") if (p / COMPLETE).is_file())
    return done[-1] if done else None


def load_state(ckpt: Path) -> dict[str, Any]:
    # weights_only=False: the state holds numpy RNG state and plain python objects we wrote ourselves
    state: dict[str, Any] = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
    return state
