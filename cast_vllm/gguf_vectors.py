"""GGUF control vectors, the llama.cpp / repeng / EasySteer interchange format.

GGUF ``direction.<n>`` is our layer ``n``, as in the peers: llama.cpp adds ``direction.il`` at
the end of 0-based block ``il`` (and refuses a file holding ``direction.0``: it never steers
block 0); repeng and EasySteer write ``direction.{layer}``. cast-vllm 0.1.0 wrote
``direction.<layer + 1>``; its files are still read that way (``read_gguf``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch

from cast_vllm.atomic import atomic_write
from cast_vllm.vectors import (FORMAT, MAX_LAYERS, SteeringVector, VectorFileError, check_metadata,
                               index_from_key)

logger = logging.getLogger(__name__)

_GGUF_KEY_RE = re.compile(r"direction\.(0|[1-9][0-9]*)")
GGUF_PREFIX = "cast_vllm."
#: written by every export after 0.1.0: ``direction.<n>`` is layer ``n``. Files with ``cast_vllm.*``
#: fields but no marker come from 0.1.0, which wrote ``direction.<layer + 1>``
GGUF_LAYER_BASE_KEY = GGUF_PREFIX + "gguf_layer_base"
GGUF_LAYER_BASE = "0"


def write_gguf(vector: SteeringVector, path: str | Path, arch: str | None = None) -> Path:
    """llama.cpp / repeng control vector: F32 tensors ``direction.<layer>``; atomic like ``save``.

    Layer 0 is left out with a warning: llama.cpp refuses a whole file that holds
    ``direction.0`` (it never steers block 0), so writing it would make the file useless there.
    """
    path = Path(path)
    meta = check_metadata({k: v for k, v in vector.metadata.items() if GGUF_PREFIX + k != GGUF_LAYER_BASE_KEY},
                          where=str(path))
    layers = [layer for layer in vector.layers if layer != 0]
    if not layers:
        raise VectorFileError(f"{path}: a GGUF control vector cannot hold only layer 0 (llama.cpp never "
                              "steers block 0 and refuses 'direction.0'); save it as .safetensors")
    if 0 in vector.directions:
        logger.warning("%s: layer 0 left out of the GGUF control vector (llama.cpp refuses a file with "
                       "'direction.0'); layers written: %s", path, layers)

    def write(tmp: Path) -> None:
        import gguf

        writer = gguf.GGUFWriter(str(tmp), "controlvector")
        try:
            writer.add_string("controlvector.model_hint", arch or meta.get("model_type", "llama"))
            writer.add_uint32("controlvector.layer_count", len(layers))   # tensors, as repeng and llama.cpp
            for key, value in meta.items():
                writer.add_string(GGUF_PREFIX + key, value)
            writer.add_string(GGUF_LAYER_BASE_KEY, GGUF_LAYER_BASE)
            for layer in layers:
                writer.add_tensor(f"direction.{layer}", vector.directions[layer].numpy().astype(np.float32))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    return atomic_write(path, write)

def read_gguf(path: str | Path) -> SteeringVector:
    """``direction.<n>`` is layer ``n`` (``direction.0`` too: repeng may write it), except in
    files from cast-vllm 0.1.0, which are read as that version wrote them, with a warning."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise VectorFileError(f"{path} is not a readable GGUF file: {exc}") from exc
    file_meta = _gguf_metadata(reader, gguf, path)
    base = file_meta.pop(GGUF_LAYER_BASE_KEY[len(GGUF_PREFIX):], None)
    if base is not None and base != GGUF_LAYER_BASE:
        raise VectorFileError(f"{path}: {GGUF_LAYER_BASE_KEY} is {base!r}; this version reads only "
                              f"{GGUF_LAYER_BASE!r} (direction.<n> is layer n)")
    shift = 1 if base is None and file_meta else 0    # ours, without the marker: written by 0.1.0
    directions = {}
    for tensor in reader.tensors:
        if not tensor.name.startswith("direction."):
            continue
        n = index_from_key(tensor.name, _GGUF_KEY_RE, str(path), "'direction.<n>'", MAX_LAYERS + shift)
        if n < shift:
            raise VectorFileError(f"{path}: {tensor.name} in a cast-vllm 0.1.0 file (cast_vllm.* metadata, "
                                  f"no {GGUF_LAYER_BASE_KEY}); 0.1.0 never wrote direction.0")
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            raise VectorFileError(f"{path}: {tensor.name} is {tensor.tensor_type.name}, expected F32")
        data = np.array(tensor.data, dtype=np.float32)
        if data.ndim != 1:
            raise VectorFileError(f"{path}: {tensor.name} has shape {list(data.shape)}; expected [hidden]")
        directions[n - shift] = torch.from_numpy(data)
    if not directions:
        raise VectorFileError(f"{path} holds no 'direction.<n>' tensors: not a control vector")
    if shift:
        logger.warning("%s was written by cast-vllm 0.1.0 (cast_vllm.* metadata, no %s): reading "
                       "direction.<n> as layer n - 1, as 0.1.0 wrote it (layers %s). Re-save it to get the "
                       "llama.cpp/repeng convention, direction.<n> = layer n.", path, GGUF_LAYER_BASE_KEY,
                       sorted(directions))
    metadata = {"format": FORMAT, "method": "gguf-import", "source_file": Path(path).name}
    metadata.update(file_meta)
    try:
        return SteeringVector(directions, check_metadata(metadata, str(path)))
    except VectorFileError as exc:
        raise VectorFileError(f"{path}: {exc}") from None


def _gguf_metadata(reader, gguf, path) -> dict[str, str]:
    """Our ``cast_vllm.*`` string fields back into metadata."""
    out = {}
    for field in reader.fields.values():
        if not field.name.startswith(GGUF_PREFIX):
            continue
        if field.types != [gguf.GGUFValueType.STRING]:
            raise VectorFileError(f"{path}: metadata field {field.name} is not a string")
        try:
            out[field.name[len(GGUF_PREFIX):]] = bytes(field.parts[field.data[0]]).decode()
        except UnicodeDecodeError as exc:
            raise VectorFileError(f"{path}: metadata field {field.name} is not UTF-8: {exc}") from None
    return out
