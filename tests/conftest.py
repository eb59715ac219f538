"""Fixtures shared by unit and integration tests (this directory is on sys.path for them)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session", params=["qwen2", "llama"])
def chat_model_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A tiny random instruct model (Qwen2 with ChatML, Llama with a Llama-3 template) with a
    trained byte-level BPE tokenizer, saved as a Hugging Face directory (tests/chat_models.py).
    ``chat_model_dir.name`` starts with the architecture."""
    pytest.importorskip("transformers")
    from chat_models import make_chat_model

    arch = request.param
    return make_chat_model(arch, tmp_path_factory.mktemp(arch))
