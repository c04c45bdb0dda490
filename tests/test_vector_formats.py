"""Vector formats (cast_vllm.vector_formats) and arithmetic (cast_vllm.vector_math, the
SteeringVector operators), checked against the peers' own code where it matters:

steering-vectors 0.12.2 (PyPI wheel, run below), steering_vectors/steering_vector.py:
    @dataclass class SteeringVector: layer_activations: dict[int, Tensor]; layer_type = "decoder_block"
    patch_activations: a forward hook on matching_layers[layer_num] ("model.layers.{num}") adds
    multiplier * layer_activations[layer_num] to the block's output -- our layer ``layer_num``.
    It has no file format of its own; users torch.save the object (or its layer_activations dict).
repeng 0.4.0, repeng/extract.py: @dataclass ControlVector(model_type, directions: dict[int, ndarray])
    with +, - (union of layers, summed where both have one), unary -, * and / by scalars.
"""

import io
import math
import os
import pickle
import warnings
from itertools import product

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peer_wheels import REPENG, STEERING_VECTORS, peer_package

from cast_vllm.spec import SteeringComponent
from cast_vllm.vector_formats import FORMATS, format_of, read_vector, write_vector
from cast_vllm.vector_math import combine, components_of
from cast_vllm.vectors import SteeringVector, VectorFileError

SUFFIX = {"safetensors": ".safetensors", "gguf": ".gguf", "pt": ".pt", "steering-vectors": ".pt",
          "repeng-pickle": ".pkl"}


@pytest.fixture(scope="module")
def steering_vectors(tmp_path_factory):
    with peer_package(STEERING_VECTORS, tmp_path_factory) as module:
        yield module


@pytest.fixture(scope="module")
def repeng(tmp_path_factory):
    with peer_package(REPENG, tmp_path_factory) as module:
        yield module


def _vec(layers=(1, 4, 7), hidden=16, seed=0, metadata=None, extremes=True) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    dirs = {layer: torch.randn(hidden, generator=g) for layer in layers}
    if extremes:   # a subnormal, a signed zero, a value near float32's largest
        dirs[layers[0]][:3] = torch.tensor([1e-40, -0.0, 3.0e38])
    return SteeringVector(dirs, metadata)


def _same(a: SteeringVector, b: SteeringVector) -> bool:
    """Same layer ids and bit-identical float32 numbers."""
    return a.layers == b.layers and all(
        a.directions[i].numpy().tobytes() == b.directions[i].numpy().tobytes() for i in a.layers)


# ---- round trips ----------------------------------------------------------------------------
@pytest.mark.parametrize("src,dst", list(product(FORMATS, FORMATS)))
def test_every_pair_of_formats_keeps_layers_and_numbers(tmp_path, src, dst):
    v = _vec(metadata={"model": "tiny", "model_type": "qwen2"})
    a, b = tmp_path / f"a{SUFFIX[src]}", tmp_path / f"b{SUFFIX[dst]}"
    assert write_vector(v, a, src) == src
    first, fmt = read_vector(a, allow_pickle=True)
    assert fmt == src and _same(first, v)
    write_vector(first, b, dst)
    second, fmt = read_vector(b, allow_pickle=True)
    assert fmt == dst and _same(second, v)
    if {src, dst} <= {"safetensors", "gguf"}:                 # both carry metadata
        assert second.metadata["model"] == "tiny" and second.metadata["model_type"] == "qwen2"
    if dst == "repeng-pickle" and src in ("safetensors", "gguf", "repeng-pickle"):
        assert second.metadata["model_type"] == "qwen2"       # repeng's one metadata field


def test_layer_0_goes_to_gguf_only_when_dropped_explicitly(tmp_path):
    v = _vec(layers=(0, 2))
    with pytest.raises(VectorFileError, match="layer 0.*--drop-layer-0"):
        write_vector(v, tmp_path / "v.gguf")
    assert not (tmp_path / "v.gguf").exists()
    write_vector(v, tmp_path / "v.gguf", drop_layer_0=True)
    assert read_vector(tmp_path / "v.gguf")[0].layers == [2]
    for fmt in ("safetensors", "pt", "steering-vectors", "repeng-pickle"):   # the others keep layer 0
        write_vector(v, tmp_path / f"v{fmt}{SUFFIX[fmt]}", fmt)
        assert _same(read_vector(tmp_path / f"v{fmt}{SUFFIX[fmt]}", allow_pickle=True)[0], v)


def test_plain_pt_dense_tensor_is_layers_0_to_n(tmp_path):
    t = torch.randn(5, 8, dtype=torch.float64)
    torch.save(t, tmp_path / "dense.pt")
    v, fmt = read_vector(tmp_path / "dense.pt")
    assert fmt == "pt" and v.layers == [0, 1, 2, 3, 4]
    assert all(torch.equal(v.directions[i], t[i].float()) for i in range(5))
    assert v.metadata == {"method": "pt-import", "source_file": "dense.pt"}
    torch.save({3: torch.ones(8, dtype=torch.bfloat16), 9: torch.zeros(8)}, tmp_path / "sparse.pth")
    v, fmt = read_vector(tmp_path / "sparse.pth")
    assert fmt == "pt" and v.layers == [3, 9] and float(v.directions[3][0]) == 1.0


def test_pt_writes_a_plain_layer_dict(tmp_path):
    v = _vec()
    write_vector(v, tmp_path / "v.pt")
    d = torch.load(tmp_path / "v.pt", weights_only=True)
    assert type(d) is dict and sorted(d) == v.layers and all(torch.equal(d[i], v.directions[i]) for i in d)


def test_format_comes_from_the_suffix_and_a_lying_suffix_is_refused(tmp_path):
    assert format_of("x.SafeTensors") == "safetensors" and format_of("x.pth") == "pt"
    assert format_of("x.pt", "steering-vectors") == "steering-vectors"
    assert format_of("x.bin", "gguf") == "gguf"                # an unknown suffix with a named format
    with pytest.raises(VectorFileError, match="cannot tell the format"):
        format_of("x.bin")
    with pytest.raises(VectorFileError, match="unknown vector format 'onnx'"):
        format_of("x.pt", "onnx")
    with pytest.raises(VectorFileError, match="means gguf, not safetensors"):
        write_vector(_vec(), tmp_path / "x.gguf", "safetensors")   # the store would read it as GGUF
    write_vector(_vec(), tmp_path / "x.bin", "gguf")
    assert _same(read_vector(tmp_path / "x.bin", "gguf")[0], _vec())


def test_pt_and_steering_vectors_are_told_apart_by_content(tmp_path):
    write_vector(_vec(), tmp_path / "sv.pt", "steering-vectors")
    write_vector(_vec(), tmp_path / "plain.pt", "pt")
    assert read_vector(tmp_path / "sv.pt")[1] == "steering-vectors"
    assert read_vector(tmp_path / "plain.pt")[1] == "pt"
    with pytest.raises(VectorFileError, match="holds a steering-vectors vector, not pt"):
        read_vector(tmp_path / "sv.pt", "pt")
    with pytest.raises(VectorFileError, match="holds a pt vector, not steering-vectors"):
        read_vector(tmp_path / "plain.pt", "steering-vectors")


# ---- steering-vectors, its own code -----------------------------------------------------------
def test_steering_vectors_saved_object_reads_as_the_same_layers(steering_vectors, tmp_path):
    acts = {2: torch.randn(16), 5: torch.randn(16, dtype=torch.float64)}
    torch.save(steering_vectors.SteeringVector(acts), tmp_path / "theirs.pt")
    v, fmt = read_vector(tmp_path / "theirs.pt")
    assert fmt == "steering-vectors" and v.layers == [2, 5]
    assert torch.equal(v.directions[2], acts[2]) and torch.equal(v.directions[5], acts[5].float())
    assert v.metadata["steering_vectors_layer_type"] == "decoder_block"
    torch.save(acts, tmp_path / "acts.pt")                     # their other idiom: the layer_activations dict
    assert read_vector(tmp_path / "acts.pt")[0].layers == [2, 5]


def test_our_steering_vectors_file_loads_as_their_class(steering_vectors, tmp_path):
    v = _vec()
    write_vector(v, tmp_path / "ours.pt", "steering-vectors")
    theirs = torch.load(tmp_path / "ours.pt", weights_only=False)
    assert type(theirs) is steering_vectors.SteeringVector and theirs.layer_type == "decoder_block"
    assert sorted(theirs.layer_activations) == v.layers
    assert all(torch.equal(theirs.layer_activations[i], v.directions[i]) for i in v.layers)
    with torch.serialization.safe_globals([steering_vectors.SteeringVector]):   # the careful user's load
        careful = torch.load(tmp_path / "ours.pt", weights_only=True)
    assert type(careful) is steering_vectors.SteeringVector
    assert all(torch.equal(careful.layer_activations[i], v.directions[i]) for i in v.layers)


@pytest.mark.parametrize("layer_type", ["mlp", "self_attn"])
def test_steering_vectors_inside_a_block_is_refused(steering_vectors, tmp_path, layer_type):
    torch.save(steering_vectors.SteeringVector({1: torch.ones(4)}, layer_type), tmp_path / "x.pt")
    with pytest.raises(VectorFileError, match=f"layer_type '{layer_type}'.*residual stream"):
        read_vector(tmp_path / "x.pt")


def test_steering_vectors_apply_steers_what_we_steer(steering_vectors, tiny_model_dir, tmp_path):
    """Their ``apply`` and our HF reference (the semantics the engine is held to) agree token for
    token on a vector converted through their file; one layer off does not."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cast_vllm.hf_steering import greedy_generate

    path = tiny_model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompt = AutoTokenizer.from_pretrained(path)("The capital of France is")["input_ids"]
    theirs_sv = steering_vectors.SteeringVector({2: 6.0 * torch.randn(64, generator=torch.Generator().manual_seed(7))})
    torch.save(theirs_sv, tmp_path / "sv.pt")
    ours, _ = read_vector(tmp_path / "sv.pt")

    ids, theirs = list(prompt), ([], [])
    with torch.no_grad(), theirs_sv.apply(model, multiplier=1.5):
        for _ in range(8):
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
            tok = int(lp.argmax())
            theirs[0].append(tok), theirs[1].append(float(lp[tok])), ids.append(tok)
    mine = greedy_generate(model, prompt, 8, [(SteeringComponent("sv", scale=1.5), ours)])
    assert mine[0] == theirs[0] and np.allclose(mine[1], theirs[1], atol=1e-4)
    assert not np.allclose(greedy_generate(model, prompt, 8)[1], theirs[1], atol=1e-3)   # it does steer
    for wrong in (1, 3):
        other = greedy_generate(model, prompt, 8, [(SteeringComponent("sv", scale=1.5),
                                                    SteeringVector({wrong: ours.directions[2]}))])
        assert not np.allclose(other[1], theirs[1], atol=1e-3), f"layer {wrong} steered like their 2"


# ---- repeng pickles, its own code -----------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_repeng_pickle_reads_with_consent_only(repeng, tmp_path, protocol):
    dirs = {0: np.random.default_rng(1).standard_normal(16).astype(np.float32),
            6: np.random.default_rng(2).standard_normal(16).astype(np.float32)}
    with open(tmp_path / "cv.pkl", "wb") as f:
        pickle.dump(repeng.ControlVector(model_type="llama", directions=dirs), f, protocol=protocol)
    with pytest.raises(VectorFileError, match="pickle, and loading a pickle can run code"):
        read_vector(tmp_path / "cv.pkl")
    v, fmt = read_vector(tmp_path / "cv.pkl", allow_pickle=True)
    assert fmt == "repeng-pickle" and v.layers == [0, 6] and v.metadata["model_type"] == "llama"
    assert all(np.array_equal(v.directions[i].numpy(), dirs[i]) for i in dirs)


def test_our_repeng_pickle_loads_as_their_control_vector(repeng, tmp_path):
    v = _vec(metadata={"model_type": "qwen2"})
    write_vector(v, tmp_path / "ours.pkl")
    with open(tmp_path / "ours.pkl", "rb") as f:
        cv = pickle.load(f)
    expected = repeng.ControlVector(model_type="qwen2", directions={i: v.directions[i].numpy() for i in v.layers})
    assert type(cv) is repeng.ControlVector and cv == expected   # their __eq__: keys and every number


def test_operators_match_repeng_control_vector_arithmetic(repeng):
    a, b = _vec(layers=(1, 3), seed=1, extremes=False), _vec(layers=(3, 5), seed=2, extremes=False)
    ra, rb = (repeng.ControlVector("llama", {i: v.directions[i].numpy().copy() for i in v.layers}) for v in (a, b))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pairs = [(a + b, ra + rb), (a - b, ra - rb), (2.0 * a, 2.0 * ra), (a * 2.0, ra * 2.0), (-a, -ra),
                 (a / 2.0, ra / 2.0), (a - 0.5 * b, ra - 0.5 * rb)]
    for ours, theirs in pairs:
        assert ours.layers == sorted(theirs.directions)
        for i in ours.layers:
            np.testing.assert_array_equal(ours.directions[i].numpy(), np.asarray(theirs.directions[i], np.float32))


# ---- unsafe and bad input -------------------------------------------------------------------
class _Plant:
    """A pickle that creates a folder when loaded: proof that a loader ran its code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_code_in_a_pickle_never_runs(tmp_path):
    marker = tmp_path / "planted"
    torch.save({1: _Plant(marker)}, tmp_path / "evil.pt")
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(_Plant(marker), f)
    with pytest.raises(VectorFileError, match="weights_only=True.*GLOBAL posix.mkdir"):
        read_vector(tmp_path / "evil.pt")
    with pytest.raises(VectorFileError, match="refusing to load posix.mkdir"):
        read_vector(tmp_path / "evil.pkl", allow_pickle=True)
    (tmp_path / "evil.bin").write_bytes((tmp_path / "evil.pkl").read_bytes())
    with pytest.raises(VectorFileError, match="refusing to load posix.mkdir"):
        read_vector(tmp_path / "evil.bin", "repeng-pickle", allow_pickle=True)
    assert not marker.exists()


def test_a_steering_vectors_object_with_unknown_fields_is_refused(tmp_path):
    from cast_vllm.peer_pickles import SteeringVectorsObject, peer_pickle_module

    obj = SteeringVectorsObject({1: torch.ones(4)})
    obj.multiplier = 3.0                                       # a field a later version might mean something by
    with open(tmp_path / "x.pt", "wb") as f:
        torch.save(obj, f, pickle_module=peer_pickle_module)
    with pytest.raises(VectorFileError, match=r"fields \['layer_activations', 'layer_type', 'multiplier'\]"):
        read_vector(tmp_path / "x.pt")


def _pickled_control_vector(model_type, directions) -> bytes:
    from cast_vllm.peer_pickles import PeerPickler, RepengControlVector

    buf = io.BytesIO()
    PeerPickler(buf, protocol=4).dump(RepengControlVector(model_type, directions))
    return buf.getvalue()


@pytest.mark.parametrize("name,content,message", [
    ("nan.pt", {1: torch.tensor([1.0, math.nan])}, "layer 1 contains NaN or Inf"),
    ("inf.pt", torch.tensor([[1.0, math.inf]]), "layer 0 contains NaN or Inf"),
    ("neg.pt", {-1: torch.ones(3)}, "layer -1 counts from the end"),
    ("strkey.pt", {"layer.1": torch.ones(3)}, "key 'layer.1' is not an int layer id"),
    ("notensor.pt", {1: [1.0, 2.0]}, "layer 1 is a list, not a tensor"),
    ("ints.pt", {1: torch.ones(3, dtype=torch.int64)}, "dtype torch.int64"),
    ("sizes.pt", {1: torch.ones(3), 2: torch.ones(4)}, "layer 2 has size 4, other layers have 3"),
    ("empty.pt", {}, "at least one layer"),
    ("oned.pt", torch.ones(8), "got shape \\[8\\]"),
    ("threed.pt", torch.ones(2, 3, 4), "got shape \\[2, 3, 4\\]"),
    ("list.pt", [torch.ones(3)], "holds a list"),
    ("complex.pt", {1: torch.ones(3, dtype=torch.complex64)}, "dense float tensor"),
    ("sparse.pt", {1: torch.ones(3).to_sparse()}, "dense float tensor"),
    ("huge.pt", torch.zeros(1025, 2), "1025 layers, the limit is 1024"),
])
def test_bad_pt_files_are_refused_with_the_reason(tmp_path, name, content, message):
    torch.save(content, tmp_path / name)
    with pytest.raises(VectorFileError, match=message) as info:
        read_vector(tmp_path / name)
    assert name in str(info.value)


@pytest.mark.parametrize("name,data,message", [
    ("garbage.pt", b"not a torch file", "not a torch.save file, or it is damaged"),
    ("empty.pt", b"", "not a torch.save file, or it is damaged"),
    ("garbage.pkl", b"\x80\x04garbage", "not a loadable repeng pickle"),
    ("wrong.pkl", pickle.dumps({1: 2}), "holds a dict, not a repeng ControlVector"),
    ("ints.pkl", _pickled_control_vector("llama", {1: np.arange(3)}), "direction 1 is not a float numpy array"),
    ("badtype.pkl", _pickled_control_vector(7, {1: np.ones(3, np.float32)}), "model_type is a int"),
    ("nan.pkl", _pickled_control_vector("llama", {1: np.array([np.nan], np.float32)}), "NaN or Inf"),
    ("garbage.gguf", b"GGUF but not really", "not a readable GGUF file"),
    ("garbage.safetensors", b"\x00" * 4, "not a safetensors file"),
])
def test_bad_files_of_every_format_are_refused_with_the_reason(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(VectorFileError, match=message):
        read_vector(tmp_path / name, allow_pickle=True)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(VectorFileError, match="does not exist"):
        read_vector(tmp_path / "nope.safetensors")
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(VectorFileError, match="is not a file"):
        read_vector(tmp_path / "dir.pt")
    if os.geteuid() != 0:                                     # root reads anything
        write_vector(_vec(), tmp_path / "locked.pt")
        (tmp_path / "locked.pt").chmod(0)
        with pytest.raises(VectorFileError, match="cannot read .*Permission denied"):
            read_vector(tmp_path / "locked.pt")


# ---- arithmetic -----------------------------------------------------------------------------
def test_operators_compute_per_layer_and_record_their_components():
    a = _vec(layers=(1, 2), seed=1, metadata={"model": "m", "method": "cast", "source_file": "a.safetensors"},
             extremes=False)
    b = _vec(layers=(2, 3), seed=2, metadata={"model": "m", "method": "cast", "source_file": "b.safetensors"},
             extremes=False)
    s = a + b
    assert s.layers == [1, 2, 3]
    assert torch.equal(s.directions[1], a.directions[1]) and torch.equal(s.directions[3], b.directions[3])
    assert torch.equal(s.directions[2], a.directions[2] + b.directions[2])
    assert torch.equal((-a).directions[1], -a.directions[1]) and torch.equal((a * 2).directions[2],
                                                                               2 * a.directions[2])
    assert torch.equal((a / 4).directions[1], a.directions[1] / 4) and torch.equal((0.5 * a).directions[2],
                                                                                     a.directions[2] * 0.5)
    assert torch.equal((a - b).directions[3], -b.directions[3])
    assert torch.equal((np.float32(2.0) * a).directions[1], 2 * a.directions[1])   # numpy scalars defer to us
    assert s.metadata["method"] == "combine" and s.metadata["model"] == "m"
    assert [(c["source_file"], c["weight"]) for c in components_of(s)] == [("a.safetensors", 1.0),
                                                                          ("b.safetensors", 1.0)]
    assert components_of((a + b) * 2) == components_of(2 * a + 2 * b)   # nested combinations flatten
    assert [c["weight"] for c in components_of(a - 0.25 * b)] == [1.0, -0.25]
    assert components_of(a + a) == [{**components_of(a)[0], "weight": 2.0}]
    assert sum([a, b]).layers == [1, 2, 3] and torch.equal(sum([a, b]).directions[2], s.directions[2])
    assert a.metadata["method"] == "cast"                       # inputs untouched


def test_operator_misuse():
    a, wide = _vec(hidden=16), _vec(hidden=32)
    with pytest.raises(VectorFileError, match=r"different hidden sizes \[16, 32\]"):
        a + wide
    with pytest.raises(TypeError):
        a * a
    with pytest.raises(TypeError):
        a + 1.0
    with pytest.raises(TypeError):
        a * "2"
    with pytest.raises(TypeError):
        a * True
    with pytest.raises(ZeroDivisionError):
        a / 0
    with pytest.raises(VectorFileError, match="must be finite"):
        a * math.inf
    with pytest.raises(VectorFileError, match="combined vector: layer 1 contains NaN or Inf"):
        a * 10.0                                              # 3e38 * 10 overflows float32
    with pytest.raises(VectorFileError, match="at least one vector"):
        combine([])


def test_combining_different_models_warns_and_drops_the_model(caplog):
    a, b = _vec(metadata={"model": "x"}, extremes=False), _vec(seed=3, metadata={"model": "y"}, extremes=False)
    out = combine([(a, 1.0), (b, 1.0)])
    assert "model" not in out.metadata and "different models ['x', 'y']" in caplog.text


_finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@st.composite
def _vectors(draw, hidden):
    layers = draw(st.sets(st.integers(0, 6), min_size=1, max_size=4))
    return SteeringVector({layer: torch.tensor(draw(st.lists(_finite, min_size=hidden, max_size=hidden)))
                           for layer in layers})


def _close(x: SteeringVector, y: SteeringVector, scale: float = 1.0) -> bool:
    """Equal up to float32 rounding of inputs of magnitude ``scale`` (cancellation included)."""
    return x.layers == y.layers and all(torch.allclose(x.directions[i], y.directions[i], rtol=0, atol=1e-5 * scale)
                                        for i in x.layers)


def _magnitude(*vectors: SteeringVector) -> float:
    return 1.0 + max(float(t.abs().max()) for v in vectors for t in v.directions.values())


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6).flatmap(lambda h: st.tuples(_vectors(h), _vectors(h))),
       st.floats(-8, 8, allow_nan=False), st.floats(-8, 8, allow_nan=False))
def test_arithmetic_is_linear(pair, s, t):
    a, b = pair
    m = _magnitude(a, b)
    k = m * max(1.0, abs(s), abs(t))
    assert _close((a + b) * 2, 2 * a + 2 * b, 2 * m)
    assert _close(a - b, a + (-1) * b, m)
    assert _close(a + b, b + a, m)
    assert _close(combine([(a, s), (b, t)]), s * a + t * b, k)
    assert _close((a + b) * s, s * a + s * b, k)
    if abs(s) > 1e-3:
        assert _close((a * s) / s, a, m)
    for layer in set(a.layers) | set(b.layers):                # the union rule, layer by layer
        expected = sum(v.directions[layer].double() * w for v, w in ((a, s), (b, t)) if layer in v.directions)
        assert torch.allclose(combine([(a, s), (b, t)]).directions[layer], expected.float(), rtol=0, atol=1e-5 * k)
