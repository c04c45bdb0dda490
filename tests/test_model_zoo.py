"""The embedded-model table and the checks that guard it (no downloads here: `make test`
prepares the default model; the larger models are checked where a prepared copy exists)."""

import re
from pathlib import Path

import numpy as np
import pytest

from cast_vllm.model_zoo import MODELS, EmbeddedModel, PrepareModelError, _check_gguf_name, default_model_dir


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_entry_is_complete(name):
    spec = MODELS[name]
    assert spec.name == name
    assert len(spec.wheels) == len(spec.members) >= 1
    assert re.fullmatch(r"[0-9a-f]{64}", spec.gguf_sha256)
    assert spec.gguf_name and spec.licence
    assert all("==" in w for w in spec.wheels), "wheels are pinned: the hash is of exact versions"
    # chunks are numbered in order: a permuted table would assemble a corrupt file
    numbers = [int(re.findall(r"\d+", m.rsplit("/", 1)[1])[-1]) for m in spec.members]
    assert numbers == sorted(numbers)


def _gguf_named(path: Path, name: str | None) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    if name is not None:
        writer.add_name(name)
    writer.add_tensor("t", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_header_name_must_match(tmp_path):
    spec = MODELS["qwen2.5-coder-0.5b"]
    _check_gguf_name(_gguf_named(tmp_path / "ok.gguf", spec.gguf_name), spec)
    with pytest.raises(PrepareModelError, match="general.name='Qwen2.5 Coder 1.5B Instruct GGUF'.*qwen2.5-coder-0.5b"):
        _check_gguf_name(_gguf_named(tmp_path / "other.gguf", MODELS["qwen2.5-coder-1.5b"].gguf_name), spec)
    with pytest.raises(PrepareModelError, match="general.name=None"):
        _check_gguf_name(_gguf_named(tmp_path / "none.gguf", None), spec)


def test_needs_is_stated_for_the_large_models():
    for name in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"):
        assert "memory" in MODELS[name].needs and "disk" in MODELS[name].needs


@pytest.mark.slow
@pytest.mark.parametrize("name,layers,hidden", [("qwen2.5-coder-0.5b", 24, 896), ("qwen2.5-coder-1.5b", 28, 1536)])
def test_prepared_qwen_folder(name, layers, hidden):
    """Where `cast-vllm prepare-model NAME` ran: the folder is the model the table says."""
    import json

    folder = default_model_dir(name)
    if not (folder / "cast-vllm-prepared.txt").is_file():
        pytest.skip(f"{name} not prepared here (cast-vllm prepare-model {name})")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"]) == (layers, hidden)
    assert MODELS[name].gguf_sha256 in (folder / "cast-vllm-prepared.txt").read_text()
    assert isinstance(MODELS[name], EmbeddedModel)

