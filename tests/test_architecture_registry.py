"""The architecture registry (engine/architectures.py): one table for steering and probing.

Unit checks of the table, the layer-path extension point and the refusals; then the probes of
the two families that used to be half supported (Gemma3: steering only, Mistral: probing only)
against the HF reference reader. Their steering is in test_engine_architectures.py.
"""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cast_vllm.engine import architectures as reg
from cast_vllm.engine.architectures import (Architecture, ArchitectureError, decoder_layers, probe_for,
                                            register_architecture, unregister_architecture, wrapper_for)
from cast_vllm.engine.probe_model import ProbeError, probe_architecture_for
from cast_vllm.errors import CastVllmError

ENGINE = Path(reg.__file__).resolve().parent
FAMILIES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM"}


def test_every_builtin_family_steers_and_probes():
    assert {n for a in reg.BUILTIN for n in a.hf_names} == FAMILIES
    for name in FAMILIES:
        stem = name
        assert wrapper_for([name]) == f"Cast{stem}" and probe_for([name]) == f"CastProbe{stem}"
        assert wrapper_for([f"Cast{stem}"]) == f"Cast{stem}"               # a wrapper name is accepted as is
        assert probe_architecture_for([f"CastProbe{stem}"]) == f"CastProbe{stem}"
    assert set(reg.steering_targets()) == {f"Cast{n}" for n in FAMILIES}
    assert set(reg.probe_targets()) == {f"CastProbe{n}" for n in FAMILIES}
    assert all(t.startswith("cast_vllm.engine.") for t in {**reg.steering_targets(), **reg.probe_targets()}.values())


def test_unknown_architectures_are_refused_naming_the_supported_ones():
    with pytest.raises(ArchitectureError, match="not supported for steering; supported: .*Gemma3.*Mistral"):
        wrapper_for(["GPT2LMHeadModel"])
    with pytest.raises(ProbeError, match="no activation probe .*Gemma3ForCausalLM.*MistralForCausalLM"):
        probe_architecture_for(["GPT2LMHeadModel"])
    assert issubclass(ProbeError, ValueError) and issubclass(ProbeError, CastVllmError)


def test_vllm_compat_lists_every_builtin_base():
    from cast_vllm.engine.vllm_compat import DEPENDED_INTERNALS

    subclassed = {(i.module, i.name) for i in DEPENDED_INTERNALS if i.how == "subclassed"}
    assert {(a.vllm_module, a.vllm_class) for a in reg.BUILTIN} <= subclassed


class _Block(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return x + self.k


class _OddModel(nn.Module):
    """An HF-style model whose decoder layers are not at ``model.layers``."""

    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"architectures": ["OddForCausalLM"]})()
        self.transformer = nn.Module()
        self.transformer.h = nn.ModuleList(_Block(float(k)) for k in range(3))

    def forward(self, x):
        for block in self.transformer.h:
            x = block(x)
        return x


@pytest.fixture
def odd_arch():
    arch = Architecture(("OddForCausalLM",), "vllm.model_executor.models.odd", "OddForCausalLM",
                        hf_layers="transformer.h", vllm_layers="transformer.h",
                        probing_gap="vLLM 0.32 has no such model (a test entry)")
    yield register_architecture(arch)
    unregister_architecture(arch)


def test_register_architecture_in_one_call(odd_arch):
    model = _OddModel()
    assert decoder_layers(model) is model.transformer.h
    assert wrapper_for(["OddForCausalLM"]) == "CastOddForCausalLM"
    assert reg.steering_targets()["CastOddForCausalLM"] == "cast_vllm.engine.wrappers:CastOddForCausalLM"
    assert reg.is_steering_architecture("CastOddForCausalLM") and not reg.is_steering_architecture("OddForCausalLM")
    with pytest.raises(ArchitectureError, match="already registered"):
        register_architecture(Architecture(("OddForCausalLM",), "m", "OtherForCausalLM"))


def test_hf_steering_hooks_follow_the_layer_path(odd_arch):
    """hf_steering finds decoder layer i through the registry, wherever the model keeps it."""
    from cast_vllm import SteeringVector
    from cast_vllm.hf_steering import steering_hooks
    from cast_vllm.spec import parse_steering

    model = _OddModel()
    x = torch.zeros(1, 4, 8)
    vec = SteeringVector({1: torch.ones(8)})
    (comp,) = parse_steering({"steering": {"vector": "v", "scale": 2.0}})
    with steering_hooks(model, [(comp, vec)], prompt_len=4):
        steered = model(x)
    assert torch.equal(steered - model(x), torch.full((1, 4, 8), 2.0))


def test_a_recorded_gap_is_refused_with_its_reason(odd_arch):
    with pytest.raises(ProbeError, match="cannot be probed in vLLM: vLLM 0.32 has no such model"):
        probe_architecture_for(["OddForCausalLM"])
    assert "CastProbeOddForCausalLM" not in reg.probe_targets()
    from cast_vllm.engine import probe_model

    with pytest.raises(AttributeError):
        probe_model.CastProbeOddForCausalLM  # noqa: B018


def test_missing_layer_path_names_the_fix():
    model = nn.Module()
    model.config = type("Config", (), {"architectures": ["NoLayersForCausalLM"]})()
    with pytest.raises(ArchitectureError, match="at 'model.layers'; register its architecture"):
        decoder_layers(model)


def test_engine_imports_nothing_from_the_method_or_evaluation():
    """Layers point one way: the engine never imports the CAST method or the evaluation."""
    bad = []
    for path in sorted(ENGINE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            bad += [f"{path.name}: {n}" for n in names if n.startswith(("cast_vllm.method", "cast_vllm.evaluation"))]
    assert bad == []


# --- probing the families that could not be probed before (one vLLM engine each) ------------


@pytest.mark.parametrize("arch", ["gemma3", "mistral"])
def test_probe_matches_hf_reader(tiny_model_dir, arch):
    from cast_vllm.engine.probe_model import probe_hf_overrides
    from cast_vllm.method.activations import (HFActivationReader, ReaderConfig, VLLMActivationReader, encode_prompts,
                                              load_tokenizer, model_info)

    path = str(tiny_model_dir(arch))
    info = model_info(path)
    assert probe_hf_overrides(info.architectures, [0])["architectures"] == [probe_for(info.architectures)]
    ids = encode_prompts(load_tokenizer(path), ["I loved this movie, it was", "The capital of France is", "hi"])
    layers = (0, 1, 2, 3)
    hf = HFActivationReader(ReaderConfig(path, layers, backend="hf", batch_size=2))
    expected = hf.read(ids)
    hf.close()
    vr = VLLMActivationReader(ReaderConfig(path, layers, backend="vllm", kv_cache_bytes=64 << 20, max_model_len=256))
    try:
        got = vr.read(ids)
        # Mistral reads vLLM's auxiliary hidden states; Gemma3Model has none: the probe's own loop
        assert vr.llm.apply_model(lambda model: model.cast_probe_aux) == [arch == "mistral"]
    finally:
        vr.close()
    assert got.shape == expected.shape == (3, 4, 64)
    rel = np.abs(got - expected).max(axis=-1) / np.abs(expected).max(axis=-1)
    assert rel.max() < 1e-4, f"max relative error {rel.max():.2e}"
    assert np.abs(got[0] - got[1]).max() > 1e-2
