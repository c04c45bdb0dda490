"""The requests the keyed server's answers are checked against, and their offline references.

The `keyed` server (conftest.py) starts this file as a script while it boots:
``python offline_references.py MODEL VECTOR_DIR OUT.json`` runs every job through an offline
`SteeredLLM` with the server's settings (prefix caching off, so each reference is computed fresh)
and writes ``{key(kind, prompt, spec): text}``. Never two vLLM engines in the pytest process.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

MAX_TOKENS = 8
MAX_MODEL_LEN = 256
# The keyed server's steering settings, offline (its `cast-vllm serve` options).
MAX_STEERING_VECTORS = 2
MAX_STEERING_SCALE = 100

_WORDS = ("the capital of France is Paris and I loved this movie it was wonderful and moving but this film was "
          "terrible boring and far too long question what is two plus two answer four sentiment positive negative "
          "hello world the quick brown fox jumps over the lazy dog").split()


def _prompt(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n_words))


# Steering specs exactly as sent in `vllm_xargs` (flat values) and as offline `extra_args`.
SPECS = {
    "none": None,
    "v0": {"steering": "v0", "steering_scale": 2.0},
    "v1-layers-generated": {"steering": "v1", "steering_scale": 3.0, "steering_layers": [1, 2],
                            "steering_positions": "generated"},
    "v2-json-normpres": {"steering": json.dumps({"vector": "v2", "scale": 2.0, "mode": "norm_preserving"})},
    "v0+v3-json-split": {"steering": json.dumps([{"vector": "v0", "scale": 1.5, "positions": "prompt"},
                                                 {"vector": "v3", "scale": 1.5, "positions": "generated"}])},
    "v3-last-prompt": {"steering": "v3", "steering_scale": 4.0, "steering_positions": "last_prompt"},
}
RNG = random.Random(1234)
COMPLETION_PROMPTS = [_prompt(RNG, 6 + 2 * i) for i in range(4)]
CHAT_PROMPTS = [_prompt(RNG, 5 + i) for i in range(3)]
LONG_PROMPT = _prompt(RNG, 90)                     # several 32-token KV blocks
LOAD_PROMPTS = [_prompt(RNG, 25 + i % 7) for i in range(12)]  # >= one full block: prefix hits under load
UPLOAD_SPEC = {"steering": "up", "steering_scale": 2.5}     # "up" is uploaded to the server by a test


def _jobs() -> list[dict]:
    jobs = []
    for p in COMPLETION_PROMPTS + LOAD_PROMPTS + [LONG_PROMPT]:
        for spec in SPECS:
            jobs.append({"kind": "completion", "prompt": p, "spec": spec})
    for p in CHAT_PROMPTS:
        for spec in ("none", "v0", "v2-json-normpres"):
            jobs.append({"kind": "chat", "prompt": p, "spec": spec})
    jobs.append({"kind": "completion", "prompt": COMPLETION_PROMPTS[0], "spec": "up"})
    return jobs


def spec_of(name: str):
    return UPLOAD_SPEC if name == "up" else SPECS[name]


def key(kind: str, prompt: str, spec: str) -> str:
    return json.dumps([kind, prompt, spec])


def compute(model: str, vector_dir: str, out: str) -> None:
    from vllm import SamplingParams

    from cast_vllm import SteeredLLM

    llm = SteeredLLM(model, vector_dir=vector_dir, dtype="float32", enforce_eager=True,
                     max_model_len=MAX_MODEL_LEN, max_steering_vectors=MAX_STEERING_VECTORS,
                     max_steering_scale=MAX_STEERING_SCALE, enable_prefix_caching=False)
    jobs = _jobs()

    def sp(spec):
        return SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, extra_args=spec_of(spec))

    comp = [j for j in jobs if j["kind"] == "completion"]
    chat = [j for j in jobs if j["kind"] == "chat"]
    results = {}
    outs = llm.generate([j["prompt"] for j in comp], [sp(j["spec"]) for j in comp], use_tqdm=False)
    for j, o in zip(comp, outs):
        results[key("completion", j["prompt"], j["spec"])] = o.outputs[0].text
    outs = llm.chat([[{"role": "user", "content": j["prompt"]}] for j in chat], [sp(j["spec"]) for j in chat],
                    use_tqdm=False)
    for j, o in zip(chat, outs):
        results[key("chat", j["prompt"], j["spec"])] = o.outputs[0].text
    Path(out).write_text(json.dumps(results))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: offline_references.py MODEL VECTOR_DIR OUT.json")
    compute(*sys.argv[1:])
