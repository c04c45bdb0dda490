"""Hostile vector files: uploads and files on disk are parsed by us, so every malformed input
must end as a ``VectorFileError`` naming the problem, never as another exception, a silent
merge of two layers or a reshaped tensor. Hand-made cases first, then property-based ones."""

import json
import re
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from cast_vllm.vectors import (
    MAX_HEADER_BYTES, MAX_LAYERS, MAX_METADATA_BYTES, SteeringVector, VectorFileError,
)

CANONICAL_KEY = re.compile(r"layer\.(0|[1-9][0-9]*)")


def raw_file(header, payload: bytes = b"", header_len: int | None = None) -> bytes:
    """safetensors bytes from any header (dict, str or bytes), without the library's checks."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    n = len(header) if header_len is None else header_len
    return struct.pack("<Q", n) + header + payload


def f32_entry(shape, offset=0):
    size = 4 * int(np.prod(shape))
    return {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}, bytes(size)


def load(data: bytes) -> SteeringVector:
    return SteeringVector.from_safetensors_bytes(data, where="upload")


# ---- layer keys ----------------------------------------------------------------------------

def test_canonical_keys_load():
    v = load(st_save({"layer.0": torch.ones(4), "layer.12": torch.full((4,), 2.0), "layer.1023": torch.ones(4)}))
    assert v.layers == [0, 12, 1023] and torch.equal(v.directions[12], torch.full((4,), 2.0))


@pytest.mark.parametrize("key", ["layer.03", "layer.00", "layer.\u0663", "layer.\uff13", "layer.+3", "layer. 3",
                                 "layer.3 ", "layer.3\n", "layer.-1", "layer.", "Layer.3", "layer.3.0", "layer_3"])
def test_non_canonical_keys_are_refused_by_name(key):
    with pytest.raises(VectorFileError, match=re.escape(repr(key))):
        load(st_save({key: torch.ones(4)}))


def test_zero_padded_and_unicode_keys_no_longer_merge_with_canonical_ones():
    for twin in ("layer.03", "layer.\u0663"):
        with pytest.raises(VectorFileError, match=re.escape(repr(twin))):
            load(st_save({"layer.3": torch.ones(4), twin: torch.zeros(4)}))


def test_layer_index_bound_and_huge_digit_strings():
    with pytest.raises(VectorFileError, match="'layer.1024'.*at most 1023"):
        load(st_save({"layer.1024": torch.ones(4)}))
    with pytest.raises(VectorFileError, match="at most 1023"):   # int() of 5000 digits would raise ValueError
        load(st_save({"layer." + "9" * 5000: torch.ones(4)}))


def test_gguf_direction_names_are_canonical_ascii(tmp_path):
    import gguf

    def write(name, tensors):
        w = gguf.GGUFWriter(str(tmp_path / name), "controlvector")
        for key, arr in tensors.items():
            w.add_tensor(key, arr)
        w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
        return tmp_path / name

    ok = SteeringVector.load(write("ok.gguf", {"direction.3": np.ones(8, np.float32)}))
    assert ok.layers == [3]                           # no cast_vllm.* metadata: a peer file, direction.N = layer N
    for i, key in enumerate(["direction.03", "direction.\u0663", "direction.+3"]):
        path = write(f"bad{i}.gguf", {"direction.3": np.ones(8, np.float32), key: np.zeros(8, np.float32)})
        with pytest.raises(VectorFileError, match=re.escape(repr(key))):
            SteeringVector.load(path)
    with pytest.raises(VectorFileError, match=r"direction.2.*shape \[2, 4\]"):
        SteeringVector.load(write("flat.gguf", {"direction.2": np.ones((2, 4), np.float32)}))


# ---- shapes and dtypes ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", [[2, 32], [1, 64], [64, 1], [], [0], [2, 0]])
def test_only_one_dimensional_non_empty_tensors(shape):
    entry, payload = f32_entry(shape)
    with pytest.raises(VectorFileError, match=r"'layer.0'.*" + re.escape(str(shape))):
        load(raw_file({"layer.0": entry}, payload))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_float_dtypes_are_converted_to_float32(dtype):
    t = torch.tensor([0.5, -2.0, 3.0], dtype=dtype)
    v = load(st_save({"layer.1": t}))
    assert v.directions[1].dtype == torch.float32 and torch.equal(v.directions[1], t.float())


@pytest.mark.parametrize("dtype", ["int32", "uint8", "bool", "float8_e4m3fn", "float8_e5m2"])
def test_other_dtypes_are_refused_by_name(dtype):
    if not hasattr(torch, dtype):
        pytest.skip(f"torch has no {dtype}")
    t = torch.ones(4).to(getattr(torch, dtype))
    with pytest.raises(VectorFileError, match=r"'layer.0' has dtype '\w+'; expected one of F16, BF16, F32, F64"):
        load(st_save({"layer.0": t}))


# ---- header and metadata limits --------------------------------------------------------------

def test_metadata_limit():
    entry, payload = f32_entry([4])
    at_limit = {"k": "x" * (MAX_METADATA_BYTES - 1)}
    assert load(raw_file({"layer.0": entry, "__metadata__": at_limit}, payload)).metadata["k"] == at_limit["k"]
    over = {"k": "x" * MAX_METADATA_BYTES}
    with pytest.raises(VectorFileError, match=f"metadata .* limit is {MAX_METADATA_BYTES}"):
        load(raw_file({"layer.0": entry, "__metadata__": over}, payload))
    multibyte = {"k": "\u00e9" * (MAX_METADATA_BYTES // 2)}          # counted in UTF-8 bytes
    with pytest.raises(VectorFileError, match=f"limit is {MAX_METADATA_BYTES}"):
        load(raw_file({"layer.0": entry, "__metadata__": multibyte}, payload))


def test_header_limit():
    entry, payload = f32_entry([4])
    header = json.dumps({"layer.0": entry}).encode()
    padded = header + b" " * (MAX_HEADER_BYTES + 1 - len(header))   # trailing spaces are legal padding
    with pytest.raises(VectorFileError, match=f"limit is {MAX_HEADER_BYTES}"):
        load(raw_file(padded, payload))
    fits = header + b" " * (MAX_HEADER_BYTES - len(header))
    assert load(raw_file(fits, payload)).layers == [0]


def test_tensor_count_limit():
    with pytest.raises(VectorFileError, match=f"{MAX_LAYERS + 1} tensors.*limit is {MAX_LAYERS}"):
        load(st_save({f"layer.{i}": torch.ones(2) for i in range(MAX_LAYERS + 1)}))
    assert len(load(st_save({f"layer.{i}": torch.ones(2) for i in range(MAX_LAYERS)})).layers) == MAX_LAYERS


@pytest.mark.parametrize("meta", [{"a": 1}, {"a": None}, {"a": ["x"]}, {"a": {"b": "c"}}, {"a": True}])
def test_metadata_values_must_be_strings(meta):
    entry, payload = f32_entry([4])
    with pytest.raises(VectorFileError, match="metadata values must be strings.*'a'"):
        load(raw_file({"layer.0": entry, "__metadata__": meta}, payload))


@pytest.mark.parametrize("header, match", [
    ("[1, 2]", "JSON object"),
    ('{"__metadata__": "x"}', "JSON object"),
    ("{" * 2, "not valid JSON"),
    ("[" * 200_000, "not valid JSON"),                           # RecursionError in json
    (b'{"layer.0": \xff}', "not valid JSON"),                     # not UTF-8
    ('{"layer.0": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
     '"layer.0": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', "twice"),
    ('{"layer.0": [1]}', "'layer.0'"),
    ('{"layer.0": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "__metadata__": {"n": NaN}}',
     "not valid JSON"),
    ("{}", "no tensors"),
])
def test_malformed_headers(header, match):
    with pytest.raises(VectorFileError, match=match):
        load(raw_file(header, bytes(4)))


def test_wrong_offsets_and_lengths():
    entry, payload = f32_entry([4])
    for bad in ([0, 12], [4, 20], [0, 20], [-1, 15], [16, 0]):
        with pytest.raises(VectorFileError):
            load(raw_file({"layer.0": {**entry, "data_offsets": bad}}, payload))
    with pytest.raises(VectorFileError, match="bad header length"):
        load(raw_file({"layer.0": entry}, payload, header_len=10_000))
    with pytest.raises(VectorFileError):
        load(raw_file({"layer.0": entry}, payload + b"trailing"))
    with pytest.raises(VectorFileError, match="too short"):
        load(b"\x01\x00")
    with pytest.raises(VectorFileError, match="bytes"):
        SteeringVector.from_safetensors_bytes("a str, not bytes")


# ---- properties ----------------------------------------------------------------------------

def assert_valid_or_refused(data: bytes) -> None:
    """The contract: a valid vector (finite, 1-D, one size, canonical keys) or a VectorFileError."""
    try:
        v = SteeringVector.from_safetensors_bytes(data)
    except VectorFileError:
        return
    (n,) = struct.unpack("<Q", data[:8])
    keys = {k for k in json.loads(data[8:8 + n]) if k != "__metadata__"}
    assert keys == {f"layer.{i}" for i in v.layers}
    assert all(CANONICAL_KEY.fullmatch(k) for k in keys) and 0 < len(keys) <= MAX_LAYERS
    shapes = {tuple(t.shape) for t in v.directions.values()}
    assert len(shapes) == 1 and len(shapes.pop()) == 1 and v.hidden_size > 0
    assert all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in v.directions.values())
    assert all(isinstance(k, str) and isinstance(val, str) for k, val in v.metadata.items())


PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ITEM_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I32": 4, "I64": 8, "U8": 1, "BOOL": 1, "F8_E4M3": 1,
              "F8_E5M2": 1, "C64": 8}
KEYS = st.one_of(
    st.sampled_from(["layer.0", "layer.1", "layer.12", "layer.03", "layer.\u0663", "layer.+3", "layer. 3",
                     "layer.3\n", "layer.1024", "layer.-1", "weight", "__metadata__", ""]),
    st.integers(0, 1100).map(lambda i: f"layer.{i}"),
    st.text(max_size=10),
)
DTYPES = st.one_of(st.sampled_from([*ITEM_SIZES, "f32", "", "F32 "]), st.integers(-2, 5), st.none(),
                   st.lists(st.just("F32"), max_size=2))
SHAPES = st.one_of(st.lists(st.integers(-2, 40), max_size=3), st.integers(-1, 8), st.none(),
                   st.sampled_from([[True], [1.5], [2 ** 70], ["4"], [[4]]]))
OFFSETS = st.one_of(st.lists(st.integers(-4, 400), max_size=3), st.none(), st.just("0,4"),
                    st.just([0, 2 ** 64 + 4]))
METADATA = st.one_of(
    st.none(), st.just([]), st.just("s"),
    st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=16), st.integers(), st.none(), st.booleans(),
                                                    st.lists(st.text(max_size=3), max_size=2)), max_size=4),
    st.integers(0, 2 * MAX_METADATA_BYTES).map(lambda n: {"big": "x" * n}),
)


def _nbytes(dtype, shape) -> int | None:
    """Bytes the library would expect, or None where the header is not computable."""
    if not isinstance(dtype, str) or dtype not in ITEM_SIZES or not isinstance(shape, list):
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 64 for d in shape):
        return None
    return ITEM_SIZES[dtype] * int(np.prod(shape, dtype=np.int64))


RARELY = st.sampled_from([False] * 7 + [True])   # hypothesis favours small integers: a flag drawn evenly


def _mostly(good, bad):
    """``good`` seven times in eight, else ``bad``: deep checks need mostly-sane headers."""
    return RARELY.flatmap(lambda odd: bad if odd else good)


@st.composite
def generated_files(draw) -> bytes:
    """Headers of every shape. In sane mode fields are mostly valid and offsets consistent, so
    the checks after parsing (sizes, finiteness, limits) are reached; otherwise anything goes.
    Zero or random payloads; honest or wrong lengths."""
    header, payload = {}, b""
    sane = draw(st.booleans())
    hidden = draw(st.integers(1, 6))
    keys = _mostly(st.integers(0, 1030).map(lambda i: f"layer.{i}"), KEYS) if sane else KEYS
    dtypes = _mostly(st.sampled_from(["F32", "F16", "BF16", "F64"]), DTYPES) if sane else DTYPES
    shapes = _mostly(st.just([hidden]), SHAPES) if sane else SHAPES
    metas = _mostly(st.dictionaries(st.text(max_size=8), st.text(max_size=16), max_size=3), METADATA) \
        if sane else METADATA
    for _ in range(draw(st.integers(0 if not sane else 1, 4))):
        key, dtype, shape = draw(keys), draw(dtypes), draw(shapes)
        size = _nbytes(dtype, shape)
        if (sane or draw(st.booleans())) and size is not None:
            offsets = [len(payload), len(payload) + size]
            payload += bytes(size) if draw(st.booleans()) else draw(st.binary(min_size=size, max_size=size))
        else:
            offsets = draw(OFFSETS)
        entry = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        if draw(RARELY):
            entry.pop(draw(st.sampled_from(sorted(entry))))
        header[key] = draw(st.one_of(st.none(), st.integers(), st.text())) if draw(RARELY) else entry
    meta = draw(metas)
    if meta is not None or draw(st.booleans()):
        header["__metadata__"] = meta
    text = json.dumps(header, ensure_ascii=draw(st.booleans())).encode() + b" " * draw(st.integers(0, 8))
    length = draw(st.integers(0, len(text) + 16)) if draw(RARELY) else len(text)
    tail = draw(st.sampled_from([b"\x00", b"junk"])) if draw(RARELY) else b""
    return raw_file(text, payload + tail, header_len=length)


def _valid_files() -> list[bytes]:
    g = torch.Generator().manual_seed(0)
    return [
        st_save({"layer.0": torch.randn(8, generator=g), "layer.5": torch.randn(8, generator=g)},
                metadata={"format": "cast-vllm/1", "model": "tiny", "hidden_size": "8"}),
        st_save({"layer.10": torch.randn(3, generator=g).double()}),
        st_save({"layer.1": torch.randn(4, generator=g).half(), "layer.2": torch.randn(4, generator=g).half()},
                metadata={"method": "test"}),
    ]


VALID = _valid_files()
SWAPS = [(b'"F32"', b'"F64"'), (b'"F32"', b'"I32"'), (b'"F16"', b'"U8"'), (b'"F64"', b'"F32"'), (b"[8]", b"[2,4]"),
         (b"[8]", b"[0]"), (b"[4]", b"[1,4]"), (b"layer.1", b"layer.01"), (b"layer.5", b"layer.\xd9\xa3"),
         (b"layer.0", b"layer.1"), (b'"format"', b'"formax"'), (b'"tiny"', b"1234"), (b"__metadata__", b"__metadata_"),
         (b"[0,", b"[4,"), (b"data_offsets", b"data_offset")]


@st.composite
def mutated_files(draw) -> bytes:
    """A valid file with header text swapped, bytes flipped, cut or inserted, or a lying length."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["swap", "flip", "truncate", "insert", "length"]))
        if kind == "swap" and len(data) >= 8:
            old, new = draw(st.sampled_from(SWAPS))
            (n,) = struct.unpack("<Q", data[:8])
            head = bytes(data[8:8 + n]).replace(old, new, 1)
            keep = draw(st.booleans())                 # keep the stated length, or fix it up
            data = bytearray(struct.pack("<Q", n if keep else len(head)) + head + data[8 + n:])
        elif kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            data = data[:draw(st.integers(0, len(data)))]
        elif kind == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "length" and len(data) >= 8:
            data[:8] = struct.pack("<Q", draw(st.integers(0, 2 ** 64 - 1)))
    return bytes(data)


@PROPERTY
@given(st.one_of(st.binary(max_size=256),
                 st.builds(lambda n, rest: struct.pack("<Q", n) + rest, st.integers(0, 300), st.binary(max_size=300))))
def test_random_bytes(data):
    assert_valid_or_refused(data)


@PROPERTY
@given(generated_files())
def test_generated_headers(data):
    assert_valid_or_refused(data)


@PROPERTY
@given(mutated_files())
def test_mutated_valid_files(data):
    assert_valid_or_refused(data)


def test_the_generators_reach_both_outcomes():
    """Guards the properties above against vacuity: the generators yield accepted files too."""
    accepted = refused = 0

    @settings(max_examples=200, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.one_of(generated_files(), mutated_files()))
    def count(data):
        nonlocal accepted, refused
        try:
            SteeringVector.from_safetensors_bytes(data)
            accepted += 1
        except VectorFileError:
            refused += 1

    count()
    assert accepted >= 5 and refused >= 50
