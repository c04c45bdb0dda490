"""vLLM general plugin (entry point ``vllm.general_plugins``): loaded by every vLLM process.

It registers the steering wrapper architectures and the activation-probe architectures, and
installs the three engine hooks: admission (front end), slot-aware scheduling (engine core)
and per-token slot indexing (model runner). Everything here is idempotent and cheap.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)
_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    from vllm import ModelRegistry

    from cast_vllm.engine.architectures import STEERING_ARCHITECTURES
    from cast_vllm.method.probe_model import PROBE_ARCHITECTURES

    for name, target in {**STEERING_ARCHITECTURES, **PROBE_ARCHITECTURES}.items():
        ModelRegistry.register_model(name, target)
    from cast_vllm.engine import hooks

    hooks.install()
