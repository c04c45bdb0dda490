"""The steering receipt: what was applied to one request, so a user can prove steering happened.

Built from the resolved steering (what admission decided) and the request's token counts. A
token counts as steered when its residual stream went through a steered layer: prompt tokens
(those read from the prefix cache were computed under the same steering key) and generated
tokens fed back into the model (every generated token but the last, which is only sampled).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from cast_vllm.engine.resolved import ResolvedSteering
from cast_vllm.spec import PHASE_GENERATED, PHASE_LAST_PROMPT, PHASE_PROMPT

RECEIPT_HEADER = "x-cast-steering"


@dataclass(frozen=True)
class ReceiptComponent:
    vector: str
    vector_hash: str
    layers: tuple[int, ...]
    scale: float
    mode: str
    positions: str


@dataclass(frozen=True)
class SteeringReceipt:
    config_hash: str
    components: tuple[ReceiptComponent, ...]
    prompt_tokens: int
    tokens_steered: tuple[int, ...]   # one entry per output sequence (n > 1: one per choice)

    @classmethod
    def build(cls, resolved: ResolvedSteering, prompt_tokens: int,
              output_tokens: tuple[int, ...] | list[int]) -> "SteeringReceipt":
        comps = tuple(ReceiptComponent(c.vector, c.content_hash, tuple(c.layers), c.scale, c.mode, c.positions)
                      for c in resolved.components)
        return cls(resolved.key, comps, prompt_tokens,
                   tuple(steered_tokens(resolved, prompt_tokens, n) for n in output_tokens))

    def to_dict(self) -> dict:
        body = asdict(self)
        body["components"] = [{**comp, "layers": list(comp["layers"])} for comp in body["components"]]
        body["tokens_steered"] = list(self.tokens_steered)
        return body

    def header_value(self) -> str:
        """Compact JSON without the token counts (known only once generation ends)."""
        body = self.to_dict()
        del body["tokens_steered"]
        return json.dumps(body, separators=(",", ":"))


def steered_tokens(resolved: ResolvedSteering, prompt_tokens: int, output_tokens: int) -> int:
    """How many forwarded tokens of one sequence some component steered (the indexer's rule)."""
    per_phase = {PHASE_PROMPT: max(prompt_tokens - 1, 0), PHASE_LAST_PROMPT: 1 if prompt_tokens else 0,
                 PHASE_GENERATED: max(output_tokens - 1, 0)}
    return sum(n for phase, n in per_phase.items() if phase in resolved.phase_masks)
