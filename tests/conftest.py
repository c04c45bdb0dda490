import os
from pathlib import Path

import pytest

# Engine and worker in the test process; no core pinning; explicit small KV cache.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hypothesis import settings  # noqa: E402
from tiny_models import ARCHS, ENGINE_DEFAULTS, build_tiny_model  # noqa: E402

# Property tests draw the same examples on every run (CI stays deterministic); set
# HYPOTHESIS_PROFILE=explore locally to draw new ones.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Build one tiny checkpoint per architecture, once per session."""
    root = tmp_path_factory.mktemp("tiny-models")
    cache = {}

    def get(arch: str = "llama") -> Path:
        if arch not in cache:
            cache[arch] = build_tiny_model(arch, root / arch)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def hf_llama(tiny_model_dir):
    """The tiny Llama in transformers, ``(model, tokenizer)``: the reference engine tests compare with."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model_dir("llama")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def steered_llm(tiny_model_dir):
    """``steered_llm(model="llama", vectors=None, plain=False, **overrides)``: an offline engine with the
    suite's settings (``tiny_models.ENGINE_DEFAULTS``) and the overrides a test depends on. ``model``: a
    tiny architecture or a checkpoint folder; ``vectors``: ``{name: SteeringVector}`` to register;
    ``plain``: vLLM's own ``LLM`` with the same settings. The module's engines are shut down when it ends
    (not at garbage collection: hypothesis keeps references, and a late teardown breaks the next engine)."""
    import gc

    from vllm import LLM

    from cast_vllm import SteeredLLM
    from cast_vllm.engine.shutdown import shutdown_llm

    built = []

    def make(model="llama", vectors: dict | None = None, plain: bool = False, **overrides):
        path = tiny_model_dir(model) if model in ARCHS else model
        llm = (LLM if plain else SteeredLLM)(str(path), **{**ENGINE_DEFAULTS, **overrides})
        for name, vec in (vectors or {}).items():
            llm.register_vector(name, vec)
        built.append(llm)
        return llm

    yield make
    for llm in reversed(built):
        shutdown_llm(llm)
    built.clear()
    gc.collect()


@pytest.fixture(scope="session")
def default_model_dir():
    """The embedded default model (prepared by `make test` before pytest runs)."""
    from cast_vllm.model_zoo import prepare_model

    return prepare_model("smollm2-135m")


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found")
    return SHARED_DATA
