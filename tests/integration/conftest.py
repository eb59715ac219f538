from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Qwen2 with the character tokenizer, saved like any HF checkpoint."""
    pytest.importorskip("transformers")
    from entropy_rl.tasks.model import build_tiny_model
    from entropy_rl.tasks.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    model = build_tiny_model(len(tok), layers=2, hidden=32, heads=2, kv_heads=1, mlp=64, seed=0)
    d = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d
