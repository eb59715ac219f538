"""model.path as a hub id that is not on disk: one line at once, never a minute of retries."""

from __future__ import annotations

import pytest

pytest.importorskip("huggingface_hub")

import huggingface_hub
from huggingface_hub.errors import HFValidationError

from entropy_rl.errors import UserError
from entropy_rl.models import check_hub_model


@pytest.fixture
def not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)


def _model_info_raising(exc: BaseException):
    def model_info(repo_id: str, timeout: float | None = None) -> None:
        assert timeout is not None and timeout <= 10  # a bounded probe, not the default retries
        raise exc

    return model_info


def test_unreachable_hub_is_one_line(monkeypatch: pytest.MonkeyPatch, not_cached: None) -> None:
    err = ConnectionRefusedError(111, "Connection refused")
    monkeypatch.setattr(huggingface_hub, "model_info", _model_info_raising(err))
    with pytest.raises(UserError) as info:
        check_hub_model("models/smollm2")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("model.path models/smollm2: not a local directory (write ./models/")
    assert "hub is unreachable (ConnectionRefusedError" in msg


def test_unknown_hub_model_is_one_line(monkeypatch: pytest.MonkeyPatch, not_cached: None) -> None:
    monkeypatch.setattr(huggingface_hub, "model_info", _model_info_raising(HFValidationError("x")))
    with pytest.raises(UserError, match=r"the hub has no model named org/name$"):
        check_hub_model("org/name")


def test_a_bug_in_the_probe_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch, not_cached: None
) -> None:
    monkeypatch.setattr(huggingface_hub, "model_info", _model_info_raising(KeyError("ours")))
    with pytest.raises(KeyError):
        check_hub_model("org/name")


def test_a_cached_model_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/c/config.json")
    monkeypatch.setattr(huggingface_hub, "model_info", _model_info_raising(AssertionError("net")))
    check_hub_model("org/name")  # returns: from_pretrained reads the cache
