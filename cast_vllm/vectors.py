"""Steering vector files: safetensors (our format) and GGUF control vectors (llama.cpp, repeng).

Layer numbering follows DESIGN.md: layer ``i`` is the output of decoder layer ``i`` (0-based),
HF ``output_hidden_states[i + 1]``. llama.cpp numbers control-vector tensors from 1
(``direction.1`` is the output of the first block), so ``direction.<n>`` is our layer ``n - 1``.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

FORMAT = "cast-vllm/1"
NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")


class VectorFileError(ValueError):
    """A vector file or vector that cannot be used; the message names the problem."""


def check_vector_name(name: str) -> str:
    """Vector names are plain file stems, never paths."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name in {".", ".."}:
        raise VectorFileError(
            f"invalid vector name {name!r}: use letters, digits, '.', '_' or '-' (no paths)"
        )
    return name


class SteeringVector:
    """One direction per steered layer, plus string metadata (provenance)."""

    def __init__(self, directions: Mapping[int, torch.Tensor | np.ndarray], metadata: Mapping[str, str] | None = None):
        if not directions:
            raise VectorFileError("a steering vector needs at least one layer")
        dirs: dict[int, torch.Tensor] = {}
        hidden = None
        for layer, t in sorted(directions.items()):
            if not isinstance(layer, (int, np.integer)) or int(layer) < 0:
                raise VectorFileError(f"layer index {layer!r} must be a non-negative int")
            t = torch.as_tensor(t).detach().to("cpu", torch.float32).reshape(-1).contiguous()
            if hidden is None:
                hidden = t.numel()
            elif t.numel() != hidden:
                raise VectorFileError(f"layer {layer} has size {t.numel()}, other layers have {hidden}")
            if not torch.isfinite(t).all():
                raise VectorFileError(f"layer {layer} contains NaN or Inf")
            dirs[int(layer)] = t
        self.directions: dict[int, torch.Tensor] = dirs
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in (metadata or {}).items()}

    @property
    def hidden_size(self) -> int:
        return next(iter(self.directions.values())).numel()

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    def content_hash(self) -> str:
        """sha256 over layer ids and float32 bytes: identifies the vector's numbers, not its name."""
        h = hashlib.sha256()
        for layer in self.layers:
            h.update(layer.to_bytes(4, "little"))
            h.update(self.directions[layer].numpy().tobytes())
        return h.hexdigest()

    def check_against_model(self, hidden_size: int, num_layers: int, where: str = "vector") -> None:
        if self.hidden_size != hidden_size:
            raise VectorFileError(
                f"{where} has hidden size {self.hidden_size}, the model has {hidden_size}"
            )
        bad = [layer for layer in self.layers if layer >= num_layers]
        if bad:
            raise VectorFileError(
                f"{where} has layers {bad} out of range: the model has {num_layers} layers (0..{num_layers - 1})"
            )

    # ---- safetensors -------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``.safetensors`` (DESIGN.md format) or, for a ``.gguf`` suffix, a GGUF control vector."""
        path = Path(path)
        if path.suffix == ".gguf":
            return self.save_gguf(path)
        from safetensors.torch import save_file

        meta = {
            "format": FORMAT,
            "hidden_size": str(self.hidden_size),
            "num_layers": self.metadata.get("num_layers", str(max(self.layers) + 1)),
            "model": self.metadata.get("model", "unknown"),
            "method": self.metadata.get("method", "unknown"),
            "created": self.metadata.get("created", datetime.now(timezone.utc).isoformat(timespec="seconds")),
        }
        meta = {**self.metadata, **meta}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({f"layer.{i}": t for i, t in self.directions.items()}, str(tmp), metadata=meta)
        tmp.replace(path)
        self.metadata = meta
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SteeringVector":
        path = Path(path)
        if not path.is_file():
            raise VectorFileError(f"vector file {path} does not exist")
        if path.suffix == ".gguf":
            return cls.load_gguf(path)
        return cls.from_safetensors_bytes(path.read_bytes(), where=str(path))

    @classmethod
    def from_safetensors_bytes(cls, data: bytes, where: str = "upload") -> "SteeringVector":
        """Parse safetensors bytes (never pickle); refuses anything but ``layer.<i>`` float tensors."""
        from safetensors import safe_open  # noqa: F401  (ensures the package is present)
        from safetensors.torch import load as st_load
        import json
        import struct

        if len(data) < 8:
            raise VectorFileError(f"{where} is not a safetensors file (too short)")
        (header_len,) = struct.unpack("<Q", data[:8])
        if header_len > len(data) - 8 or header_len > 100_000_000:
            raise VectorFileError(f"{where} is not a safetensors file (bad header length)")
        try:
            header = json.loads(data[8 : 8 + header_len])
            tensors = st_load(data)
        except Exception as exc:
            raise VectorFileError(f"{where} is not a valid safetensors file: {exc}") from exc
        metadata = header.get("__metadata__") or {}
        fmt = metadata.get("format")
        if fmt is not None and fmt != FORMAT:
            raise VectorFileError(f"{where} has format {fmt!r}, expected {FORMAT!r}")
        directions = {}
        for key, t in tensors.items():
            m = re.fullmatch(r"layer\.(\d+)", key)
            if not m:
                raise VectorFileError(f"{where} has tensor {key!r}; expected only 'layer.<i>' tensors")
            if not t.is_floating_point():
                raise VectorFileError(f"{where} tensor {key} has dtype {t.dtype}, expected float")
            directions[int(m.group(1))] = t
        try:
            return cls(directions, metadata)
        except VectorFileError as exc:
            raise VectorFileError(f"{where}: {exc}") from None

    # ---- GGUF control vectors ---------------------------------------------------------
    def save_gguf(self, path: str | Path, arch: str | None = None) -> Path:
        """llama.cpp / repeng control vector: F32 tensors ``direction.<layer + 1>``."""
        import gguf

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = gguf.GGUFWriter(str(path), "controlvector")
        writer.add_string("controlvector.model_hint", arch or self.metadata.get("model_type", "llama"))
        writer.add_uint32("controlvector.layer_count", len(self.directions))
        for key, value in self.metadata.items():
            writer.add_string(f"cast_vllm.{key}", value)
        for layer, t in self.directions.items():
            writer.add_tensor(f"direction.{layer + 1}", t.numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    @classmethod
    def load_gguf(cls, path: str | Path) -> "SteeringVector":
        import gguf

        try:
            reader = gguf.GGUFReader(str(path))
        except Exception as exc:
            raise VectorFileError(f"{path} is not a readable GGUF file: {exc}") from exc
        directions = {}
        for tensor in reader.tensors:
            m = re.fullmatch(r"direction\.(\d+)", tensor.name)
            if not m:
                continue
            n = int(m.group(1))
            if n < 1:
                raise VectorFileError(f"{path}: {tensor.name} is not a valid llama.cpp layer (they start at 1)")
            if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
                raise VectorFileError(f"{path}: {tensor.name} is {tensor.tensor_type.name}, expected F32")
            directions[n - 1] = torch.from_numpy(np.array(tensor.data, dtype=np.float32).reshape(-1))
        if not directions:
            raise VectorFileError(f"{path} holds no 'direction.<n>' tensors: not a control vector")
        metadata = {"format": FORMAT, "method": "gguf-import", "source_file": Path(path).name}
        for field in reader.fields.values():
            if field.name.startswith("cast_vllm."):
                metadata[field.name[len("cast_vllm."):]] = bytes(field.parts[field.data[0]]).decode()
        try:
            return cls(directions, metadata)
        except VectorFileError as exc:
            raise VectorFileError(f"{path}: {exc}") from None

    def __repr__(self) -> str:
        return f"SteeringVector(layers={self.layers}, hidden_size={self.hidden_size})"

