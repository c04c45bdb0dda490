"""Every bad steering input is refused at admission with a message naming the problem, and the
engine keeps serving: each refusal is followed by a good request that succeeds."""

import json

import pytest
import torch
from safetensors.torch import save_file
from vllm import SamplingParams

from cast_vllm import SteeredLLM, SteeringVector


@pytest.fixture(scope="module")
def vector_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("vectors")
    g = torch.Generator().manual_seed(0)
    SteeringVector({0: torch.randn(64, generator=g), 2: torch.randn(64, generator=g)}).save(d / "good.safetensors")
    SteeringVector({0: torch.randn(32, generator=g)}).save(d / "small.safetensors")   # wrong hidden size
    bad = torch.randn(64, generator=g)
    bad[3] = float("nan")
    save_file({"layer.0": bad}, str(d / "nan.safetensors"), metadata={"format": "cast-vllm/1"})
    (d / "junk.safetensors").write_bytes(b"\x80\x04not a safetensors file at all")
    SteeringVector({9: torch.randn(64, generator=g)}).save(d / "deep.safetensors")     # layer 9 of 4
    return d


@pytest.fixture(scope="module")
def engine(tiny_model_dir, vector_dir):
    llm = SteeredLLM(str(tiny_model_dir("llama")), vector_dir=str(vector_dir), dtype="float32",
                     enforce_eager=True, max_model_len=256, max_num_seqs=8, max_steering_vectors=2)
    yield llm
    del llm


def sp(extra):
    return SamplingParams(max_tokens=3, temperature=0.0, extra_args=extra)


BAD = [
    ({"steering": "missing"}, "unknown steering vector 'missing'"),
    ({"steering": {"vector": "good", "layers": [7]}}, "out of range"),
    ({"steering": {"vector": "good", "layers": [1]}}, "not in vector 'good'"),
    ({"steering": {"vector": "good", "scale": float("nan")}}, "must be finite"),
    ({"steering": {"vector": "good", "scale": float("inf")}}, "must be finite"),
    ({"steering": {"vector": "good", "scale": 1e9}}, "exceeds the server limit"),
    ({"steering": {"vector": "good", "scale": "big"}}, "must be a number"),
    ({"steering": {"vector": "good", "mode": "multiply"}}, "mode must be one of"),
    ({"steering": {"vector": "good", "positions": "middle"}}, "positions must be one of"),
    ({"steering": '{"vector": "good", "scale": '}, "not valid JSON"),
    ({"steering": {"vector": "good", "colour": "red"}}, "unknown field"),
    ({"steering": "../good"}, "invalid vector name"),
    ({"steering": "/etc/passwd"}, "invalid vector name"),
    ({"steering": "small"}, "hidden size 32"),
    ({"steering": "nan"}, "NaN or Inf"),
    ({"steering": "junk"}, "not a safetensors file"),
    ({"steering": "deep"}, "out of range"),
    ({"steering_scale": 2.0}, "without 'steering'"),
    ({"steering": [{"vector": "good", "mode": "add"},
                   {"vector": "good", "mode": "norm_preserving", "layers": [0]}]}, "must agree per layer"),
    ({"steering": [{"vector": "good", "positions": "prompt"}, {"vector": "good", "positions": "last_prompt"},
                   {"vector": "good", "positions": "generated"}]}, "needs 3 steering slots"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[m for _, m in BAD])
def test_bad_spec_refused_then_engine_serves(engine, extra, message):
    with pytest.raises(ValueError, match="invalid steering") as err:
        engine.generate(["hello world"], sp(extra), use_tqdm=False)
    assert message in str(err.value)
    out = engine.generate(["hello world"], sp({"steering": "good", "steering_scale": 2.0}), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 3


def test_bad_request_in_a_batch_loses_nothing(engine):
    with pytest.raises(ValueError, match="unknown steering vector"):
        engine.generate(["a", "b", "c"], [sp(None), sp({"steering": "missing"}), sp({"steering": "good"})],
                        use_tqdm=False)
    outs = engine.generate(["a", "b"], [sp(None), sp({"steering": json.dumps({"vector": "good"})})], use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 3]


def test_register_vector_checks_model_shape(engine):
    with pytest.raises(ValueError, match="hidden size 10"):
        engine.register_vector("tiny", SteeringVector({0: torch.ones(10)}))
    with pytest.raises(ValueError, match="invalid vector name"):
        engine.register_vector("../evil", SteeringVector({0: torch.ones(64)}))
