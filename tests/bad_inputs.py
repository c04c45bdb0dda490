"""Every bad steering input, once, for every place that must refuse it.

Each case is a request's ``extra_args`` as the offline engine takes them, the fragment its error
message must contain, and the first stage that refuses it:

- ``spec``: the spec parser (``tests/test_spec.py``: ``SteeringSpecError``);
- ``admission``: the engine, with its vectors and limits (``tests/test_engine_admission.py``:
  ``ValueError``, and the engine keeps serving);
- ``http``: vLLM's own request validation, so only over HTTP.

A case refused at one stage is refused at every later one: the engine test runs the ``spec`` and
``admission`` cases, the server test (``tests/serving/test_serving_bad_inputs.py``: 400, plain and
streamed) runs them all, sent as ``vllm_xargs`` (``as_xargs``). The cases name the vectors that
``save_vectors_for_bad_inputs`` writes: ``v0`` (layers 0-3), ``part`` (layers 0 and 2) and broken
files; the engines under test have 2 steering slots and a scale limit below 1e9.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

from tiny_models import random_vector, save_vectors

from cast_vllm.spec import MAX_COMPONENTS, MAX_SPEC_JSON_CHARS

STAGES = ("spec", "admission", "http")


@dataclass(frozen=True)
class Bad:
    id: str
    extra: dict
    message: str
    stage: str

    def __post_init__(self):
        assert self.stage in STAGES, self.stage


CASES = [
    # ---- the spec parser ----
    Bad("name-not-a-string", {"steering": 3}, "must be a vector name", "spec"),
    Bad("empty-list", {"steering": []}, "empty", "spec"),
    Bad("no-vector-field", {"steering": {"scale": 1}}, "vector (the vector name) is required", "spec"),
    Bad("scale-bool", {"steering": {"vector": "v0", "scale": True}}, "must be a number", "spec"),
    Bad("scale-word", {"steering": {"vector": "v0", "scale": "big"}}, "must be a number", "spec"),
    Bad("scale-nan-text", {"steering": {"vector": "v0", "scale": "nan"}}, "finite", "spec"),
    Bad("scale-nan", {"steering": {"vector": "v0", "scale": float("nan")}}, "must be finite", "spec"),
    Bad("scale-inf", {"steering": {"vector": "v0", "scale": float("inf")}}, "must be finite", "spec"),
    Bad("flat-scale-nan", {"steering": "v0", "steering_scale": "nan"}, "must be finite", "spec"),
    Bad("flat-scale-inf", {"steering": "v0", "steering_scale": "inf"}, "must be finite", "spec"),
    Bad("layers-empty", {"steering": {"vector": "v0", "layers": []}}, "non-empty list", "spec"),
    Bad("layers-twice", {"steering": {"vector": "v0", "layers": [1, 1]}}, "duplicates", "spec"),
    Bad("layers-not-ints", {"steering": {"vector": "v0", "layers": ["a"]}}, "list of ints", "spec"),
    Bad("mode", {"steering": {"vector": "v0", "mode": "multiply"}}, "mode must be one of", "spec"),
    Bad("flat-mode", {"steering": "v0", "steering_mode": "multiply"}, "mode must be one of", "spec"),
    Bad("positions", {"steering": {"vector": "v0", "positions": "middle"}}, "positions must be one of", "spec"),
    Bad("flat-positions", {"steering": "v0", "steering_positions": "middle"}, "positions must be one of", "spec"),
    Bad("unknown-field", {"steering": {"vector": "v0", "colour": "red"}}, "unknown field", "spec"),
    Bad("json-cut", {"steering": '{"vector": "v0", "scale": '}, "not valid JSON", "spec"),
    Bad("json-open-list", {"steering": "[1,"}, "not valid JSON", "spec"),
    Bad("flat-with-list", {"steering": [{"vector": "a"}, {"vector": "b"}], "steering_scale": 2}, "single vector",
        "spec"),
    Bad("flat-with-object", {"steering": {"vector": "a", "scale": 1}, "steering_scale": 2}, "single vector", "spec"),
    Bad("flat-scale-alone", {"steering_scale": 2.0}, "without 'steering'", "spec"),
    Bad("flat-mode-alone", {"steering_mode": "add"}, "without 'steering'", "spec"),
    # internal state the client cannot forge
    Bad("forged-text", {"cast_resolved": "forged"}, "reserved for the engine", "spec"),
    Bad("forged-object", {"cast_resolved": {"key": "k", "components": [], "slots": 0}}, "reserved for the engine",
        "spec"),
    Bad("forged-with-steering", {"steering": "v0", "cast_resolved": {"key": "k", "components": [], "slots": 0}},
        "reserved for the engine", "spec"),
    Bad("forged-other-key", {"cast_anything": 1}, "reserved for the engine", "spec"),
    # never silently unsteered: a misspelt key is refused, with a hint
    Bad("typo-scale", {"steering": "v0", "steering_scal": 2.0},
        "unknown steering key 'steering_scal'; did you mean 'steering_scale'", "spec"),
    Bad("typo-scale-alone", {"steering_scal": 2.0},
        "unknown steering key 'steering_scal'; did you mean 'steering_scale'", "spec"),
    Bad("typo-steerign", {"steerign": "v0"}, "unknown steering key 'steerign'; did you mean 'steering'", "spec"),
    Bad("typo-steerng", {"steerng": "v0"}, "unknown steering key 'steerng'; did you mean 'steering'", "spec"),
    Bad("typo-layer", {"steering_layer": [1]}, "unknown steering key 'steering_layer'; did you mean 'steering_layers'",
        "spec"),
    Bad("typo-no-hint", {"steer_vector": "v0"}, "unknown steering key 'steer_vector'", "spec"),
    # limits
    Bad("too-many-components", {"steering": [{"vector": "v0", "scale": 0.01}] * (MAX_COMPONENTS + 1)},
        f"the limit is {MAX_COMPONENTS}", "spec"),
    Bad("json-too-long", {"steering": json.dumps([{"vector": "v0"}] * 2000)}, f"the limit is {MAX_SPEC_JSON_CHARS}",
        "spec"),
    Bad("json-too-deep", {"steering": "[" * 50 + "]" * 50}, "nested deeper", "spec"),
    Bad("too-many-layers", {"steering": {"vector": "v0", "layers": list(range(2000))}}, "the limit is 1024", "spec"),
    Bad("scale-long-text", {"steering": {"vector": "v0", "scale": "x" * 10_000}}, "must be a number", "spec"),
    # ---- the engine: its vectors, its model and its limits ----
    Bad("unknown-vector", {"steering": "missing"}, "unknown steering vector 'missing'", "admission"),
    Bad("name-path", {"steering": "../v0"}, "invalid vector name", "admission"),
    Bad("name-absolute", {"steering": "/etc/passwd"}, "invalid vector name", "admission"),
    Bad("layer-out-of-range", {"steering": {"vector": "v0", "layers": [7]}}, "out of range", "admission"),
    Bad("flat-layer-out-of-range", {"steering": "v0", "steering_layers": [7]}, "out of range", "admission"),
    Bad("layer-not-in-vector", {"steering": {"vector": "part", "layers": [1]}}, "not in vector 'part'", "admission"),
    Bad("scale-over-limit", {"steering": {"vector": "v0", "scale": 1e9}}, "exceeds the server limit", "admission"),
    Bad("flat-scale-over-limit", {"steering": "v0", "steering_scale": 1e9}, "exceeds the server limit", "admission"),
    Bad("modes-disagree", {"steering": [{"vector": "v0", "mode": "add"},
                                        {"vector": "v0", "mode": "norm_preserving", "layers": [0]}]},
        "must agree per layer", "admission"),
    Bad("too-many-slots", {"steering": [{"vector": "v0", "positions": "prompt"},
                                        {"vector": "v0", "positions": "last_prompt"},
                                        {"vector": "v0", "positions": "generated"}]}, "needs 3 steering slots",
        "admission"),
    Bad("file-hidden-size", {"steering": "small"}, "hidden size 32", "admission"),
    Bad("file-nan", {"steering": "nan"}, "NaN or Inf", "admission"),
    Bad("file-junk", {"steering": "junk"}, "not a safetensors file", "admission"),
    Bad("file-deep-layer", {"steering": "deep"}, "out of range", "admission"),
    # ---- HTTP only: a nested value in vllm_xargs (vLLM's own request validation) ----
    Bad("xargs-nested", {"steering": {"vector": "v0"}}, "vllm_xargs", "http"),
]


def cases(*stages: str) -> list:
    """The cases refused at one of ``stages``, as ``pytest.param``s named by their id."""
    import pytest

    return [pytest.param(c, id=c.id) for c in CASES if c.stage in stages]


def as_xargs(case: Bad) -> dict:
    """The case as a client sends it in ``vllm_xargs``: flat values; an object or a list of objects
    becomes its JSON text (``NaN``/``Infinity`` included). ``http`` cases are sent as written."""
    if case.stage == "http":
        return case.extra

    def flat(value):
        if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict) for v in value)):
            return json.dumps(value)
        return value

    return {key: flat(value) for key, value in case.extra.items()}


def save_vectors_for_bad_inputs(directory: Path) -> Path:
    """The vectors the cases name: ``v0`` (``random_vector(0)``, layers 0-3), ``part`` (layers 0 and 2),
    and broken files: ``small`` (hidden size 32), ``deep`` (layer 9 of 4), ``nan`` (a NaN), ``junk``
    (a pickle, not safetensors)."""
    import torch
    from safetensors.torch import save_file

    save_vectors(directory, {"v0": random_vector(0), "part": random_vector(5, layers=[0, 2]),
                             "small": random_vector(30, hidden=32), "deep": random_vector(31, layers=[9])})
    bad = torch.randn(64, generator=torch.Generator().manual_seed(32))
    bad[3] = float("nan")
    save_file({"layer.0": bad}, str(directory / "nan.safetensors"), metadata={"format": "cast-vllm/1"})
    (directory / "junk.safetensors").write_bytes(pickle.dumps({"layer.0": [0.0] * 64}))
    return directory
