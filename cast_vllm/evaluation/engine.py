"""The one vLLM steering engine every method of an evaluation runs through.

``EvalEngine`` wraps a ``SteeredLLM`` and turns a list of ``Request`` (prompt text, steering
spec or ``None``, and the target item it answers) into label log-probabilities or generated
texts, in one batched ``generate`` call: unsteered, cross-task ICL and differently steered
requests share batches. Prompts are tokenized once here (so the length check and the engine
see the same ids) and passed as token ids.

Prefix caching is off by default: steered requests never share KV blocks anyway (different
steering salts the cache), and timings must not depend on what ran before.

Every call is recorded in ``audit`` (phase, method, item ids); the harness tests use it to
prove that no test item ever reaches a hyper-parameter selection call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from cast_vllm import envs
from cast_vllm.engine.shutdown import shutdown_llm
from cast_vllm.errors import CastVllmError
from cast_vllm.evaluation.scoring import LabelSet, label_logprobs


class PromptTooLongError(CastVllmError, ValueError):
    """A prompt does not fit the engine's context."""


@dataclass(frozen=True)
class Request:
    prompt: str
    item_id: str
    steering: Any = None              # a steering spec dict / list, or None
    method: str = ""


@dataclass
class AuditEntry:
    phase: str                         # "dev" (selection), "test", "latency"
    method: str
    item_ids: list[str]
    prompts: list[str]


@dataclass
class EngineResult:
    logprobs: Any = None               # np.ndarray [n, labels] for label scoring
    texts: list[str] | None = None     # for generation scoring
    seconds: float = 0.0
    prompt_tokens: list[int] = field(default_factory=list)


class EvalEngine:
    """One ``SteeredLLM`` plus the sampling parameters the harness needs."""

    def __init__(self, model: str, *, max_model_len: int = 2048, max_steering_vectors: int = 32,
                 kv_cache_gib: float = 0.5, dtype: str = "float32", enforce_eager: bool = True,
                 enable_prefix_caching: bool = False, **engine_kwargs):
        envs.use_cpu_engine_defaults()
        from cast_vllm import SteeredLLM

        self.model = str(model)
        self.max_model_len = max_model_len
        kwargs = dict(dtype=dtype, max_model_len=max_model_len, enforce_eager=enforce_eager,
                      enable_prefix_caching=enable_prefix_caching, max_steering_vectors=max_steering_vectors)
        if not envs.cpu_kv_cache_space_set():
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
        kwargs.update(engine_kwargs)
        self.llm = SteeredLLM(self.model, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.num_layers = self.llm.num_layers
        self.hidden_size = self.llm.hidden_size
        self.audit: list[AuditEntry] = []

    # ---- vectors --------------------------------------------------------------------------
    def register(self, name: str, vector) -> str:
        self.llm.register_vector(name, vector)
        return name

    # ---- tokens ---------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        enc = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        return [list(map(int, ids)) for ids in enc]

    def count_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    # ---- running --------------------------------------------------------------------------
    def run(self, requests: Sequence[Request], *, labels: LabelSet | None = None, max_tokens: int = 8,
            phase: str = "test", desc: str = "", progress: bool = True) -> EngineResult:
        """Label log-probabilities (``labels`` given) or greedy texts for every request, in
        one batched call."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not requests:
            return EngineResult(logprobs=None if labels is None else _empty(labels), texts=[] if labels is None else None)
        ids = self.encode([r.prompt for r in requests])
        longest = max(range(len(ids)), key=lambda i: len(ids[i]))
        need = 1 if labels is not None else max_tokens
        if len(ids[longest]) + need > self.max_model_len:
            r = requests[longest]
            raise PromptTooLongError(f"prompt for item {r.item_id} ({r.method}) has {len(ids[longest])} tokens; with "
                                     f"{need} answer tokens it exceeds max_model_len={self.max_model_len}")
        params = []
        for r in requests:
            extra = {"steering": r.steering} if r.steering is not None else None
            if labels is not None:
                params.append(SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=list(labels.token_ids),
                                             extra_args=extra))
            else:
                params.append(SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=["\n"], extra_args=extra))
        by_method: dict[str, AuditEntry] = {}
        for r in requests:
            entry = by_method.setdefault(r.method, AuditEntry(phase, r.method, [], []))
            entry.item_ids.append(r.item_id)
            entry.prompts.append(r.prompt)
        self.audit.extend(by_method.values())
        use_tqdm: Any = False
        if progress:
            from functools import partial

            from tqdm.auto import tqdm

            use_tqdm = partial(tqdm, desc=desc or phase, leave=False, dynamic_ncols=True)
        t0 = time.perf_counter()
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=x) for x in ids], params, use_tqdm=use_tqdm)
        seconds = time.perf_counter() - t0
        lengths = [len(x) for x in ids]
        if labels is not None:
            return EngineResult(logprobs=label_logprobs(outs, labels), seconds=seconds, prompt_tokens=lengths)
        return EngineResult(texts=[o.outputs[0].text for o in outs], seconds=seconds, prompt_tokens=lengths)

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            shutdown_llm(llm)
            del llm


def _empty(labels: LabelSet):
    import numpy as np

    return np.empty((0, len(labels.keys)))
