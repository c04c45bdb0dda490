"""What evaluations run on: the vLLM steering engine (every method's answers) and the HF
activation reader (the source vectors and retrieval embeddings), set up in one place for a
single evaluation, the suite and the CLI alike. The suite shares one backend across pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cast_vllm.evaluation.engine import EvalEngine
from cast_vllm.evaluation.source_vectors import ActivationCache


@dataclass
class EvalBackend:
    model_path: str
    engine: EvalEngine
    acts: ActivationCache
    owns_engine: bool = True

    def close(self) -> None:
        """Shut the engine down if this backend started it (a caller's engine stays up)."""
        if self.owns_engine:
            self.engine.close()


def open_backend(model: str, *, engine: EvalEngine | None = None, acts: ActivationCache | None = None,
                 engine_kwargs: dict[str, Any] | None = None, progress: bool = True) -> EvalBackend:
    """The engine and activation cache for ``model``: the ones given, else new ones (an
    ``EvalEngine`` with ``engine_kwargs``, an HF reader over every layer)."""
    from cast_vllm.method.activations import HFActivationReader, ReaderConfig
    from cast_vllm.model_zoo import resolve

    model_path = str(resolve(model))
    owns_engine = engine is None
    if engine is None:
        engine = EvalEngine(model_path, **(engine_kwargs or {}))
    if acts is None:
        try:
            reader = HFActivationReader(ReaderConfig(model_path, tuple(range(engine.num_layers)), backend="hf",
                                                     batch_size=16))
        except BaseException:
            if owns_engine:
                engine.close()
            raise
        acts = ActivationCache(reader, engine.tokenizer, progress=progress)
    return EvalBackend(model_path, engine, acts, owns_engine)
