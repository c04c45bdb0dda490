"""Every bad steering input (the `spec` and `admission` cases of tests/bad_inputs.py) is refused at
admission with a short message naming the problem, and the engine keeps serving: each refusal is
followed by a good request that succeeds."""

import json

import pytest
import torch
from bad_inputs import cases, save_vectors_for_bad_inputs
from vllm import SamplingParams

from cast_vllm import SteeringVector


@pytest.fixture(scope="module")
def engine(steered_llm, tmp_path_factory):
    vector_dir = save_vectors_for_bad_inputs(tmp_path_factory.mktemp("vectors"))
    return steered_llm(vector_dir=str(vector_dir), max_steering_vectors=2)


def sp(extra):
    return SamplingParams(max_tokens=3, temperature=0.0, extra_args=extra)


@pytest.mark.parametrize("case", cases("spec", "admission"))
def test_bad_spec_refused_then_engine_serves(engine, case):
    with pytest.raises(ValueError, match="invalid steering") as err:
        engine.generate(["hello world"], sp(case.extra), use_tqdm=False)
    assert case.message in str(err.value) and len(str(err.value)) < 600
    out = engine.generate(["hello world"], sp({"steering": "v0", "steering_scale": 2.0}), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 3 and out[0].steering is not None


def test_bad_request_in_a_batch_loses_nothing(engine):
    with pytest.raises(ValueError, match="unknown steering vector"):
        engine.generate(["a", "b", "c"], [sp(None), sp({"steering": "missing"}), sp({"steering": "v0"})],
                        use_tqdm=False)
    outs = engine.generate(["a", "b"], [sp(None), sp({"steering": json.dumps({"vector": "v0"})})], use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 3]


def test_register_vector_checks_model_shape(engine):
    with pytest.raises(ValueError, match="hidden size 10"):
        engine.register_vector("tiny", SteeringVector({0: torch.ones(10)}))
    with pytest.raises(ValueError, match="invalid vector name"):
        engine.register_vector("../evil", SteeringVector({0: torch.ones(64)}))
