"""Atomic, verified checkpoints that load without running any code from the run directory.

Layout: ``RUN_DIR/checkpoints/step_000050/`` holds the model (``save_pretrained``, safetensors),
the tokenizer, the trainer state as ``state.json`` (plain values) + ``state.safetensors`` (its
tensors: optimizer moments, torch RNG states), ``MANIFEST.json`` (size and sha256 of every
file) and a ``COMPLETE`` marker. A checkpoint is written to a ``.tmp-*`` directory first,
fsynced, then renamed into place; ``RUN_DIR/checkpoints/latest`` (a one-line file, replaced
atomically) names the newest one, for people and tools. Under FSDP sharding the trainer passes
the full weights gathered on every rank and only rank 0 writes, so the layout is the same.

Loading (:func:`find_intact`) takes the newest ``step_*`` directory whose files match its
manifest; a damaged one (truncated, bit-flipped, half-deleted) is reported and the next older
one is used. What this module does *not* do: it never unpickles. ``state.json`` holds only
JSON values with three tags (tuple, mapping with non-string keys, reference to a tensor), and
safetensors holds only tensors, so a shared run directory cannot make a resume run code. A
``state.pt`` of entropy-rl < 0.2 is read with ``torch.load(weights_only=True)`` and an
allow-list of the numpy types its RNG state needs; a pickle naming anything else is refused.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entropy_rl.errors import UserError

COMPLETE = "COMPLETE"
MANIFEST = "MANIFEST.json"
STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
LEGACY_STATE = "state.pt"
FORMAT = 1
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(UserError):
    """No space (or quota) left on the device while writing the run directory."""


class DamagedCheckpoint(UserError):
    """A checkpoint whose files do not match its manifest, or whose state cannot be read."""


# ----------------------------------------------------------------------------- files


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


# ----------------------------------------------------------------------------- state codec


class _Encoder:
    """A JSON value for a state; its tensors go to ``tensors`` under ``t0``, ``t1``, ... (one
    entry per tensor object; a tensor sharing another's memory is copied, as safetensors
    refuses shared memory)."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._names: dict[int, str] = {}
        self._storages: set[int] = set()

    def __call__(self, obj: Any) -> Any:
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, torch.Tensor):
            return {"__tensor__": self._tensor(obj)}
        if isinstance(obj, np.ndarray):
            return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, tuple):
            return {"__tuple__": [self(v) for v in obj]}
        if isinstance(obj, list):
            return [self(v) for v in obj]
        if isinstance(obj, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in obj):
                return {k: self(v) for k, v in obj.items()}
            return {"__items__": [[self(k), self(v)] for k, v in obj.items()]}
        raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint's state")

    def _tensor(self, obj: torch.Tensor) -> str:
        if id(obj) not in self._names:
            t = obj.detach().cpu().contiguous()
            ptr = t.untyped_storage().data_ptr()
            if ptr in self._storages:
                t = t.clone()
            self._storages.add(t.untyped_storage().data_ptr())
            self._names[id(obj)] = f"t{len(self.tensors)}"
            self.tensors[self._names[id(obj)]] = t
        return self._names[id(obj)]


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    tags = [k for k in obj if k.startswith("__")]
    if tags:
        raise ValueError(f"unknown tag {tags[0]!r}")
    return {k: _decode(v, tensors) for k, v in obj.items()}


def save_state(ckpt: Path, state: dict[str, Any]) -> None:
    """``state`` as ``state.json`` + ``state.safetensors`` in the directory ``ckpt``."""
    from safetensors.torch import save_file

    enc = _Encoder()
    doc = {"format": FORMAT, "state": enc(state)}
    save_file(enc.tensors, str(ckpt / STATE_TENSORS))
    (ckpt / STATE_JSON).write_text(json.dumps(doc))


def load_state(ckpt: Path) -> dict[str, Any]:
    """The trainer state of checkpoint ``ckpt``; nothing in it is executed."""
    if not (ckpt / STATE_JSON).is_file() and (ckpt / LEGACY_STATE).is_file():
        return _load_legacy(ckpt / LEGACY_STATE)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        doc = json.loads((ckpt / STATE_JSON).read_text())
        tensors = load_file(str(ckpt / STATE_TENSORS))
        state = _decode(doc["state"], tensors)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise DamagedCheckpoint(f"{ckpt}: cannot read its state ({e})") from e
    if not isinstance(state, dict):
        raise DamagedCheckpoint(f"{ckpt}: {STATE_JSON} does not hold a mapping")
    return state


def _load_legacy(path: Path) -> dict[str, Any]:
    """A ``state.pt`` of entropy-rl < 0.2: unpickled by torch's weights-only unpickler, which
    refuses every global outside its allow-list (here: tensors and the numpy RNG state's array)."""
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    safe = getattr(torch.serialization, "safe_globals", None)
    if safe is None:
        raise UserError(
            f"{path} is an old-format checkpoint state; reading it safely needs torch >= 2.5"
        )
    try:
        with safe(allowed):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (or others) for a forbidden global
        named = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it names {named.group(1)}" if named else str(e).splitlines()[0][:160]
        raise UserError(
            f"refusing to load {path}: a pickle outside the allow-list of a checkpoint "
            f"({what}); entropy-rl never runs code from a run directory: start a fresh run, or "
            "resume a checkpoint you wrote yourself"
        ) from e
    if not isinstance(state, dict):
        raise DamagedCheckpoint(f"{path} does not hold a mapping")
    return dict(state)


def load_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The model weights of checkpoint ``ckpt`` (every ``*.safetensors`` but the state's)."""
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for f in sorted(p for p in ckpt.glob("*.safetensors") if p.name != STATE_TENSORS):
        weights |= load_file(str(f))
    return weights


# ----------------------------------------------------------------------------- manifest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(ckpt: Path) -> list[Path]:
    skip = {MANIFEST, COMPLETE}
    return sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name not in skip)


def write_manifest(ckpt: Path) -> None:
    """``MANIFEST.json``: size and sha256 of every file of ``ckpt`` (but itself and COMPLETE)."""
    files = {
        p.relative_to(ckpt).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in _files(ckpt)
    }
    doc = {"format": FORMAT, "files": files}
    with open(ckpt / MANIFEST, "w") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def verify(ckpt: Path) -> str | None:
    """None if every file of ``ckpt`` matches its manifest, else what is wrong (one phrase).
    A checkpoint without a manifest passes only in the old format (a ``state.pt``)."""
    if not (ckpt / COMPLETE).is_file():
        return "no COMPLETE marker"
    if not (ckpt / MANIFEST).is_file():
        legacy = (ckpt / LEGACY_STATE).is_file() and not (ckpt / STATE_JSON).exists()
        return None if legacy else f"no {MANIFEST}"
    try:
        files = json.loads((ckpt / MANIFEST).read_text())["files"]
        expected = {str(k): (int(v["size"]), str(v["sha256"])) for k, v in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{MANIFEST} unreadable ({e})"
    for name, (size, digest) in sorted(expected.items()):
        p = ckpt / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != size:
            return f"{name} has {p.stat().st_size} bytes, its manifest says {size}"
        if sha256_file(p) != digest:
            return f"{name}: sha256 differs from its manifest"
    extra = {p.relative_to(ckpt).as_posix() for p in _files(ckpt)} - set(expected)
    weights = sorted(
        n for n in extra if n.endswith(".safetensors") or n in (STATE_JSON, LEGACY_STATE)
    )
    if weights:
        return f"{weights[0]} is not in its manifest"
    return None


# ----------------------------------------------------------------------------- save / find


def step_dirs(run_dir: Path) -> list[Path]:
    """The ``step_*`` directories with a COMPLETE marker, newest (highest step) first."""
    root = run_dir / "checkpoints"
    done = [p for p in root.glob("step_*") if (p / COMPLETE).is_file()]
    return sorted(done, key=lambda p: p.name, reverse=True)


def step_of(ckpt: Path) -> int:
    return int(ckpt.name.split("_")[-1])


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _needed_bytes(model: Any, state: dict[str, Any]) -> int:
    """Bytes the checkpoint will take, at least: the weights and the state's tensors."""
    return _tensor_bytes(dict(model.state_dict())) + _tensor_bytes(state)


def save_checkpoint(
    run_dir: Path, step: int, *, model: Any, tokenizer: Any, state: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, prune to ``keep`` newest.

    Disk full (ENOSPC / EDQUOT), checked before writing and caught while writing, raises
    :class:`DiskFullError` naming the last intact checkpoint; the half-written one is removed.
    Checkpoints of steps after ``step`` (a timeline a resume abandoned) are removed on pruning.
    """
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    need = _needed_bytes(model, state)
    if shutil.disk_usage(root).free < need:
        raise _disk_full(run_dir, step, f"{need} bytes needed, "
                         f"{shutil.disk_usage(root).free} free")  # fmt: skip
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-step_{step:06d}-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_state(tmp, state)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        write_manifest(tmp)
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
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            raise _disk_full(run_dir, step, str(e)) from e
        if isinstance(e, Exception) and shutil.disk_usage(root).free < need:
            raise _disk_full(run_dir, step, f"{type(e).__name__}: {e}") from e  # a library's error
        raise
    atomic_write_text(root / "latest", final.name + "\n")
    done = [p for p in step_dirs(run_dir) if step_of(p) <= step]
    for p in step_dirs(run_dir):
        if step_of(p) > step:  # a step a resume went back before: no longer this run's past
            shutil.rmtree(p, ignore_errors=True)
    for old_ckpt in done[keep:]:
        shutil.rmtree(old_ckpt, ignore_errors=True)
    return final


def _disk_full(run_dir: Path, step: int, detail: str) -> DiskFullError:
    done = step_dirs(run_dir)
    last = f"{done[0]} is the last intact checkpoint" if done else "no checkpoint was written yet"
    return DiskFullError(
        f"no space left on device (ENOSPC) while writing checkpoint step_{step:06d} in "
        f"{run_dir / 'checkpoints'} ({detail}); {last}: free space, then continue with "
        f"entropy-rl train --resume {run_dir}",
    )


def find_intact(run_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint whose files match its manifest, and the newer damaged ones with
    what is wrong with each."""
    damaged: list[tuple[Path, str]] = []
    for cand in step_dirs(run_dir):
        problem = verify(cand)
        if problem is None:
            return cand, damaged
        damaged.append((cand, problem))
    return None, damaged


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint of ``run_dir`` (None if there is none)."""
    return find_intact(run_dir)[0]
