"""GGUF control vectors against the peers' own code: ``direction.N`` is our layer N.

llama.cpp (ggml-org/llama.cpp) cannot run here; its convention, read from its source:
  common/common.cpp, common_control_vector_load_one:
      } else if (layer_idx == 0) {  "invalid (zero) direction tensor layer index"  -> whole file skipped
      float * dst = result.data.data() + result.n_embd * (layer_idx - 1);  // layer 1 at [0]
  src/llama-adapter.cpp, llama_adapter_cvec::apply:
      const size_t off = n_embd * (il - 1);  ...  ggml_backend_tensor_set(tensors[il], data + off, ...)
  src/models/llama.cpp, in ``for (int il = 0; il < n_layer; ++il)`` after the FFN residual:
      cur = build_cvec(cur, il);    // cvec->apply_to(ctx0, cur, il): ggml_add(cur, tensors[il])
repeng 0.4.0 (the PyPI wheel, run below), repeng/extract.py:
      writer.add_tensor(f"direction.{layer}", self.directions[layer])        # export_gguf
      layer = int(tensor.name.split(".")[1]) ... directions[layer] = tensor.data   # import_gguf
  repeng/control.py: ControlModel wraps ``model.model.layers[layer_id]`` and adds to its output.
"""

import logging
import warnings

import numpy as np
import pytest
import torch
from peer_wheels import REPENG, peer_package

from cast_vllm.spec import SteeringComponent
from cast_vllm.vectors import SteeringVector


@pytest.fixture(scope="module")
def repeng(tmp_path_factory):
    """repeng's own code: the pinned PyPI wheel, imported from the zip, never installed."""
    with peer_package(REPENG, tmp_path_factory) as module:
        yield module


def _rand(hidden, seed):
    return np.random.default_rng(seed).standard_normal(hidden).astype(np.float32)


def test_repeng_export_loads_as_the_same_layer_ids(repeng, tmp_path, caplog):
    """repeng writes direction.{layer} for its 0-based ids, direction.0 included."""
    dirs = {0: _rand(16, 0), 5: _rand(16, 1)}
    repeng.ControlVector(model_type="llama", directions=dirs).export_gguf(str(tmp_path / "r.gguf"))
    with caplog.at_level(logging.WARNING, logger="cast_vllm.vectors"):
        v = SteeringVector.load(tmp_path / "r.gguf")
    assert v.layers == [0, 5]
    assert all(np.array_equal(v.directions[i].numpy(), dirs[i]) for i in dirs)
    assert caplog.records == []                                # not mistaken for a 0.1.0 file


def test_our_export_imports_in_repeng_as_the_same_layer_ids(repeng, tmp_path):
    v = SteeringVector({1: torch.randn(16), 5: torch.randn(16), 11: torch.randn(16)},
                       {"model": "tiny", "model_type": "qwen2"})
    v.save_gguf(tmp_path / "ours.gguf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # repeng warns on a wrong architecture field
        cv = repeng.ControlVector.import_gguf(str(tmp_path / "ours.gguf"))
    assert sorted(cv.directions) == [1, 5, 11] and cv.model_type == "qwen2"
    assert all(np.array_equal(np.asarray(cv.directions[i]), v.directions[i].numpy()) for i in v.layers)


def test_repeng_vector_survives_a_trip_through_us(repeng, tmp_path):
    dirs = {2: _rand(8, 2), 3: _rand(8, 3)}
    repeng.ControlVector(model_type="llama", directions=dirs).export_gguf(str(tmp_path / "a.gguf"))
    SteeringVector.load(tmp_path / "a.gguf").save(tmp_path / "b.safetensors")
    SteeringVector.load(tmp_path / "b.safetensors").save(tmp_path / "c.gguf")
    back = repeng.ControlVector.import_gguf(str(tmp_path / "c.gguf"))
    assert sorted(back.directions) == [2, 3]
    assert all(np.array_equal(np.asarray(back.directions[i]), dirs[i]) for i in dirs)


def test_llama_cpp_generator_layout_loads_on_the_layers_llama_cpp_steers(tmp_path):
    """tools/cvector-generator writes i32 layer_count = tensors and direction.1..direction.{n_layer - 1}:
        gguf_set_val_i32(ctx, (arch + ".layer_count").c_str(), v_ctrl.size());
        ggml_format_name(ctrl_out, "direction.%zu", il+1);
    """
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "cvec.gguf"), "controlvector")
    w.add_string("controlvector.model_hint", "llama")
    w.add_int32("controlvector.layer_count", 3)
    for il in (1, 2, 3):
        w.add_tensor(f"direction.{il}", np.full(64, float(il), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    v = SteeringVector.load(tmp_path / "cvec.gguf")
    assert v.layers == [1, 2, 3] and float(v.directions[3][0]) == 3.0
    v.check_against_model(64, 4)                               # the old n - 1 reading gave [0, 1, 2]
    v.save_gguf(tmp_path / "again.gguf")
    assert sorted(t.name for t in gguf.GGUFReader(str(tmp_path / "again.gguf")).tensors) == \
        ["direction.1", "direction.2", "direction.3"]


def _repeng_greedy(repeng, model, cv, layer, prompt_ids, max_tokens):
    """Greedy tokens under repeng's own ControlModel, recomputing the sequence like our reference."""
    cm = repeng.ControlModel(model, [layer])
    try:
        cm.set_control(cv, 1.0)
        ids, tokens, logprobs = list(prompt_ids), [], []
        with torch.no_grad():
            for _ in range(max_tokens):
                lp = torch.log_softmax(cm(torch.tensor([ids])).logits[0, -1].float(), -1)
                tok = int(lp.argmax())
                tokens.append(tok), logprobs.append(float(lp[tok])), ids.append(tok)
    finally:
        cm.unwrap()
    return tokens, logprobs


def test_repeng_control_model_steers_what_we_steer(repeng, tiny_model_dir, tmp_path):
    """A repeng vector for block 2, read by our loader, steers our HF reference (the semantics the
    vLLM engine is held to) token for token like repeng's ControlModel; the 0.1.0 reading (one
    block early) and one block late do not."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cast_vllm.hf_steering import greedy_generate

    path = tiny_model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompt = AutoTokenizer.from_pretrained(path)("The capital of France is")["input_ids"]
    d = 6.0 * _rand(64, 7)
    cv = repeng.ControlVector(model_type="llama", directions={2: d})
    cv.export_gguf(str(tmp_path / "r.gguf"))
    ours = SteeringVector.load(tmp_path / "r.gguf")
    assert ours.layers == [2]

    theirs = _repeng_greedy(repeng, model, cv, 2, prompt, 8)
    mine = greedy_generate(model, prompt, 8, [(SteeringComponent("r"), ours)])
    assert mine[0] == theirs[0]
    assert np.allclose(mine[1], theirs[1], atol=1e-4)
    plain = greedy_generate(model, prompt, 8)
    assert not np.allclose(plain[1], theirs[1], atol=1e-3)    # the vector does steer
    for wrong in (1, 3):
        shifted = SteeringVector({wrong: ours.directions[2]})
        other = greedy_generate(model, prompt, 8, [(SteeringComponent("r"), shifted)])
        assert not np.allclose(other[1], theirs[1], atol=1e-3), f"layer {wrong} steered like repeng's 2"
