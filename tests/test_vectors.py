"""Vector files: safetensors and GGUF round trips, metadata, refusals; the vector store."""

import logging
import multiprocessing
import os
import threading

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import random_vector

from cast_vllm.store import BlobCache, VectorStore
from cast_vllm.vectors import FORMAT, MAX_VECTOR_NAME_LENGTH, SteeringVector, VectorFileError, check_vector_name


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


def _gguf_names(path):
    import gguf

    return sorted(t.name for t in gguf.GGUFReader(str(path)).tensors)


def test_gguf_round_trip_and_layer_numbering(tmp_path, caplog):
    """direction.N is our layer N: llama.cpp adds direction.il at the end of 0-based block il."""
    import gguf

    v = vec(layers=(1, 5))
    with caplog.at_level(logging.WARNING, logger="cast_vllm.vectors"):
        v.save(tmp_path / "a.gguf")
        w = SteeringVector.load(tmp_path / "a.gguf")
    assert caplog.records == []
    assert _gguf_names(tmp_path / "a.gguf") == ["direction.1", "direction.5"]
    assert w.layers == [1, 5]
    assert all(torch.equal(v.directions[i], w.directions[i]) for i in v.layers)
    assert w.metadata["model"] == "tiny" and "gguf_layer_base" not in w.metadata
    fields = gguf.GGUFReader(str(tmp_path / "a.gguf")).fields
    assert bytes(fields["cast_vllm.gguf_layer_base"].parts[-1]) == b"0"
    assert bytes(fields["general.architecture"].parts[-1]) == b"controlvector"
    assert bytes(fields["controlvector.model_hint"].parts[-1]) == b"llama"
    assert int(fields["controlvector.layer_count"].parts[-1][0]) == 2   # tensors written, as repeng counts


def test_gguf_export_leaves_out_layer_0_with_a_warning(tmp_path, caplog):
    """llama.cpp refuses a whole file holding direction.0, so export drops layer 0 and says so."""
    v = vec(layers=(0, 2, 3))
    with caplog.at_level(logging.WARNING, logger="cast_vllm.vectors"):
        v.save_gguf(tmp_path / "a.gguf")
    assert _gguf_names(tmp_path / "a.gguf") == ["direction.2", "direction.3"]
    assert any("layer 0 left out" in r.getMessage() for r in caplog.records)
    assert SteeringVector.load(tmp_path / "a.gguf").layers == [2, 3]
    assert v.layers == [0, 2, 3]                              # the vector itself is untouched
    with pytest.raises(VectorFileError, match="only layer 0"):
        vec(layers=(0,)).save_gguf(tmp_path / "b.gguf")
    assert not (tmp_path / "b.gguf").exists()


def _write_gguf(path, tensors, strings=()):
    """A control vector laid out as cast-vllm 0.1.0's save_gguf wrote one (when strings are ours)."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "controlvector")
    w.add_string("controlvector.model_hint", "llama")
    w.add_uint32("controlvector.layer_count", len(tensors))
    for key, value in strings:
        w.add_string(key, value)
    for name, t in tensors.items():
        w.add_tensor(name, np.asarray(t, dtype=np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path


def test_gguf_from_0_1_0_is_read_the_old_way_with_a_warning(tmp_path, caplog):
    """0.1.0 wrote direction.<layer + 1> with cast_vllm.* metadata and no layer-base marker."""
    old = _write_gguf(tmp_path / "old.gguf", {"direction.1": [1.0, 2.0], "direction.4": [3.0, 4.0]},
                      [("cast_vllm.format", FORMAT), ("cast_vllm.model", "tiny")])
    with caplog.at_level(logging.WARNING, logger="cast_vllm.vectors"):
        v = SteeringVector.load(old)
    assert v.layers == [0, 3] and torch.equal(v.directions[0], torch.tensor([1.0, 2.0]))
    assert v.metadata["model"] == "tiny"
    msg = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "cast-vllm 0.1.0" in msg and "layer n - 1" in msg and "[0, 3]" in msg
    v.save_gguf(tmp_path / "new.gguf")                        # re-saving converts it to the peer convention
    assert _gguf_names(tmp_path / "new.gguf") == ["direction.3"]   # layer 0 cannot go to llama.cpp
    assert SteeringVector.load(tmp_path / "new.gguf").layers == [3]


def test_gguf_without_our_metadata_is_a_peer_file(tmp_path, caplog):
    """No cast_vllm.* fields: llama.cpp/repeng layout, direction.N is layer N, direction.0 included."""
    peer = _write_gguf(tmp_path / "peer.gguf", {"direction.0": [1.0, 1.0], "direction.3": [2.0, 2.0]})
    with caplog.at_level(logging.WARNING, logger="cast_vllm.vectors"):
        assert SteeringVector.load(peer).layers == [0, 3]
    assert caplog.records == []


def test_gguf_layer_base_marker_is_checked(tmp_path):
    bad = _write_gguf(tmp_path / "bad.gguf", {"direction.2": [1.0]}, [("cast_vllm.gguf_layer_base", "1")])
    with pytest.raises(VectorFileError, match="gguf_layer_base is '1'"):
        SteeringVector.load(bad)
    old0 = _write_gguf(tmp_path / "old0.gguf", {"direction.0": [1.0]}, [("cast_vllm.model", "tiny")])
    with pytest.raises(VectorFileError, match="0.1.0 never wrote direction.0"):
        SteeringVector.load(old0)
    v = vec(layers=(2,))
    v.metadata["gguf_layer_base"] = "1"                       # a stale key never overrides the marker
    v.save_gguf(tmp_path / "ok.gguf")
    assert SteeringVector.load(tmp_path / "ok.gguf").layers == [2]


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
    vec(layers=(1, 3), seed=2).save_gguf(user / "b.gguf")
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


def test_vector_names_are_plain_ascii_stems_of_bounded_length():
    assert check_vector_name("tweets-from_movies.v2") == "tweets-from_movies.v2"
    assert check_vector_name("a" * MAX_VECTOR_NAME_LENGTH)
    for bad in ("good\n", "good\r", "\ngood", "a/b", "..", ".", "", "caf\u00e9", "\u0663", "a b", "a\x00"):
        with pytest.raises(VectorFileError, match="invalid vector name"):
            check_vector_name(bad)
    with pytest.raises(VectorFileError, match=f"limit is {MAX_VECTOR_NAME_LENGTH}"):
        check_vector_name("a" * (MAX_VECTOR_NAME_LENGTH + 1))
    with pytest.raises(VectorFileError, match=f"limit is {MAX_VECTOR_NAME_LENGTH}"):
        check_vector_name("a" * 300)                   # used to reach the filesystem: ENAMETOOLONG


def test_long_names_are_refused_by_the_store_before_the_filesystem(tmp_path):
    store = VectorStore([tmp_path], blob_dir=tmp_path / "blobs")
    with pytest.raises(VectorFileError, match="limit is"):
        store.register("a" * 300, vec())
    with pytest.raises(VectorFileError, match="limit is"):
        store.get("a" * 300)


def test_constructor_takes_only_one_dimensional_float_tensors():
    for bad, match in ((torch.ones(1, 16), r"shape \[1, 16\]"), (torch.ones(2, 8), r"shape \[2, 8\]"),
                       (torch.tensor(1.0), r"shape \[\]"), (torch.ones(0), "empty"),
                       (torch.arange(16), "dtype torch.int64"), (torch.ones(16, dtype=torch.complex64), "dtype")):
        with pytest.raises(VectorFileError, match=match):
            SteeringVector({0: bad})
    with pytest.raises(VectorFileError, match="Inf"):
        SteeringVector({0: torch.tensor([1e300, 1.0], dtype=torch.float64)})   # overflows float32
    with pytest.raises(VectorFileError, match="non-negative int"):
        SteeringVector({True: torch.ones(4)})
    with pytest.raises(VectorFileError, match="layer index 1024"):
        SteeringVector({1024: torch.ones(4)})
    v = SteeringVector({1: torch.ones(4, dtype=torch.bfloat16), 0: torch.ones(4, dtype=torch.float64)})
    assert v.layers == [0, 1] and all(t.dtype == torch.float32 and t.shape == (4,) for t in v.directions.values())


def _save_repeatedly(path: str, seed: int, times: int) -> None:
    """Child process body (spawned): the same content-addressed blob, over and over."""
    v = vec(layers=(1, 3), seed=seed)                 # no layer 0: GGUF export leaves it out
    for _ in range(times):
        v.save(path)
        assert SteeringVector.load(path).content_hash() == v.content_hash()


@pytest.mark.parametrize("suffix", [".safetensors", ".gguf"])
def test_concurrent_saves_of_one_path_never_corrupt_it(tmp_path, suffix):
    """Two processes and eight threads save one path; each reader sees a whole file, no temp file
    stays behind (a fixed ``<path>.tmp`` made writers clobber and unlink each other's file)."""
    path = tmp_path / f"blob{suffix}"
    expected = vec(layers=(1, 3), seed=5).content_hash()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_save_repeatedly, args=(str(path), 5, 15)) for _ in range(2)]
    for p in procs:
        p.start()
    errors = []

    def worker():
        try:
            _save_repeatedly(str(path), 5, 15)
        except Exception as exc:   # collected: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(120)
    assert errors == [] and [p.exitcode for p in procs] == [0, 0]
    assert SteeringVector.load(path).content_hash() == expected
    assert os.listdir(tmp_path) == [path.name]
    (tmp_path / "ref").touch()
    assert path.stat().st_mode & 0o777 == (tmp_path / "ref").stat().st_mode & 0o777   # open()'s mode, not 0600


def test_failed_save_leaves_no_temp_file(tmp_path):
    for name in ("a.safetensors", "a.gguf"):
        (tmp_path / name).mkdir()                      # the final rename fails after the data is written
        with pytest.raises(OSError):
            vec().save(tmp_path / name)
    assert sorted(os.listdir(tmp_path)) == ["a.gguf", "a.safetensors"]


def test_oversized_metadata_is_refused_at_save_not_at_load(tmp_path):
    v = vec()
    v.metadata["huge"] = "x" * (1 << 20)
    with pytest.raises(VectorFileError, match="metadata .* limit is 65536"):
        v.save(tmp_path / "a.safetensors")
    with pytest.raises(VectorFileError, match="metadata .* limit is 65536"):
        v.save_gguf(tmp_path / "a.gguf")
    assert os.listdir(tmp_path) == []


def test_worker_vectors_keep_only_what_the_hash_names(tmp_path, monkeypatch):
    """A worker's shipped vectors: checked against the hash, kept on its own disk (read back
    after eviction from memory), and the request's paths used only for a vector never shipped."""
    from cast_vllm.engine.worker_vectors import WorkerVectors

    monkeypatch.setenv("CAST_VLLM_WORKER_HOME", str(tmp_path / "worker"))
    held = WorkerVectors(capacity=1)
    a, b = random_vector(1), random_vector(2)
    with pytest.raises(VectorFileError, match="holds other numbers"):
        held.put(a.content_hash(), b.to_safetensors_bytes())
    with pytest.raises(VectorFileError, match="shipped vector"):
        held.put(a.content_hash(), b"not a safetensors file")
    held.put(a.content_hash(), a.to_safetensors_bytes())
    held.put(b.content_hash(), b.to_safetensors_bytes())          # evicts a from memory
    assert held.received == 2 and held.local_path(a.content_hash()).is_file()
    nowhere = str(tmp_path / "front-end" / "blob.safetensors")
    assert held.get(a.content_hash(), nowhere, None).content_hash() == a.content_hash()
    assert held.from_paths == 0
    c = random_vector(3)
    c.save(tmp_path / "c.safetensors")
    assert held.get(c.content_hash(), str(tmp_path / "c.safetensors"), None).content_hash() == c.content_hash()
    assert held.from_paths == 1
    with pytest.raises(VectorFileError):
        held.get(random_vector(4).content_hash(), nowhere, None)
