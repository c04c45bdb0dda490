"""Steering settings carried in the HF config (``hf_overrides``), so every vLLM process sees them."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cast_vllm.home import cast_home

PREFIX = "cast_"
DEFAULT_MAX_STEERING_VECTORS = 16
DEFAULT_MAX_SCALE = 1000.0


@dataclass(frozen=True)
class SteeringSettings:
    vector_dirs: tuple[str, ...]
    max_steering_vectors: int = DEFAULT_MAX_STEERING_VECTORS
    max_scale: float = DEFAULT_MAX_SCALE

    def to_overrides(self) -> dict:
        return {f"{PREFIX}vector_dirs": list(self.vector_dirs),
                f"{PREFIX}max_steering_vectors": self.max_steering_vectors,
                f"{PREFIX}max_scale": self.max_scale}

    @classmethod
    def from_hf_config(cls, hf_config) -> "SteeringSettings":
        dirs = getattr(hf_config, f"{PREFIX}vector_dirs", None) or [default_vector_dir()]
        return cls(
            vector_dirs=tuple(dirs),
            max_steering_vectors=int(getattr(hf_config, f"{PREFIX}max_steering_vectors", DEFAULT_MAX_STEERING_VECTORS)),
            max_scale=float(getattr(hf_config, f"{PREFIX}max_scale", DEFAULT_MAX_SCALE)),
        )


def default_vector_dir() -> str:
    """Used by plain ``vllm.LLM(..., hf_overrides={"architectures": ["Cast..."]})``."""
    path = os.environ.get("CAST_VLLM_VECTOR_DIR") or str(cast_home() / "vectors")
    os.makedirs(path, exist_ok=True)
    return path


def is_steering_model(hf_config) -> bool:
    from cast_vllm.engine.architectures import STEERING_ARCHITECTURES

    return any(a in STEERING_ARCHITECTURES for a in (getattr(hf_config, "architectures", None) or []))
