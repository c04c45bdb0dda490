"""Reading and writing steering vectors in the formats other steering tools use.

Every format maps onto the same thing, ``SteeringVector``: one direction per layer, where layer
``i`` is the output of 0-based decoder block ``i`` (what repeng's ControlModel, steering-vectors'
``decoder_block`` hooks and llama.cpp's ``direction.i`` all steer).

======================  ==============  =====================================================
format                  suffix          holds / read how
======================  ==============  =====================================================
``safetensors``         .safetensors    ours (DESIGN.md): ``layer.<i>`` + metadata; no pickle
``gguf``                .gguf           llama.cpp / repeng control vector: ``direction.<i>``
``pt``                  .pt .pth        a ``[num_layers, hidden]`` tensor (layers 0..n-1) or a
                                        ``{layer: tensor}`` dict; ``torch.load(weights_only=True)``
``steering-vectors``    .pt .pth        ``torch.save`` of steering-vectors' ``SteeringVector``;
                                        ``weights_only=True`` with a stand-in for that one class
``repeng-pickle``       .pkl .pickle    a pickled repeng ``ControlVector``; only with
                                        ``allow_pickle``, then through an allow-list unpickler
======================  ==============  =====================================================

Pickles can run code while they load. ``torch.load(weights_only=True)`` is torch's own restricted
loader; a raw pickle has no such vetted loader, so it needs the caller's explicit consent, and even
then only repeng's ControlVector, numpy float arrays and plain containers can be built.
"""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from cast_vllm.atomic import atomic_write
from cast_vllm.peer_pickles import (SV_CLASS, SV_LAYER_TYPE, PeerPickler, RepengControlVector, RepengUnpickler,
                                    SteeringVectorsObject, peer_pickle_module)
from cast_vllm.vectors import MAX_LAYERS, SteeringVector, VectorFileError

logger = logging.getLogger(__name__)

FORMATS = ("safetensors", "gguf", "pt", "steering-vectors", "repeng-pickle")
SUFFIX_FORMATS = {".safetensors": "safetensors", ".gguf": "gguf", ".pt": "pt", ".pth": "pt",
                  ".pkl": "repeng-pickle", ".pickle": "repeng-pickle"}
#: formats a suffix may hold: a .pt file is either a plain tensor file or a steering-vectors object
SUFFIX_ALLOWS = {"safetensors": {"safetensors"}, "gguf": {"gguf"}, "pt": {"pt", "steering-vectors"},
                 "repeng-pickle": {"repeng-pickle"}}
PICKLE_FORMATS = {"repeng-pickle"}
# ---- which format ---------------------------------------------------------------------------
def check_format(fmt: str | None) -> str | None:
    if fmt is not None and fmt not in FORMATS:
        raise VectorFileError(f"unknown vector format {fmt!r}; known: {', '.join(FORMATS)}")
    return fmt


def format_of(path: str | Path, fmt: str | None = None) -> str:
    """The format named by ``fmt`` or, without one, by the suffix. A suffix that names another
    format is refused both ways: the vector store reads ``.gguf`` as GGUF whatever wrote it."""
    path = Path(path)
    check_format(fmt)
    by_suffix = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        if by_suffix is None:
            raise VectorFileError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; name one "
                                  f"({', '.join(FORMATS)}) or use a suffix among {', '.join(SUFFIX_FORMATS)}")
        return by_suffix
    if by_suffix is not None and fmt not in SUFFIX_ALLOWS[by_suffix]:
        raise VectorFileError(f"{path}: the suffix {path.suffix!r} means {by_suffix}, not {fmt}; rename the file "
                              "or choose the matching format")
    return fmt


# ---- reading --------------------------------------------------------------------------------
def read_vector(path: str | Path, fmt: str | None = None, *, allow_pickle: bool = False
                ) -> tuple[SteeringVector, str]:
    """Load any supported format; returns the vector and the format it was read as.
    Every failure is a VectorFileError naming the file and the problem."""
    path = Path(path)
    named = fmt
    fmt = format_of(path, fmt)
    if not path.exists():
        raise VectorFileError(f"vector file {path} does not exist")
    if not path.is_file():
        raise VectorFileError(f"{path} is not a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise VectorFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if fmt == "safetensors":
        return SteeringVector.from_safetensors_bytes(path.read_bytes(), where=str(path)), fmt
    if fmt == "gguf":
        return SteeringVector.load_gguf(path), fmt
    if fmt == "repeng-pickle":
        return _read_repeng_pickle(path, allow_pickle), fmt
    return _read_torch_file(path, named)


def _read_torch_file(path: Path, fmt: str | None) -> tuple[SteeringVector, str]:
    """``torch.load(weights_only=True)``: tensors and containers only, plus steering-vectors'
    class through a stand-in; then a tensor, a dict or that object decides the format."""
    allowed = [(SteeringVectorsObject, ".".join(SV_CLASS))]
    try:
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _first_line(exc)
        if not any(word in detail for word in _REFUSALS):   # garbage that happened to parse as a pickle start
            raise VectorFileError(f"{path} is not a torch.save file, or it is damaged ({detail})") from None
        raise VectorFileError(f"{path}: not loadable with torch.load(weights_only=True), which cast-vllm uses so "
                              f"that a file cannot run code ({detail}). A .pt vector must hold a "
                              "tensor, a {layer: tensor} dict or a steering-vectors SteeringVector; for a repeng "
                              "ControlVector use ControlVector.export_gguf") from None
    except Exception as exc:   # torch raises RuntimeError, EOFError, zip and unpickling errors alike
        raise VectorFileError(f"{path} is not a torch.save file, or it is damaged ({_first_line(exc)})") from None
    if isinstance(obj, SteeringVectorsObject):
        found = "steering-vectors"
        if obj.layer_type != SV_LAYER_TYPE:
            raise VectorFileError(f"{path}: steering-vectors layer_type {obj.layer_type!r} steers inside a block; "
                                  f"cast-vllm steers the residual stream after a block ({SV_LAYER_TYPE!r}) only")
        directions = _layer_dict(obj.layer_activations, path, "layer_activations")
        meta = {"method": "steering-vectors-import", "steering_vectors_layer_type": obj.layer_type}
    else:
        found = "pt"
        if isinstance(obj, torch.Tensor):
            directions = _dense(obj, path)
        elif isinstance(obj, dict):
            directions = _layer_dict(obj, path, "dict")
        else:
            raise VectorFileError(f"{path} holds a {type(obj).__name__}; expected a [num_layers, hidden] tensor, "
                                  "a {layer: tensor} dict or a steering-vectors SteeringVector")
        meta = {"method": "pt-import"}
    if fmt is not None and fmt != found:
        raise VectorFileError(f"{path} holds a {found} vector, not {fmt}; read it as {found} "
                              "(or leave the format out)")
    meta["source_file"] = path.name
    return _vector(directions, meta, path), found


#: words in torch's weights_only messages that mean "an object was refused", not "the bytes are bad"
_REFUSALS = ("GLOBAL", "global", "Can only", "reduce", SteeringVectorsObject.PEER)


def _dense(t: torch.Tensor, path: Path) -> dict:
    if t.dim() != 2:
        raise VectorFileError(f"{path}: a tensor vector must be [num_layers, hidden] (layers 0..n-1), got shape "
                              f"{list(t.shape)}; a single layer's direction needs a {{layer: tensor}} dict")
    if t.shape[0] > MAX_LAYERS:
        raise VectorFileError(f"{path}: {t.shape[0]} layers, the limit is {MAX_LAYERS}")
    _check_strided(t, path, "the tensor")
    return {i: t[i] for i in range(t.shape[0])}


def _layer_dict(d, path: Path, what: str) -> dict:
    if not isinstance(d, dict):
        raise VectorFileError(f"{path}: {what} is a {type(d).__name__}, expected a {{layer: tensor}} dict")
    for key, value in d.items():
        if isinstance(key, bool) or not isinstance(key, int):
            raise VectorFileError(f"{path}: {what} key {key!r} is not an int layer id (0-based decoder block)")
        if key < 0:
            raise VectorFileError(f"{path}: layer {key} counts from the end of the model; cast-vllm needs 0-based "
                                  "ids (num_layers + layer)")
        if not isinstance(value, torch.Tensor):
            raise VectorFileError(f"{path}: layer {key} is a {type(value).__name__}, not a tensor")
        _check_strided(value, path, f"layer {key}")
    return dict(d)


def _check_strided(t: torch.Tensor, path: Path, what: str) -> None:
    if t.layout != torch.strided or t.is_quantized or t.is_complex():
        raise VectorFileError(f"{path}: {what} is a {t.layout}/{t.dtype} tensor; expected a dense float tensor")


def _read_repeng_pickle(path: Path, allow_pickle: bool) -> SteeringVector:
    if not allow_pickle:
        raise VectorFileError(f"{path} is a Python pickle, and loading a pickle can run code. If you trust the "
                              "file, allow it explicitly (allow_pickle=True; --allow-pickle on the command "
                              "line): only repeng's ControlVector and numpy arrays are then built from it. "
                              "Safer: ControlVector.export_gguf(path)")
    try:
        with open(path, "rb") as f:
            obj = RepengUnpickler(f).load()
    except Exception as exc:   # UnpicklingError, EOFError, ValueError, numpy's own errors
        raise VectorFileError(f"{path} is not a loadable repeng pickle: {_first_line(exc)}") from None
    if not isinstance(obj, RepengControlVector):
        raise VectorFileError(f"{path} holds a {type(obj).__name__}, not a repeng ControlVector")
    if not isinstance(obj.model_type, str):
        raise VectorFileError(f"{path}: model_type is a {type(obj.model_type).__name__}, not a string")
    if not isinstance(obj.directions, dict):
        raise VectorFileError(f"{path}: directions is a {type(obj.directions).__name__}, not a dict")
    directions = {}
    for layer, arr in obj.directions.items():
        if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
            raise VectorFileError(f"{path}: direction {layer!r} is not a float numpy array")
        directions[layer] = torch.from_numpy(np.array(arr))
    directions = _layer_dict(directions, path, "directions")
    return _vector(directions, {"method": "repeng-import", "model_type": obj.model_type,
                                "source_file": path.name}, path)


def _vector(directions: dict, meta: dict, path: Path) -> SteeringVector:
    try:
        return SteeringVector(directions, meta)
    except VectorFileError as exc:
        raise VectorFileError(f"{path}: {exc}") from None


def _first_line(exc: BaseException) -> str:
    """The informative part of an exception message, on one line; for torch's weights_only
    refusal (several paragraphs of advice), the paragraph that names what was refused."""
    skip = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    kept = [ln for ln in lines if not ln.startswith(skip)]
    text = " ".join(kept or lines[:1])[:300]
    return text if text and isinstance(exc, (pickle.UnpicklingError, OSError, ValueError, RuntimeError)) \
        else f"{type(exc).__name__}: {text}"


# ---- writing --------------------------------------------------------------------------------
def write_vector(vector: SteeringVector, path: str | Path, fmt: str | None = None, *,
                 drop_layer_0: bool = False) -> str:
    """Write ``vector`` as ``fmt`` (default: from the suffix), atomically; returns the format.
    Formats without metadata (pt, steering-vectors, repeng-pickle) keep only the numbers. GGUF
    cannot hold layer 0 (llama.cpp refuses the whole file); it is dropped only when asked."""
    path = Path(path)
    fmt = format_of(path, fmt)
    if fmt == "gguf" and 0 in vector.directions and not drop_layer_0:
        raise VectorFileError(f"{path}: the vector has layer 0, which a GGUF control vector cannot hold "
                              "(llama.cpp never steers block 0 and refuses a file with 'direction.0'); "
                              "drop it explicitly (--drop-layer-0) or write another format")
    if fmt == "safetensors":
        if path.suffix.lower() == ".gguf":   # unreachable through format_of; save() would write GGUF
            raise VectorFileError(f"{path}: safetensors under a .gguf name")
        vector.save(path)
    elif fmt == "gguf":
        vector.save_gguf(path)
    elif fmt == "pt":
        _atomic_torch_save({layer: t.clone() for layer, t in vector.directions.items()}, path)
    elif fmt == "steering-vectors":
        obj = SteeringVectorsObject({layer: t.clone() for layer, t in vector.directions.items()}, SV_LAYER_TYPE)
        _atomic_torch_save(obj, path, pickle_module=peer_pickle_module)
    elif fmt == "repeng-pickle":
        obj = RepengControlVector(vector.metadata.get("model_type", "llama"),
                                  {layer: t.numpy().copy() for layer, t in vector.directions.items()})
        buf = io.BytesIO()
        PeerPickler(buf, protocol=4).dump(obj)
        atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()))
    if fmt in ("pt", "steering-vectors", "repeng-pickle"):
        kept = {k: v for k, v in vector.metadata.items()
                if k != "format" and not (fmt == "repeng-pickle" and k == "model_type")}
        if kept:
            logger.info("%s: the %s format has no place for metadata; not written: %s", path, fmt,
                        ", ".join(sorted(kept)))
    return fmt


def _atomic_torch_save(obj, path: Path, **kwargs) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:   # a file object: torch would name the zip records after tmp's name
            torch.save(obj, f, **kwargs)

    atomic_write(path, write)
