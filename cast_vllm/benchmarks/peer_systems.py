"""The systems ``bench peers`` drives in this process: our engine (``Ours``) and the HF-hook
peers (``HFPeer``: repeng, steering-vectors), each generating a ``Workload`` greedily."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

OURS = "cast-vllm"


@dataclass
class Workload:
    """Prompts (token ids) and, per prompt, the index of its vector (None: unsteered)."""
    name: str
    prompts: list[list[int]]
    vectors: list[int | None]

    @property
    def groups(self) -> dict[int | None, list[int]]:
        out: dict[int | None, list[int]] = {}
        for i, k in enumerate(self.vectors):
            out.setdefault(k, []).append(i)
        return out


def first_difference(ours: list[list[int]], theirs: list[list[int]]) -> dict | None:
    """``{"prompt": i, "position": j}`` of the first differing generated token, None when equal."""
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            j = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            return {"prompt": i, "position": j, "ours": a[j] if j < len(a) else None,
                    "theirs": b[j] if j < len(b) else None}
    if len(ours) != len(theirs):
        return {"prompt": min(len(ours), len(theirs)), "position": 0, "ours": None, "theirs": None}
    return None


class Ours:
    """``SteeredLLM`` in this process; one ``generate`` call per workload."""
    name = OURS

    def __init__(self, model: str, vectors, max_num_seqs: int, max_tokens: int, compiled: bool):
        from cast_vllm import SteeredLLM, SteeringVector

        self.llm = SteeredLLM(model, dtype="float32", max_model_len=512, max_num_seqs=max_num_seqs, seed=0,
                              enforce_eager=not compiled, kv_cache_memory_bytes=1 << 30,
                              enable_prefix_caching=False, distributed_executor_backend="uni")
        for k, dirs in enumerate(vectors):
            self.llm.register_vector(f"peers-{k}", SteeringVector(dirs, {"method": "random-bench"}))
        self.max_tokens = max_tokens

    def generate(self, work: Workload) -> tuple[list[list[int]], float]:
        from vllm import SamplingParams, TokensPrompt

        base = {"max_tokens": self.max_tokens, "temperature": 0.0, "ignore_eos": True}
        params = [SamplingParams(**base) if k is None else SamplingParams(**base, extra_args={"steering": {
            "vector": f"peers-{k}", "scale": 1.0, "positions": "all", "mode": "add"}}) for k in work.vectors]
        prompts = [TokensPrompt(prompt_token_ids=p) for p in work.prompts]
        t0 = time.perf_counter()
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        dt = time.perf_counter() - t0
        return [list(o.outputs[0].token_ids) for o in outs], dt

    def close(self) -> None:
        from cast_vllm.engine.shutdown import shutdown_llm

        shutdown_llm(self.llm)


def load_hf_model(model: str):
    """The HF model in float32, eval, with a generation config that never stops or masks at EOS
    (as vLLM's ``ignore_eos``) and greedy decoding; and its pad id."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    hf.generation_config = GenerationConfig(do_sample=False, pad_token_id=pad, eos_token_id=None)
    return hf, pad


def hf_generate(model, pad: int, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Greedy HF ``generate`` of one left-padded batch; the generated tokens of each prompt."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False,
                             pad_token_id=pad)
    return [row[width:].tolist() for row in out]


class HFPeer:
    """An HF-transformers hook library: one vector per batch, so a workload runs one batch per
    vector (``one_at_a_time``: one batch per prompt, no padding, for the identity check)."""

    def __init__(self, name: str, module, model: str, vectors, max_tokens: int):
        self.name, self.module, self.max_tokens = name, module, max_tokens
        self.hf, self.pad = load_hf_model(model)
        self.vectors = vectors
        if name == "repeng":
            layers = sorted(vectors[0])
            self.control = module.ControlModel(self.hf, layers)   # wraps the layers in place
            self.cvs = [module.ControlVector(model_type=self.hf.config.model_type,
                                             directions={i: d.numpy() for i, d in dirs.items()}) for dirs in vectors]
        else:
            self.svs = [module.SteeringVector(layer_activations=dict(dirs), layer_type="decoder_block")
                        for dirs in vectors]

    @contextlib.contextmanager
    def steering(self, k: int | None):
        """The peer's own API applies vector ``k`` (None: nothing) for the block."""
        if k is None:
            yield
        elif self.name == "repeng":
            self.control.set_control(self.cvs[k], 1.0)
            try:
                yield
            finally:
                self.control.reset()
        else:
            with self.svs[k].apply(self.hf, multiplier=1.0, min_token_index=0):
                yield

    def generate(self, work: Workload, one_at_a_time: bool = False) -> tuple[list[list[int]], float]:
        out: list[list[int] | None] = [None] * len(work.prompts)
        t0 = time.perf_counter()
        for k, idx in work.groups.items():
            batches = [[i] for i in idx] if one_at_a_time else [idx]
            for batch in batches:
                with self.steering(k):
                    for i, toks in zip(batch, hf_generate(self.hf, self.pad, [work.prompts[i] for i in batch],
                                                          self.max_tokens)):
                        out[i] = toks
        return out, time.perf_counter() - t0   # type: ignore[return-value]

    def close(self) -> None:
        if self.name == "repeng":
            self.control.unwrap()
