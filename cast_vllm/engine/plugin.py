"""vLLM general plugin (entry point ``vllm.general_plugins``): loaded by every vLLM process.

It registers the steering wrapper and activation-probe architectures of every entry of the
architecture registry (``engine/architectures.py``), and installs the engine hooks: admission
(front end), slot-aware scheduling (engine core) and per-token slot indexing (model runner).
Everything here is idempotent and cheap.

Version guard (``vllm_compat``): outside ``SUPPORTED_VLLM``, or when a patched internal is
missing, nothing is registered or patched. vLLM itself calls ``register()`` in every process
of every vLLM user in this environment, so there the refusal is logged (once per process)
rather than raised: plain vLLM keeps working and only the Cast architectures are unknown.
Our own entry points (``SteeredLLM``, the CLI) call ``register(strict=True)`` and get
``UnsupportedVLLMError`` with the same message. ``CAST_VLLM_ALLOW_UNSUPPORTED_VLLM=1`` lets an
unsupported version through with a warning; a missing internal is always refused.
"""

from __future__ import annotations

import logging

from cast_vllm.engine.vllm_compat import (ALLOW_UNSUPPORTED_ENV, SUPPORTED_VLLM, UnsupportedVLLMError,
                                          VLLMNotInstalledError, compat_problem, installed_vllm_version,
                                          version_supported)

logger = logging.getLogger(__name__)
_state: str | None = None       # None (not tried yet), "installed" or "refused"
_refusal: str | None = None


def register(*, strict: bool = False) -> None:
    """Register the architectures and install the hooks, or refuse (see the module doc).

    ``strict``: raise ``UnsupportedVLLMError`` (``VLLMNotInstalledError`` without vLLM) instead
    of only logging the refusal."""
    global _state, _refusal
    if _state is None:
        _refusal = compat_problem()
        if _refusal is None:
            version = installed_vllm_version()
            if not version_supported(version):
                logger.warning("cast-vllm: vLLM %s is outside the supported range %s; proceeding because %s "
                               "is set. Steering may be wrong: check your results against a supported vLLM.",
                               version, SUPPORTED_VLLM, ALLOW_UNSUPPORTED_ENV)
            _install()
            _state = "installed"
        else:
            _state = "refused"
            logger.error("cast-vllm steering is disabled in this process:\n%s", _refusal)
    if _state == "refused" and strict:
        if installed_vllm_version() is None:
            raise VLLMNotInstalledError()
        raise UnsupportedVLLMError(_refusal)


def _install() -> None:
    from cast_vllm.engine import hooks
    from cast_vllm.engine.architectures import architectures

    for arch in architectures():
        _register_with_vllm(arch)
    hooks.install()


def _register_with_vllm(arch) -> None:
    from vllm import ModelRegistry

    from cast_vllm.engine.architectures import probe_targets, steering_targets

    targets = {**steering_targets(), **probe_targets()}
    for name in (arch.wrapper, arch.probe):
        if name in targets:
            ModelRegistry.register_model(name, targets[name])


def register_new_architecture(arch) -> None:
    """Called by ``architectures.register_architecture``: once the plugin is installed in this
    process, a new entry reaches vLLM's ``ModelRegistry`` at once (before, ``_install`` does it)."""
    if _state == "installed":
        _register_with_vllm(arch)
