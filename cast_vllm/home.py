"""Where cast-vllm keeps prepared models and run-time state."""

from __future__ import annotations

import os
from pathlib import Path


def cast_home() -> Path:
    """The cache root: ``$CAST_VLLM_HOME``, default ``~/.cache/cast-vllm``."""
    root = os.environ.get("CAST_VLLM_HOME") or os.path.join(Path.home(), ".cache", "cast-vllm")
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
