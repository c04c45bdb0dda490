"""``SteeringVector`` and its own file format (safetensors, ``layer.<i>``), read strictly.

Layer numbering follows DESIGN.md: layer ``i`` is the output of decoder layer ``i`` (0-based),
HF ``output_hidden_states[i + 1]``. GGUF control vectors live in ``gguf_vectors.py``, the peers'
other formats in ``vector_formats.py``.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import re
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from cast_vllm.atomic import atomic_write_bytes
from cast_vllm.errors import CastVllmError

FORMAT = "cast-vllm/1"
#: vector names (DESIGN.md): plain ASCII file stems, matched whole (``$`` let "name\n" through)
NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
#: longest vector name; longer ones are refused before they reach the filesystem (ENAMETOOLONG)
MAX_VECTOR_NAME_LENGTH = 128
#: most layers a vector may hold; layer indices are below it too (no model comes close)
MAX_LAYERS = 1024
#: the ``__metadata__`` block of a file: UTF-8 bytes of all keys and values together
MAX_METADATA_BYTES = 64 << 10
#: a safetensors header (its JSON) as a whole
MAX_HEADER_BYTES = 1 << 20
#: tensor dtypes a vector file may use, by safetensors name; all become float32 on load
FILE_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
_LAYER_KEY_RE = re.compile(r"layer\.(0|[1-9][0-9]*)")
#: our GGUF metadata namespace; 0.1.0 files carry it too, with whatever metadata the vector had


class VectorFileError(CastVllmError, ValueError):
    """A vector file or vector that cannot be used; the message names the problem."""


def check_vector_name(name: str) -> str:
    """Vector names are plain file stems, never paths, and short enough for any filesystem."""
    if isinstance(name, str) and len(name) > MAX_VECTOR_NAME_LENGTH:
        raise VectorFileError(f"invalid vector name {name[:40]!r}...: {len(name)} characters, the limit is "
                              f"{MAX_VECTOR_NAME_LENGTH}")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in {".", ".."}:
        raise VectorFileError(
            f"invalid vector name {name!r}: use letters, digits, '.', '_' or '-' (no paths)"
        )
    return name


def check_metadata(metadata: Mapping, where: str = "vector") -> dict[str, str]:
    """Metadata is a flat str -> str map of at most MAX_METADATA_BYTES (UTF-8, keys and values)."""
    if not isinstance(metadata, Mapping):
        raise VectorFileError(f"{where}: metadata must be a JSON object of strings, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise VectorFileError(f"{where}: metadata values must be strings; {key!r} is {type(value).__name__}")
    size = sum(len(k.encode("utf-8", "surrogatepass")) + len(v.encode("utf-8", "surrogatepass"))
               for k, v in metadata.items())
    if size > MAX_METADATA_BYTES:
        raise VectorFileError(f"{where}: metadata is {size} bytes, the limit is {MAX_METADATA_BYTES}")
    return dict(metadata)


def index_from_key(key: str, pattern: re.Pattern, where: str, expected: str, limit: int) -> int:
    """The number in a canonical tensor name (ASCII digits, no leading zeros), below ``limit``."""
    m = pattern.fullmatch(key) if isinstance(key, str) else None
    if not m:
        raise VectorFileError(f"{where} has tensor {key!r}; expected only {expected} tensors "
                              "(ASCII digits, no leading zeros)")
    digits = m.group(1)
    if len(digits) > len(str(limit)) or int(digits) >= limit:   # length first: int() of 5000 digits raises
        raise VectorFileError(f"{where} tensor {key!r}: layer number out of range (at most {limit - 1})")
    return int(digits)


def _check_layer(layer) -> int:
    if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool) or int(layer) < 0:
        raise VectorFileError(f"layer index {layer!r} must be a non-negative int")
    if int(layer) >= MAX_LAYERS:
        raise VectorFileError(f"layer index {int(layer)} is out of range: at most {MAX_LAYERS - 1}")
    return int(layer)


def _as_direction(layer: int, t) -> torch.Tensor:
    """One layer's direction: a non-empty 1-D float tensor, stored float32 on the CPU, finite."""
    try:
        t = torch.as_tensor(t)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise VectorFileError(f"layer {layer} is not a tensor: {exc}") from None
    if t.dtype not in FILE_DTYPES.values():
        raise VectorFileError(f"layer {layer} has dtype {t.dtype}; expected float16, bfloat16, float32 or float64")
    if t.dim() != 1:
        raise VectorFileError(f"layer {layer} has shape {list(t.shape)}; expected one dimension [hidden]")
    if t.numel() == 0:
        raise VectorFileError(f"layer {layer} is empty (shape [0])")
    t = t.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(t).all():
        raise VectorFileError(f"layer {layer} contains NaN or Inf (in float32)")
    return t


class SteeringVector:
    """One direction per steered layer, plus string metadata (provenance)."""

    def __init__(self, directions: Mapping[int, torch.Tensor | np.ndarray], metadata: Mapping[str, str] | None = None):
        if not directions:
            raise VectorFileError("a steering vector needs at least one layer")
        if len(directions) > MAX_LAYERS:
            raise VectorFileError(f"{len(directions)} layers, the limit is {MAX_LAYERS}")
        checked = [(_check_layer(layer), t) for layer, t in directions.items()]
        dirs: dict[int, torch.Tensor] = {}
        for layer, t in sorted(checked, key=lambda lt: lt[0]):
            t = _as_direction(layer, t)
            if dirs and t.numel() != next(iter(dirs.values())).numel():
                raise VectorFileError(f"layer {layer} has size {t.numel()}, other layers have "
                                      f"{next(iter(dirs.values())).numel()}")
            dirs[layer] = t
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
    def _file_metadata(self) -> dict[str, str]:
        """The metadata a saved file carries: ours plus the DESIGN.md keys."""
        meta = {
            "format": FORMAT,
            "hidden_size": str(self.hidden_size),
            "num_layers": self.metadata.get("num_layers", str(max(self.layers) + 1)),
            "model": self.metadata.get("model", "unknown"),
            "method": self.metadata.get("method", "unknown"),
            "created": self.metadata.get("created", datetime.now(timezone.utc).isoformat(timespec="seconds")),
        }
        return {**self.metadata, **meta}

    def save(self, path: str | Path) -> Path:
        """Write ``.safetensors`` (DESIGN.md format) or, for a ``.gguf`` suffix, a GGUF control
        vector; atomically, so concurrent writers and readers of one path never see a torn file."""
        path = Path(path)
        if path.suffix == ".gguf":
            return self.save_gguf(path)
        atomic_write_bytes(path, self.to_safetensors_bytes(where=str(path)))
        return path

    def to_safetensors_bytes(self, where: str = "vector") -> bytes:
        """The ``.safetensors`` file's bytes (what ``save`` writes; ``from_safetensors_bytes`` reads)."""
        from safetensors.torch import save as st_save

        meta = check_metadata(self._file_metadata(), where=where)   # refuse what load would refuse
        data = st_save({f"layer.{i}": t for i, t in self.directions.items()}, metadata=meta)
        self.metadata = meta
        return data

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
        """Parse safetensors bytes (never pickle). We check the header before the library reads
        the data, so any malformed input ends as a VectorFileError that names the problem."""
        from safetensors.torch import load as st_load

        header = _read_header(data, where)
        meta = header.pop("__metadata__", None)
        metadata = check_metadata({} if meta is None else meta, where)
        fmt = metadata.get("format")
        if fmt is not None and fmt != FORMAT:
            raise VectorFileError(f"{where} has format {fmt!r}, expected {FORMAT!r}")
        layers = _check_entries(header, where)
        try:
            tensors = st_load(bytes(data))
        except Exception as exc:   # the library's own SafetensorError and friends: offsets, sizes
            raise VectorFileError(f"{where} is not a valid safetensors file: {exc}") from exc
        if set(tensors) != set(layers):
            raise VectorFileError(f"{where}: the library read tensors {sorted(tensors)}, the header names "
                                  f"{sorted(layers)}")
        try:
            return cls({layers[key]: t for key, t in tensors.items()}, metadata)
        except VectorFileError as exc:
            raise VectorFileError(f"{where}: {exc}") from None

    # ---- GGUF control vectors (gguf_vectors.py) ------------------------------------------
    def save_gguf(self, path: str | Path, arch: str | None = None) -> Path:
        """llama.cpp / repeng control vector ``direction.<layer>`` (layer 0 left out: llama.cpp refuses it)."""
        from cast_vllm.gguf_vectors import write_gguf

        return write_gguf(self, path, arch)

    @classmethod
    def load_gguf(cls, path: str | Path) -> "SteeringVector":
        """``direction.<n>`` is layer ``n``; files of cast-vllm 0.1.0 are read as it wrote them."""
        from cast_vllm.gguf_vectors import read_gguf

        return read_gguf(path)

    # ---- arithmetic: repeng's ControlVector operators; results record method="combine" ----------
    #: numpy scalars on the left (``np.float32(2) * v``) defer to __rmul__ instead of broadcasting
    __array_ufunc__ = None

    def __add__(self, other):
        if not isinstance(other, SteeringVector):
            return NotImplemented
        from cast_vllm.vector_math import combine

        return combine([(self, 1.0), (other, 1.0)])

    def __radd__(self, other):
        """Only ``0 + v``, so that ``sum(vectors)`` works."""
        if isinstance(other, numbers.Real) and not isinstance(other, bool) and other == 0:
            from cast_vllm.vector_math import combine

            return combine([(self, 1.0)])
        return NotImplemented

    def __sub__(self, other):
        if not isinstance(other, SteeringVector):
            return NotImplemented
        from cast_vllm.vector_math import combine

        return combine([(self, 1.0), (other, -1.0)])

    def __neg__(self):
        from cast_vllm.vector_math import combine

        return combine([(self, -1.0)])

    def __mul__(self, scale):
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            return NotImplemented
        from cast_vllm.vector_math import combine

        return combine([(self, scale)])

    __rmul__ = __mul__

    def __truediv__(self, scale):
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            return NotImplemented
        if scale == 0:
            raise ZeroDivisionError("steering vector divided by zero")
        from cast_vllm.vector_math import combine

        return combine([(self, 1.0 / float(scale))])

    def __repr__(self) -> str:
        return f"SteeringVector(layers={self.layers}, hidden_size={self.hidden_size})"


def _read_header(data: bytes, where: str) -> dict:
    """The JSON header of safetensors bytes, bounded by MAX_HEADER_BYTES; duplicate keys refused
    (json keeps the last one, the library might not: two readers must never disagree)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise VectorFileError(f"{where}: expected bytes, got {type(data).__name__}")
    if len(data) < 8:
        raise VectorFileError(f"{where} is not a safetensors file (too short)")
    (header_len,) = struct.unpack("<Q", bytes(data[:8]))
    if header_len > MAX_HEADER_BYTES:
        raise VectorFileError(f"{where} is not a safetensors file we accept: its header is {header_len} bytes, "
                              f"the limit is {MAX_HEADER_BYTES}")
    if header_len > len(data) - 8:
        raise VectorFileError(f"{where} is not a safetensors file (bad header length)")
    try:
        text = bytes(data[8:8 + header_len]).decode("utf-8")
        header = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:   # JSON, UTF-8, int-size errors and our duplicates
        raise VectorFileError(f"{where}: the safetensors header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise VectorFileError(f"{where}: the safetensors header must be a JSON object")
    return header


def _no_duplicate_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"key {dup!r} appears twice")
    return dict(pairs)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _check_entries(header: dict, where: str) -> dict[str, int]:
    """Tensor entries (``__metadata__`` already removed): count, canonical keys, dtype, 1-D
    shape; returns key -> layer."""
    if not header:
        raise VectorFileError(f"{where} holds no tensors; a steering vector needs at least one layer")
    if len(header) > MAX_LAYERS:
        raise VectorFileError(f"{where} holds {len(header)} tensors, the limit is {MAX_LAYERS}")
    layers = {}
    for key, entry in header.items():
        layers[key] = index_from_key(key, _LAYER_KEY_RE, where, "'layer.<i>'", MAX_LAYERS)
        if not isinstance(entry, dict):
            raise VectorFileError(f"{where} tensor {key!r}: malformed header entry {entry!r:.60}")
        dtype, shape = entry.get("dtype"), entry.get("shape")
        if not isinstance(dtype, str) or dtype not in FILE_DTYPES:
            raise VectorFileError(f"{where} tensor {key!r} has dtype {dtype!r}; expected one of "
                                  f"{', '.join(FILE_DTYPES)}")
        if not (isinstance(shape, list) and len(shape) == 1 and type(shape[0]) is int and shape[0] > 0):
            raise VectorFileError(f"{where} tensor {key!r} has shape {shape!r:.60}; expected [hidden]: "
                                  "one dimension, not empty")
    return layers
