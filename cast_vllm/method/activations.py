"""Residual-stream activations at the last prompt token, for chosen layers.

Two readers with one interface, ``read(token_ids) -> float32 array [prompts, layers, hidden]``:

- ``VLLMActivationReader``: vLLM's pooling runner with the probe architecture
  (``engine/probe_model.py``): continuous batching, paged attention, GPU or CPU;
- ``HFActivationReader``: transformers with forward hooks on ``model.model.layers[i]``, the
  reference. (Not ``output_hidden_states``: its last entry has the final norm applied.)

Both take token ids, not text, so that they see exactly the same tokens: tokenize once on the
host with ``encode_prompts``. A reader is described by a picklable ``ReaderConfig`` so Ray
actors can build their own copy (``ray_workers.py``).
"""

from __future__ import annotations

import gc
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from cast_vllm import envs
from cast_vllm.engine.shutdown import shutdown_llm
from cast_vllm.errors import CastVllmError

BACKENDS = ("vllm", "hf")


class ActivationError(CastVllmError, ValueError):
    """Activations cannot be read as asked (bad layers, prompt too long, unknown backend)."""


@dataclass(frozen=True)
class ModelInfo:
    path: str
    architectures: tuple[str, ...]
    model_type: str
    hidden_size: int
    num_layers: int
    max_positions: int | None
    dtype: str              # the checkpoint's dtype, e.g. "float32"


def model_info(path: str | Path) -> ModelInfo:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(path))
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    dtype = getattr(text_cfg, "dtype", None) or getattr(cfg, "dtype", None) or "float32"
    return ModelInfo(str(path), tuple(getattr(cfg, "architectures", None) or ()), cfg.model_type,
                     int(text_cfg.hidden_size), int(text_cfg.num_hidden_layers),
                     getattr(text_cfg, "max_position_embeddings", None), str(dtype).replace("torch.", ""))


def parse_layers(spec: "str | Sequence[int] | None", num_layers: int) -> list[int]:
    """``None``/``"all"`` -> every layer; ``"5-10"``, ``"3,5,7"``, ``"5-10,20"``; negative
    numbers count from the end (``-1`` is the last layer). Sorted, unique, range-checked."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return list(range(num_layers))
    if isinstance(spec, str):
        out: list[int] = []
        for part in spec.split(","):
            part = part.strip()
            m = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)", part) if not re.fullmatch(r"-?\d+", part) else None
            try:
                if m:
                    lo, hi = (_wrap(int(g), num_layers) for g in m.groups())
                    if lo > hi:
                        raise ActivationError(f"layer range {part!r} is empty")
                    out.extend(range(lo, hi + 1))
                else:
                    out.append(_wrap(int(part), num_layers))
            except ValueError as exc:
                if isinstance(exc, ActivationError):
                    raise
                raise ActivationError(f"cannot read layers {spec!r}: use 'all', '5-10' or '3,5,7'") from None
        layers = out
    else:
        layers = [_wrap(int(x), num_layers) for x in spec]
    if not layers:
        raise ActivationError("no layers selected")
    return sorted(set(layers))


def _wrap(layer: int, num_layers: int) -> int:
    value = layer + num_layers if layer < 0 else layer
    if not 0 <= value < num_layers:
        raise ActivationError(f"layer {layer} out of range: the model has {num_layers} layers (0..{num_layers - 1})")
    return value


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def encode_prompts(tokenizer: Any, prompts: Sequence[str], *, chat: bool = False) -> list[list[int]]:
    """Token ids of each prompt. Chat-rendered prompts already contain their special tokens."""
    enc = tokenizer(list(prompts), add_special_tokens=not chat)["input_ids"]
    for i, ids in enumerate(enc):
        if not ids:
            raise ActivationError(f"prompt {i} tokenizes to nothing")
    return [list(map(int, ids)) for ids in enc]


@dataclass(frozen=True)
class ReaderConfig:
    """Everything a worker needs to build a reader (picklable)."""

    model: str
    layers: tuple[int, ...]
    backend: str = "vllm"
    dtype: str = "auto"                  # "auto": the checkpoint's dtype, in both backends
    batch_size: int = 8                  # HF: prompts per forward pass (sorted by length; padding grows with it)
    max_model_len: int | None = None     # vLLM: default min(model max, 4096)
    kv_cache_bytes: int = 512 << 20      # vLLM: explicit KV cache size (CPU needs one)
    enforce_eager: bool = True           # vLLM: skip torch.compile / CUDA graphs (prefill-only job)
    device: str | None = None            # HF: default cuda when available
    in_process: bool = True              # vLLM: engine core in this process (no extra process to spawn)
    engine_kwargs: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ActivationError(f"unknown backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        if not self.layers:
            raise ActivationError("a reader needs at least one layer")
        if list(self.layers) != sorted(set(self.layers)):
            raise ActivationError(f"layers must be sorted and unique, got {list(self.layers)}")


class ActivationReader(Protocol):
    layers: tuple[int, ...]

    def read(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray: ...

    def close(self) -> None: ...


class HFActivationReader:
    """Reference reader: HF transformers, forward hooks, right padding, last real token."""

    def __init__(self, config: ReaderConfig):
        import torch
        from transformers import AutoModelForCausalLM

        self.config = config
        self.layers = tuple(config.layers)
        self.device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = "auto" if config.dtype == "auto" else getattr(torch, config.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype).to(self.device).eval()
        self.info = model_info(config.model)
        if self.layers[-1] >= self.info.num_layers:
            raise ActivationError(f"layer {self.layers[-1]} out of range: the model has {self.info.num_layers} layers")
        self.pad_id = 0

    def read(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        import torch

        n = len(token_ids)
        out = np.empty((n, len(self.layers), self.info.hidden_size), dtype=np.float32)
        if n == 0:
            return out
        from cast_vllm.engine.architectures import decoder_layers

        decoder = decoder_layers(self.model)
        captured: dict[int, torch.Tensor] = {}
        state = {}

        def hook(layer):
            def fn(module, args, output):
                h = output[0] if isinstance(output, (tuple, list)) else output
                captured[layer] = h[state["rows"], state["last"]].float().cpu()
            return fn

        handles = [decoder[layer].register_forward_hook(hook(layer)) for layer in self.layers]
        try:
            order = sorted(range(n), key=lambda i: len(token_ids[i]))
            bs = max(1, self.config.batch_size)
            with torch.inference_mode():
                for start in range(0, n, bs):
                    idx = order[start:start + bs]
                    lengths = [len(token_ids[i]) for i in idx]
                    width = max(lengths)
                    ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
                    mask = torch.zeros((len(idx), width), dtype=torch.long)
                    for row, i in enumerate(idx):
                        ids[row, : lengths[row]] = torch.tensor(token_ids[i], dtype=torch.long)
                        mask[row, : lengths[row]] = 1
                    state["rows"] = torch.arange(len(idx), device=self.device)
                    state["last"] = torch.tensor(lengths, device=self.device) - 1
                    self.model.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                     use_cache=False)
                    for j, layer in enumerate(self.layers):
                        out[idx, j] = captured[layer].numpy()
        finally:
            for h in handles:
                h.remove()
        return out

    def close(self) -> None:
        self.model = None
        gc.collect()


class VLLMActivationReader:
    """vLLM pooling runner + probe architecture; one pooled vector per prompt holding every
    chosen layer, split on the host."""

    def __init__(self, config: ReaderConfig):
        from vllm import LLM
        from vllm.config import PoolerConfig

        from cast_vllm.engine.probe_model import probe_hf_overrides, register_probes

        self.config = config
        self.layers = tuple(config.layers)
        self.info = model_info(config.model)
        if self.layers[-1] >= self.info.num_layers:
            raise ActivationError(f"layer {self.layers[-1]} out of range: the model has {self.info.num_layers} layers")
        register_probes()  # the plugin does this too; needed when it is not installed
        max_len = config.max_model_len or min(self.info.max_positions or 4096, 4096)
        self.max_model_len = max_len
        kwargs = dict(
            runner="pooling", convert="embed",
            pooler_config=PoolerConfig(pooling_type="LAST", use_activation=False),
            hf_overrides=probe_hf_overrides(self.info.architectures, self.layers),
            kv_cache_memory_bytes=config.kv_cache_bytes, enforce_eager=config.enforce_eager,
            # vLLM's "auto" may downcast float32 checkpoints (e.g. to bf16 on CPU); HF's does not
            max_model_len=max_len, dtype=self.info.dtype if config.dtype == "auto" else config.dtype,
        )
        kwargs.update(dict(config.engine_kwargs))
        # vLLM reads this when the engine is built; set it only for the construction
        with envs.temporarily(envs.VLLM_ENABLE_V1_MULTIPROCESSING, "0" if config.in_process else None):
            self.llm = LLM(config.model, **kwargs)

    def read(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        from vllm.inputs import TokensPrompt

        n, hidden = len(token_ids), self.info.hidden_size
        if n == 0:
            return np.empty((0, len(self.layers), hidden), dtype=np.float32)
        for i, ids in enumerate(token_ids):
            if len(ids) >= self.max_model_len:
                raise ActivationError(
                    f"prompt {i} has {len(ids)} tokens, more than the engine's max_model_len {self.max_model_len}; "
                    "use fewer demonstrations or a larger --max-model-len")
        outs = self.llm.encode([TokensPrompt(prompt_token_ids=list(map(int, ids))) for ids in token_ids],
                               pooling_task="embed", use_tqdm=False)
        data = np.stack([o.outputs.data.float().cpu().numpy() for o in outs])
        expected = len(self.layers) * hidden
        if data.shape[1] != expected:
            raise ActivationError(f"probe returned {data.shape[1]} values per prompt, expected {expected}")
        return data.reshape(n, len(self.layers), hidden)

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            shutdown_llm(llm)
            del llm
        gc.collect()


def open_reader(config: ReaderConfig) -> ActivationReader:
    if config.backend == "hf":
        return HFActivationReader(config)
    return VLLMActivationReader(config)
