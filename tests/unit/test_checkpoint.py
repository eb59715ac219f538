"""Checkpoints: the state codec (JSON + safetensors, no pickle), manifests, fallback to the newest
intact checkpoint, disk full, and a pickled callable that must be refused, not run."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("safetensors")

from entropy_rl.errors import UserError
from entropy_rl.train import checkpoint as ckpt


class _Model(torch.nn.Module):
    """The two methods save_checkpoint uses, without transformers."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(4, 3)

    def save_pretrained(self, path: Path, safe_serialization: bool = True) -> None:
        from safetensors.torch import save_file

        save_file(dict(self.state_dict()), str(Path(path) / "model.safetensors"))


def _optimizer_state() -> tuple[torch.optim.Optimizer, dict]:
    model = _Model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model.lin(torch.ones(2, 4)).sum().backward()
    opt.step()
    return opt, opt.state_dict()


def _state() -> dict:
    _, opt = _optimizer_state()
    rng = ckpt.rng_state()
    return {"step": 3, "optimizer": opt, "rng": rng, "rank_rng": [{"rng": rng}],
            "trainer_rng": random.Random(5).getstate(), "nan": float("nan"), "none": None}  # fmt: skip


def test_state_round_trip_restores_every_value(tmp_path: Path):
    state = _state()
    ckpt.save_state(tmp_path, state)
    back = ckpt.load_state(tmp_path)
    assert back["step"] == 3 and back["none"] is None and np.isnan(back["nan"])
    # optimizer: int parameter ids, the betas tuple and tensors come back as they were
    opt, _ = _optimizer_state()
    opt.load_state_dict(back["optimizer"])
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    for pid, s in state["optimizer"]["state"].items():
        for k, v in s.items():
            assert torch.equal(back["optimizer"]["state"][pid][k], v)
    # RNG states: the next draws after restoring equal the next draws of the original
    ckpt.set_rng_state(back["rng"])
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(state["rng"])
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())
    r = random.Random()
    r.setstate(back["trainer_rng"])
    assert r.random() == random.Random(5).random()
    # the torch RNG state appears twice in the state (top and rank 0): stored once
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / ckpt.STATE_TENSORS))
    assert len(stored) == 2 * 3 + 1  # (step, exp_avg, exp_avg_sq) x 2 params + the torch RNG


def test_state_holds_no_pickle_and_refuses_unknown_tags(tmp_path: Path):
    ckpt.save_state(tmp_path, _state())
    doc = json.loads((tmp_path / ckpt.STATE_JSON).read_text())
    doc["state"]["evil"] = {"__reduce__": ["os.system", "echo hi"]}
    (tmp_path / ckpt.STATE_JSON).write_text(json.dumps(doc))
    with pytest.raises(ckpt.DamagedCheckpoint, match="unknown tag '__reduce__'"):
        ckpt.load_state(tmp_path)
    with pytest.raises(TypeError, match="cannot store a builtin_function_or_method"):
        ckpt.save_state(tmp_path, {"f": print})


class _Evil:
    """Unpickling this calls os.mkdir(marker): a stand-in for any code in a shared state file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickled_callable_in_a_state_file_is_refused_not_run(tmp_path: Path):
    ck = tmp_path / "step_000002"
    ck.mkdir()
    marker = tmp_path / "code_ran"
    torch.save({"step": 2, "payload": _Evil(marker)}, ck / ckpt.LEGACY_STATE)
    with pytest.raises(
        UserError, match=r"refusing to load .*state\.pt: .*\(it names posix\.mkdir\)"
    ):
        ckpt.load_state(ck)
    assert not marker.exists()
    # the file is what it claims: the unpickler of entropy-rl < 0.2 would have run it
    torch.load(ck / ckpt.LEGACY_STATE, weights_only=False)
    assert marker.is_dir()


def test_a_legacy_state_pt_with_numpy_rng_still_loads(tmp_path: Path):
    pytest.importorskip("torch", minversion="2.5")
    state = {"step": 4, "rng": ckpt.rng_state(), "trainer_rng": random.Random(1).getstate()}
    torch.save(state, tmp_path / ckpt.LEGACY_STATE)
    back = ckpt.load_state(tmp_path)
    assert back["step"] == 4
    assert np.array_equal(back["rng"]["numpy"][1], state["rng"]["numpy"][1])
    (tmp_path / ckpt.COMPLETE).write_text("4")
    assert ckpt.verify(tmp_path) is None  # written before manifests existed: accepted as is


def _save(run: Path, step: int, **kw) -> Path:
    return ckpt.save_checkpoint(run, step, model=_Model(step), tokenizer=None, state=_state(), **kw)


def _flip(f: Path, at: int) -> None:
    data = bytearray(f.read_bytes())
    data[at] ^= 0x01
    f.write_bytes(bytes(data))


def test_manifest_catches_truncation_and_a_flipped_bit(tmp_path: Path):
    c2, c4 = _save(tmp_path, 2), _save(tmp_path, 4)
    assert ckpt.verify(c4) is None
    assert ckpt.find_intact(tmp_path) == (c4, [])
    weights = c4 / "model.safetensors"
    size = weights.stat().st_size
    _flip(weights, size - 5)  # in the tensor data: safetensors itself would load it silently
    assert ckpt.verify(c4) == "model.safetensors: sha256 differs from its manifest"
    assert ckpt.find_intact(tmp_path) == (c2, [(c4, ckpt.verify(c4))])
    _flip(weights, size - 5)
    assert ckpt.verify(c4) is None
    with open(weights, "r+b") as f:
        f.truncate(size // 2)
    assert ckpt.verify(c4) == f"model.safetensors has {size // 2} bytes, its manifest says {size}"
    (c2 / ckpt.MANIFEST).unlink()
    assert ckpt.find_intact(tmp_path) == (None, [(c4, ckpt.verify(c4)), (c2, "no MANIFEST.json")])


def test_disk_full_while_writing_names_enospc_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    good = _save(tmp_path, 2)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_state", full)
    with pytest.raises(ckpt.DiskFullError) as info:
        _save(tmp_path, 3)
    msg = str(info.value)
    assert "(ENOSPC)" in msg and f"{good} is the last intact checkpoint" in msg
    assert "\n" not in msg
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert ckpt.find_intact(tmp_path) == (good, [])
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000002\n"


def test_disk_full_is_seen_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    good = _save(tmp_path, 2)
    usage = shutil.disk_usage(tmp_path)
    # 10 bytes free: less than the 3x4 + 3 float32 weights (60 bytes) alone
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: usage._replace(free=10))
    with pytest.raises(ckpt.DiskFullError, match=r"bytes needed, 10 free\); .*step_000002"):
        _save(tmp_path, 3)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", good.name]


def test_pruning_keeps_the_newest_and_drops_an_abandoned_future(tmp_path: Path):
    for s in (1, 2, 3):
        _save(tmp_path, s, keep=2)
    assert [p.name for p in ckpt.step_dirs(tmp_path)] == ["step_000003", "step_000002"]
    _save(tmp_path, 2, keep=2)  # a resume went back to step 1 and saved step 2 again
    assert [p.name for p in ckpt.step_dirs(tmp_path)] == ["step_000002"]
