"""Where cast-vllm keeps prepared models and run-time state."""

from __future__ import annotations

from pathlib import Path

from cast_vllm import envs


def cast_home() -> Path:
    """The cache root: ``$CAST_VLLM_HOME``, default ``~/.cache/cast-vllm``."""
    path = Path(envs.home()).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
