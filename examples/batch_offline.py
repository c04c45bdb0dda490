"""Batch offline steering: one vLLM batch mixes unsteered requests and the same vector at
several scales and position policies; every steered output carries its receipt.

    python examples/batch_offline.py --vector vectors/movies.safetensors [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from vllm import SamplingParams

from cast_vllm import SteeredLLM, SteeringVector
from cast_vllm.model_zoo import resolve

PROMPTS = ["Review: The plot was thin and the acting wooden.\nSentiment:",
           "Review: A warm, funny film that stays with you.\nSentiment:",
           "Tell me about your weekend."]
SETTINGS = [None,
            {"vector": "v", "scale": 4.0},
            {"vector": "v", "scale": 8.0, "positions": "last_prompt"},
            {"vector": "v", "scale": 4.0, "mode": "norm_preserving"}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--vector", required=True, help=".safetensors or .gguf steering vector")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-model-len", type=int, default=512)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as vector_dir:
        llm = SteeredLLM(str(resolve(args.model)), vector_dir=vector_dir, max_model_len=args.max_model_len,
                         enforce_eager=True)
        llm.register_vector("v", SteeringVector.load(Path(args.vector)))
        prompts, params = [], []
        for prompt in PROMPTS:
            for spec in SETTINGS:
                prompts.append(prompt)
                params.append(SamplingParams(max_tokens=args.max_tokens, temperature=0.0,
                                             extra_args=None if spec is None else {"steering": spec}))
        outputs = llm.generate(prompts, params, use_tqdm=False)   # one batch, 12 requests
        for spec, out in zip(SETTINGS * len(PROMPTS), outputs):
            label = "unsteered" if spec is None else ", ".join(f"{k}={v}" for k, v in spec.items() if k != "vector")
            receipt = out.steering
            proof = "" if receipt is None else f"  [{receipt.tokens_steered[0]} tokens steered, {receipt.config_hash[:12]}]"
            print(f"{label:>40}: {out.outputs[0].text!r}{proof}")


if __name__ == "__main__":
    main()
