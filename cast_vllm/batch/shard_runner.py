"""One engine working through shards of a batch: in this process (one worker) or as the body of
a Ray actor (``ray_pool.py``). Every shard is one engine run, so a shard's batch, and with it
every number, is the same whichever worker runs it: N workers write what one writes.

Vectors arrive as safetensors bytes from the driver (parsed with the same checks as a file) and
are registered in the engine, so an actor on another node needs no vector files of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cast_vllm.batch.requests import BatchRequest
from cast_vllm.ray_pool import ActorBody


@dataclass(frozen=True)
class EngineSpec:
    """What every worker's engine is built from (picklable: it travels to the actors)."""

    model: str
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    vectors: dict[str, bytes] = field(default_factory=dict)     # name -> safetensors bytes
    sampling_defaults: dict[str, Any] = field(default_factory=dict)


class ShardRunner(ActorBody):
    def __init__(self, spec: EngineSpec, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        from cast_vllm import SteeredLLM, SteeringVector

        self.spec = spec
        self.llm = SteeredLLM(spec.model, **spec.engine_kwargs)
        for name, data in spec.vectors.items():
            self.llm.register_vector(name, SteeringVector.from_safetensors_bytes(data, where=f"vector {name!r}"))

    def run(self, shard: list[BatchRequest]) -> list[dict]:
        """One result per request, in shard order (``results.result_line``)."""
        from cast_vllm.batch.results import error_line, result_line

        tokenizer = self.llm.get_tokenizer()
        accepted: list[int] = []
        errors: dict[int, str] = {}
        for k, request in enumerate(shard):
            try:
                prompt = request.prompt if request.messages is None else tokenizer.apply_chat_template(
                    list(request.messages), tokenize=False, add_generation_prompt=True)
                self.llm.enqueue(prompt, request.sampling_params(self.spec.sampling_defaults), use_tqdm=False)
                accepted.append(k)
            except Exception as exc:   # admission (a bad steering spec), the chat template, a prompt too long
                errors[k] = f"{type(exc).__name__}: {exc}"
        # vLLM returns finished requests sorted by its request counter, i.e. in the order enqueued
        outputs = dict(zip(accepted, self.llm.wait_for_completion(use_tqdm=False))) if accepted else {}
        if len(outputs) != len(accepted):
            raise RuntimeError(f"the engine returned {len(outputs)} results for {len(accepted)} requests")
        return [error_line(request, errors[k]) if k in errors else result_line(request, outputs[k])
                for k, request in enumerate(shard)]

    def close(self) -> None:
        from cast_vllm.engine.shutdown import shutdown_llm

        shutdown_llm(self.llm)
