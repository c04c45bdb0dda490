"""Compiled graphs and the multiprocess layout (plugin loaded through its entry point in the
worker), with plain ``vllm.LLM`` + ``hf_overrides``: same tokens as the HF reference."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from tiny_models import ENGINE_DEFAULTS, random_vector, save_vectors

from cast_vllm.hf_steering import greedy_generate
from cast_vllm.spec import parse_steering

SPECS = [None, {"vector": "A", "scale": 2.0}, {"vector": "B", "scale": 6.0, "mode": "norm_preserving",
                                                "positions": "last_prompt"}]
PROMPTS = ["hello world, the quick brown fox", "I loved this movie, it was", "The capital of France is"]

SCRIPT = textwrap.dedent("""
    import json, sys
    from vllm import LLM, SamplingParams
    def main():
        model, vector_dir, specs, prompts, engine_kw = sys.argv[1], sys.argv[2], *map(json.loads, sys.argv[3:6])
        llm = LLM(model, **engine_kw,
                  hf_overrides={"architectures": ["CastLlamaForCausalLM"], "cast_vector_dirs": [vector_dir]})
        params = [SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, extra_args=None if s is None else {"steering": s})
                  for s in specs]
        outs = llm.generate(prompts, params, use_tqdm=False)
        print("RESULT " + json.dumps([list(o.outputs[0].token_ids) for o in outs]))
    if __name__ == "__main__":
        main()
""")


@pytest.fixture(scope="module")
def setup(tiny_model_dir, hf_llama, tmp_path_factory):
    vecs = {"A": random_vector(3), "B": random_vector(4, layers=[1, 2])}
    d = save_vectors(tmp_path_factory.mktemp("modes"), vecs)
    (d / "script.py").write_text(SCRIPT)
    model_dir = tiny_model_dir("llama")
    hf, tok = hf_llama
    expected = []
    for prompt, spec in zip(PROMPTS, SPECS):
        comps = parse_steering({"steering": spec}) if spec else []
        expected.append(greedy_generate(hf, tok(prompt)["input_ids"], 6, [(c, vecs[c.vector]) for c in comps])[0])
    return model_dir, d, expected


@pytest.mark.parametrize("mode", ["compiled-multiprocess", "eager-multiprocess"])
def test_mode_matches_reference(setup, mode):
    model_dir, d, expected = setup
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_CPU_CI_ENV": "1",
           "VLLM_CACHE_ROOT": str(d / "vllm-cache")}
    engine_kw = {**ENGINE_DEFAULTS, "enforce_eager": mode.startswith("eager"), "kv_cache_memory_bytes": 1 << 28}
    proc = subprocess.run([sys.executable, str(d / "script.py"), str(model_dir), str(d), json.dumps(SPECS),
                           json.dumps(PROMPTS), json.dumps(engine_kw)], capture_output=True, text=True, env=env,
                          timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    got = json.loads(lines[-1][len("RESULT "):])
    assert got == expected
    assert got[1] != got[0] and got[2] != got[0]
