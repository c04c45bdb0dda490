"""Vector files: safetensors and GGUF round trips, metadata, refusals; the vector store."""

import pytest
import torch
from safetensors.torch import save_file

from cast_vllm.store import BlobCache, VectorStore
from cast_vllm.vectors import FORMAT, SteeringVector, VectorFileError


def vec(layers=(0, 3), hidden=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({i: torch.randn(hidden, generator=g) for i in layers}, {"model": "tiny", "method": "test"})


def test_safetensors_round_trip(tmp_path):
    v = vec()
    v.save(tmp_path / "a.safetensors")
    w = SteeringVector.load(tmp_path / "a.safetensors")
    assert w.layers == [0, 3] and w.hidden_size == 16
    assert all(torch.equal(v.directions[i], w.directions[i]) for i in v.layers)
    assert w.metadata["format"] == FORMAT and w.metadata["model"] == "tiny" and w.metadata["hidden_size"] == "16"
    assert w.content_hash() == v.content_hash()


def test_gguf_round_trip_and_layer_numbering(tmp_path):
    import gguf

    v = vec(layers=(0, 5))
    v.save(tmp_path / "a.gguf")
    names = sorted(t.name for t in gguf.GGUFReader(str(tmp_path / "a.gguf")).tensors)
    assert names == ["direction.1", "direction.6"]  # llama.cpp counts blocks from 1
    w = SteeringVector.load(tmp_path / "a.gguf")
    assert w.layers == [0, 5]
    assert all(torch.equal(v.directions[i], w.directions[i]) for i in v.layers)
    assert w.metadata["model"] == "tiny"


def test_refusals(tmp_path):
    with pytest.raises(VectorFileError, match="NaN"):
        SteeringVector({0: torch.tensor([1.0, float("nan")])})
    with pytest.raises(VectorFileError, match="size"):
        SteeringVector({0: torch.ones(3), 1: torch.ones(4)})
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04\x95 pickled data")
    with pytest.raises(VectorFileError, match="not a safetensors file"):
        SteeringVector.load(tmp_path / "pickle.safetensors")
    save_file({"weight": torch.ones(4)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(VectorFileError, match="expected only 'layer.<i>'"):
        SteeringVector.load(tmp_path / "other.safetensors")
    save_file({"layer.0": torch.ones(4)}, str(tmp_path / "fmt.safetensors"), metadata={"format": "other/9"})
    with pytest.raises(VectorFileError, match="format"):
        SteeringVector.load(tmp_path / "fmt.safetensors")
    with pytest.raises(VectorFileError, match="does not exist"):
        SteeringVector.load(tmp_path / "none.safetensors")
    with pytest.raises(VectorFileError, match="hidden size 16, the model has 32"):
        vec().check_against_model(32, 4)
    with pytest.raises(VectorFileError, match=r"layers \[3\] out of range"):
        vec().check_against_model(16, 2)


def test_store(tmp_path):
    user, registered = tmp_path / "user", tmp_path / "reg"
    user.mkdir(), registered.mkdir()
    vec(seed=1).save(user / "a.safetensors")
    vec(seed=2).save_gguf(user / "b.gguf")
    store = VectorStore([registered, user], blob_dir=tmp_path / "blobs")
    assert store.names() == ["a", "b"]
    a = store.get("a")
    assert a.blob.is_file() and a.blob.name == f"{a.content_hash}.safetensors"
    assert store.get("a") is a  # cached while the file is unchanged
    store.register("a", vec(seed=3))  # registered vectors shadow files
    assert store.get("a").content_hash == vec(seed=3).content_hash() != a.content_hash
    with pytest.raises(VectorFileError, match="unknown steering vector 'zz'"):
        store.get("zz")
    with pytest.raises(VectorFileError, match="invalid vector name"):
        store.get("../a")
    cache = BlobCache(capacity=1)
    assert cache.get(a.content_hash, str(a.blob)).content_hash() == a.content_hash
    with pytest.raises(VectorFileError, match="does not match"):
        cache.get("0" * 64, str(a.blob))
