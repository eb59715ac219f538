"""The pieces of train.sharding that run in one process: launch detection, micro-batch
alignment, the fused statistics inside the head's forward, optimizer state re-keying.
(Two sharded processes: tests/integration/test_fsdp.py.)"""

from __future__ import annotations

import pytest
import torch

from entropy_rl.train.batch import build_batch, policy_token_stats
from entropy_rl.train.config import ConfigError
from entropy_rl.train.distributed import DistInfo, micro_batches, to_local
from entropy_rl.train.sharding import (
    NoSharding,
    _ids_to_names,
    make_sharding,
    resolve_sharding,
    sharded_token_stats,
)

FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}


@pytest.mark.parametrize(
    ("mode", "env", "world", "want"),
    [
        ("auto", {}, 2, "none"),  # torchrun / accelerate without FSDP: data parallelism
        ("auto", FSDP_ENV, 2, "fsdp"),
        ("auto", FSDP_ENV, 1, "none"),  # one process: nothing to shard across
        ("auto", {"ACCELERATE_USE_FSDP": "false"}, 4, "none"),
        ("fsdp", {}, 2, "fsdp"),  # required explicitly: accelerate's default FSDP options
        ("none", FSDP_ENV, 2, "none"),
        ("none", {"ACCELERATE_USE_DEEPSPEED": "true"}, 2, "none"),
    ],
)
def test_resolve_sharding(mode, env, world, want):
    assert resolve_sharding(mode, world_size=world, env=env) == want


@pytest.mark.parametrize(
    ("mode", "env", "world", "match"),
    [
        ("zero3", {}, 2, r"run.sharding='zero3' is not allowed; choose one of \['auto'"),
        ("auto", {"ACCELERATE_USE_DEEPSPEED": "true"}, 2, "DeepSpeed is not supported"),
        ("fsdp", {"ACCELERATE_USE_DEEPSPEED": "true"}, 2, "DeepSpeed is not supported"),
        ("fsdp", {}, 1, "needs at least 2 processes, got 1"),
        ("auto", {**FSDP_ENV, "FSDP_VERSION": "1"}, 2, "fsdp_version: 1 is not supported"),
    ],
)
def test_resolve_sharding_refuses(mode, env, world, match):
    with pytest.raises(ConfigError, match=match):
        resolve_sharding(mode, world_size=world, env=env)


def test_make_sharding_single_process_is_identity():
    s = make_sharding("auto", DistInfo())
    assert isinstance(s, NoSharding) and not s.enabled
    model, engine = torch.nn.Linear(2, 2), object()
    assert s.prepare(model, None, engine) == (model, None, engine)
    assert s.full_model(model) is model


def test_micro_batches():
    idx = torch.arange(12)
    # 12 rows at 5 per micro-batch: 5 + 5 + 2
    assert [p.tolist() for p in micro_batches(idx, 5, DistInfo())] == [
        [0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]
    ]  # fmt: skip
    # a rank with no rows in a mini-batch runs no micro-batch (torch's split gives one empty)
    assert micro_batches(idx[:0], 5, DistInfo()) == []
    # one process: the largest count over ranks is its own, nothing is padded
    assert len(micro_batches(idx, 5, DistInfo(), aligned=True)) == 3
    assert len(micro_batches(idx[:0], 5, DistInfo(), aligned=True)) == 0


def test_to_local_passes_plain_tensors():
    x = torch.arange(3.0)
    assert to_local(x) is x


def _tiny():
    from entropy_rl.tasks.model import build_tiny_model

    return build_tiny_model(19, layers=2, hidden=32, heads=2, kv_heads=1, mlp=64, seed=0)


def _batch():
    g = torch.Generator().manual_seed(1)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    comps = [torch.randint(0, 19, (n,), generator=g).tolist() for n in (4, 2, 3)]
    return build_batch(prompts, comps, rewards=torch.zeros(3), advantages=torch.zeros(3),
                       pad_token_id=0)  # fmt: skip


@pytest.mark.parametrize("mode", ["fused", "full"])
def test_sharded_token_stats_match_policy_token_stats(mode):
    """The fused kernel run as the head's forward (inside model.forward) gives the statistics
    and the gradients of the direct path (base model, then the kernel on lm_head.weight)."""
    torch.manual_seed(0)
    model, batch = _tiny(), _batch()
    kw = {"temperature": 0.7, "mode": mode, "chunk_size": 4, "with_top1": True}
    real = batch.targets >= 0  # padded positions' values are meaningless in both paths
    ref = policy_token_stats(model, batch, **kw)
    ((ref[0] + 0.3 * ref[1]) * real).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    got = sharded_token_stats(model, batch, **kw)
    ((got[0] + 0.3 * got[1]) * real).sum().backward()
    assert "forward" not in vars(model.get_output_embeddings())  # the patch is removed
    assert not bool(real.all())  # the batch has padding
    for a, b in zip(got, ref, strict=True):
        assert a is not None and b is not None and a.shape == b.shape == (3, 4)
        torch.testing.assert_close(a[real], b[real], rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-5, atol=1e-6, msg=n)
    assert got[2] is not None and bool((got[2] > 0).all())  # top-1 probabilities
    lp, ent, top1 = sharded_token_stats(model, batch, **{**kw, "with_top1": False})
    assert top1 is None and lp.shape == ent.shape == (3, 4)


def test_optimizer_state_rekeyed_by_name_loads_into_unsharded_optimizer():
    """A sharded run saves the optimizer state keyed by parameter name; an unsharded resume
    (NoSharding) loads it back to the same moments."""
    model = _tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    by_name = _ids_to_names(model, opt.state_dict())
    names = [n for n, _ in model.named_parameters()]
    assert list(by_name["state"]) == names and by_name["param_groups"][0]["params"] == names
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-2)
    NoSharding().load_optimizer_state(model, fresh, by_name)
    for p in model.parameters():
        for k in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(fresh.state[p][k], opt.state[p][k], rtol=0, atol=0)
