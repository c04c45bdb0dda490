"""Steering settings carried in the HF config (``hf_overrides``), so every vLLM process sees them.

Every key is ``cast_<field>``; this module is the one list of them. ``SteeringSettings`` is
what the engine reads (vector directories, slots, scale limit). ``ServingSettings`` is what the
HTTP endpoints read (upload directory and upload limits): plain ``vllm serve`` has no options
of ours, so the endpoint plugin takes them from the same ``hf_overrides``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cast_vllm import envs
from cast_vllm.home import cast_home

PREFIX = "cast_"
DEFAULT_MAX_STEERING_VECTORS = 16
DEFAULT_MAX_SCALE = 1000.0
DEFAULT_MAX_UPLOAD_BYTES = 16 << 20
DEFAULT_MAX_UPLOADED_VECTORS = 256
DEFAULT_MAX_CONCURRENT_UPLOADS = 4


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


@dataclass(frozen=True)
class ServingSettings:
    """What the vector routes accept (README "Serving": limits); ``upload_dir`` None: a private one."""

    upload_dir: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_uploaded_vectors: int = DEFAULT_MAX_UPLOADED_VECTORS    # files kept in the upload directory
    max_concurrent_uploads: int = DEFAULT_MAX_CONCURRENT_UPLOADS  # upload bodies in memory at once

    LIMITS = ("max_upload_bytes", "max_uploaded_vectors", "max_concurrent_uploads")

    def __post_init__(self):
        for name in self.LIMITS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{PREFIX}{name} must be an integer >= 1, got {value!r}")

    def to_overrides(self) -> dict:
        out = {f"{PREFIX}{name}": getattr(self, name) for name in self.LIMITS}
        if self.upload_dir is not None:
            out[f"{PREFIX}upload_dir"] = self.upload_dir
        return out

    @classmethod
    def from_hf_config(cls, hf_config) -> "ServingSettings":
        """Raises ValueError naming the ``cast_*`` key that is out of range."""
        upload_dir = getattr(hf_config, f"{PREFIX}upload_dir", None)
        return cls(upload_dir=str(upload_dir) if upload_dir else None,
                   **{name: getattr(hf_config, f"{PREFIX}{name}", getattr(cls, name)) for name in cls.LIMITS})


def default_vector_dir() -> str:
    """Used by plain ``vllm.LLM(..., hf_overrides={"architectures": ["Cast..."]})``."""
    path = envs.vector_dir() or str(cast_home() / "vectors")
    os.makedirs(path, exist_ok=True)
    return path


def is_steering_model(hf_config) -> bool:
    from cast_vllm.engine.architectures import is_steering_architecture

    return any(is_steering_architecture(a) for a in (getattr(hf_config, "architectures", None) or []))
