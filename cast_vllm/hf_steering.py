"""Steering in plain HF transformers with forward hooks: the reference semantics.

Slow (recomputes the whole sequence each step, one request at a time), but a direct reading of
DESIGN.md's definitions; tests hold the vLLM engine to it, and evaluation can fall back to it
for architectures vLLM cannot serve.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from cast_vllm.engine.architectures import decoder_layers
from cast_vllm.spec import PHASE_GENERATED, PHASE_LAST_PROMPT, PHASE_PROMPT, POSITION_PHASES, SteeringComponent
from cast_vllm.vectors import SteeringVector


def _phases(seq_len: int, prompt_len: int) -> torch.Tensor:
    pos = torch.arange(seq_len)
    phase = torch.full((seq_len,), PHASE_PROMPT)
    phase[pos == prompt_len - 1] = PHASE_LAST_PROMPT
    phase[pos >= prompt_len] = PHASE_GENERATED
    return phase


@contextmanager
def steering_hooks(model, components: list[tuple[SteeringComponent, SteeringVector]], prompt_len: int):
    """Hooks on decoder layer ``i`` (``model.model.layers[i]``, or the registry's path for the
    model) that steer a batch of one sequence whose prompt has ``prompt_len`` tokens."""
    handles = []
    decoder = decoder_layers(model)
    layers = sorted({layer for comp, vec in components for layer in (comp.layers or vec.layers)})
    for layer in layers:
        def hook(module, args, output, layer=layer):
            hidden = output[0] if isinstance(output, tuple) else output
            phase = _phases(hidden.shape[1], prompt_len).to(hidden.device)
            delta = torch.zeros(hidden.shape[1:], dtype=torch.float32, device=hidden.device)
            mode = "add"
            for comp, vec in components:
                if layer not in (comp.layers or vec.layers):
                    continue
                mask = torch.isin(phase, torch.tensor(POSITION_PHASES[comp.positions], device=hidden.device))
                delta += mask[:, None] * (comp.scale * vec.directions[layer].to(hidden.device))[None, :]
                mode = comp.mode
            h = hidden.float()
            steered = h + delta
            if mode == "norm_preserving":
                touched = (delta != 0).any(-1, keepdim=True)
                ratio = h.norm(dim=-1, keepdim=True) / steered.norm(dim=-1, keepdim=True).clamp_min(1e-6)
                steered = torch.where(touched, steered * ratio, h)
            steered = steered.to(hidden.dtype)
            return (steered, *output[1:]) if isinstance(output, tuple) else steered
        handles.append(decoder[layer].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def greedy_generate(model, prompt_ids: list[int], max_tokens: int,
                    components: list[tuple[SteeringComponent, SteeringVector]] | None = None):
    """Greedy tokens and their log-probabilities under steering (no KV cache: exact positions)."""
    ids = list(prompt_ids)
    tokens, logprobs = [], []
    device = next(model.parameters()).device
    for _ in range(max_tokens):
        with steering_hooks(model, components or [], len(prompt_ids)):
            logits = model(torch.tensor([ids], device=device)).logits[0, -1].float()
        lp = torch.log_softmax(logits, -1)
        tok = int(lp.argmax())
        tokens.append(tok)
        logprobs.append(float(lp[tok]))
        ids.append(tok)
    return tokens, logprobs
