"""Steering settings carried in the HF config (``hf_overrides``), so every vLLM process sees them.

Every key is ``cast_<field>``; this module is the one list of them. ``SteeringSettings`` is
what the engine reads (vector directories, slots, scale limit). ``ServingSettings`` is what the
HTTP endpoints read (upload directory and upload limits): plain ``vllm serve`` has no options
of ours, so the endpoint plugin takes them from the same ``hf_overrides``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from cast_vllm import envs
from cast_vllm.home import cast_home

PREFIX = "cast_"
AUTO_SLOT_CAP = 256                     # EasySteer's default: min(256, max_num_seqs)
MAX_AUTO_TABLE_BYTES = 1 << 30          # automatic slots never take more table than this
DEFAULT_MAX_SCALE = 1000.0
DEFAULT_MAX_UPLOAD_BYTES = 16 << 20
DEFAULT_MAX_UPLOADED_VECTORS = 256
DEFAULT_MAX_CONCURRENT_UPLOADS = 4


@dataclass(frozen=True)
class SteeringSettings:
    vector_dirs: tuple[str, ...]
    max_steering_vectors: int | None = None    # None: auto_slots() of the engine (of_engine())
    max_scale: float = DEFAULT_MAX_SCALE

    def to_overrides(self) -> dict:
        out = {f"{PREFIX}vector_dirs": list(self.vector_dirs), f"{PREFIX}max_scale": self.max_scale}
        if self.max_steering_vectors is not None:
            out[f"{PREFIX}max_steering_vectors"] = self.max_steering_vectors
        return out

    @classmethod
    def from_hf_config(cls, hf_config) -> "SteeringSettings":
        dirs = getattr(hf_config, f"{PREFIX}vector_dirs", None) or [default_vector_dir()]
        slots = getattr(hf_config, f"{PREFIX}max_steering_vectors", None)
        return cls(
            vector_dirs=tuple(dirs),
            max_steering_vectors=int(slots) if slots is not None else None,
            max_scale=float(getattr(hf_config, f"{PREFIX}max_scale", DEFAULT_MAX_SCALE)),
        )

    @classmethod
    def of_engine(cls, vllm_config) -> "SteeringSettings":
        """The settings with the slot count every engine process agrees on: the front end
        (admission), the scheduler (budget) and each worker (table) all call this."""
        settings = cls.from_hf_config(vllm_config.model_config.hf_config)
        if settings.max_steering_vectors is not None:
            return settings
        model = vllm_config.model_config
        slots = auto_slots(vllm_config.scheduler_config.max_num_seqs, model.get_total_num_hidden_layers(),
                           model.get_hidden_size())
        return replace(settings, max_steering_vectors=slots)


def auto_slots(max_num_seqs: int, num_layers: int, hidden_size: int) -> int:
    """One slot per sequence the engine can run at once, so up to ``max_num_seqs`` distinct
    steering configurations in a batch never wait; capped at ``AUTO_SLOT_CAP`` and at
    ``MAX_AUTO_TABLE_BYTES`` of float32 table (a 7B model at 256 slots: 135 MB)."""
    per_slot = num_layers * (4 * hidden_size + 4)
    return max(1, min(max_num_seqs, AUTO_SLOT_CAP, MAX_AUTO_TABLE_BYTES // per_slot))


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
