"""The peers' pickled classes, read and written without importing the peers.

steering-vectors saves a ``SteeringVector`` dataclass with ``torch.save``; repeng pickles its
``ControlVector``. Neither package is a dependency, so stand-in classes take their place: an
allow-list unpickler builds them from a peer's file (nothing else may be in it), and a pickler
writes them back under the peers' class names, so the peers' own ``load`` builds their class.
"""

from __future__ import annotations

import codecs
import importlib
import pickle
import types

import numpy as np

#: where the peers' classes live; the names a pickle refers to them by
SV_CLASS = ("steering_vectors.steering_vector", "SteeringVector")
REPENG_CLASS = ("repeng.extract", "ControlVector")
#: the only steering-vectors layer type that is the residual stream after a decoder block
SV_LAYER_TYPE = "decoder_block"


# ---- stand-ins for the peers' classes (never imported: neither package is a dependency) ----------
class _StandIn:
    """Built by the unpickler in place of a peer's dataclass; takes only the fields it knows, so
    a pickle cannot set anything else (and a future field we do not understand is refused)."""
    FIELDS: tuple[str, ...] = ()
    REQUIRED: tuple[str, ...] = ()
    PEER = ""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.PEER}: unexpected pickled state {type(state).__name__}")
        unknown = sorted(set(state) - set(self.FIELDS))
        missing = sorted(set(self.REQUIRED) - set(state))
        if unknown or missing:
            raise pickle.UnpicklingError(f"{self.PEER} with fields {sorted(state)}: expected {list(self.FIELDS)}"
                                         " (a version this converter does not know?)")
        self.__dict__.update(state)


class SteeringVectorsObject(_StandIn):
    """steering-vectors 0.12's ``@dataclass SteeringVector(layer_activations, layer_type)``."""
    FIELDS = REQUIRED = ("layer_activations", "layer_type")
    PEER = "steering-vectors SteeringVector"

    def __init__(self, layer_activations: dict, layer_type: str = SV_LAYER_TYPE):
        self.layer_activations, self.layer_type = layer_activations, layer_type


class RepengControlVector(_StandIn):
    """repeng 0.4's ``@dataclass ControlVector(model_type, directions)``."""
    FIELDS = REQUIRED = ("model_type", "directions")
    PEER = "repeng ControlVector"

    def __init__(self, model_type: str, directions: dict):
        self.model_type, self.directions = model_type, directions


_PICKLE_NAMES = {SteeringVectorsObject: SV_CLASS, RepengControlVector: REPENG_CLASS}


class PeerPickler(pickle._Pickler):
    """Writes our stand-ins under the peers' class names, so their own ``pickle.load`` /
    ``torch.load`` builds their real class; everything else pickles as usual."""

    def save_global(self, obj, name=None):
        target = _PICKLE_NAMES.get(obj)
        if target is None:
            return super().save_global(obj, name)
        module, qualname = target
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("ascii"))
        self.memoize(obj)


peer_pickle_module = types.SimpleNamespace(Pickler=PeerPickler, __name__="cast_vllm_peer_pickle")


def _numpy_global(module: str, name: str):
    for prefix in ("numpy._core.", "numpy.core."):   # numpy 2 first; numpy 1 pickles say numpy.core
        try:
            return getattr(importlib.import_module(prefix + module), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {module}.{name}")


def _latin1_encode(text, encoding="utf-8"):
    """``_codecs.encode``, which protocol-2 pickles use for bytes, for that purpose only."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError("_codecs.encode allowed only as pickle's latin1 bytes idiom")
    return codecs.encode(text, "latin1")


class RepengUnpickler(pickle.Unpickler):
    """Python's documented "restricting globals" unpickler: repeng's ControlVector (as a stand-in),
    numpy arrays and dtypes, nothing else; persistent ids are refused by the base class."""

    def find_class(self, module, name):
        if (module, name) == REPENG_CLASS:
            return RepengControlVector
        if module in ("numpy._core.multiarray", "numpy.core.multiarray") and name == "_reconstruct":
            return _numpy_global("multiarray", "_reconstruct")
        if module in ("numpy._core.numeric", "numpy.core.numeric") and name == "_frombuffer":
            return _numpy_global("numeric", "_frombuffer")
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only repeng's ControlVector and "
                                     "numpy arrays may be in a repeng pickle")
