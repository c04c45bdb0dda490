"""`cast-vllm vectors list | inspect | convert | combine`, run through the CLI entry point: what a
user sees, exit codes, and bad input ending as one message with exit code 2 (never a traceback)."""

import json
import math
import pickle
import subprocess
import sys

import pytest
import torch

from cast_vllm.cli import main
from cast_vllm.vector_formats import read_vector, write_vector
from cast_vllm.vector_math import components_of
from cast_vllm.vectors import SteeringVector


def _vec(layers=(1, 2, 5), hidden=8, seed=0, metadata=None) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({layer: torch.randn(hidden, generator=g) for layer in layers}, metadata)


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["vectors", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


@pytest.fixture
def folder(tmp_path):
    """One vector per format, plus a broken file."""
    d = tmp_path / "vecs"
    write_vector(_vec(metadata={"model": "tiny", "method": "cast"}), d / "ours.safetensors")
    write_vector(_vec(seed=1, metadata={"model": "tiny", "method": "cast"}), d / "cvec.gguf")
    write_vector(_vec(seed=2), d / "plain.pt")
    write_vector(_vec(seed=3), d / "sv.pt", "steering-vectors")
    write_vector(_vec(seed=4, metadata={"model_type": "llama"}), d / "repeng.pkl")
    write_vector(_vec(seed=5), d / "ours.gguf")                 # shadowed: the store picks ours.safetensors
    (d / "broken.safetensors").write_bytes(b"\x00" * 3)
    (d / "notes.txt").write_text("not a vector")
    return d


def test_list_shows_every_vector_file_and_what_serve_would_offer(capsys, folder):
    rc, out, err = _run(capsys, "list", folder)
    assert rc == 2 and "broken.safetensors is not a safetensors file" in err   # a broken file fails the listing
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "FORMAT", "LAYERS", "HIDDEN", "MODEL", "METHOD", "SERVED"]
    rows = {(ln.split()[0], ln.split()[1]): ln.split() for ln in lines[1:]}
    assert set(rows) == {("cvec", "gguf"), ("ours", "gguf"), ("ours", "safetensors"), ("plain", "pt"),
                         ("repeng", "repeng-pickle"), ("sv", "steering-vectors")}
    assert rows["ours", "safetensors"] == ["ours", "safetensors", "1-2,5", "(3)", "8", "tiny", "cast", "yes"]
    assert rows["ours", "gguf"][-1] == "no" and rows["cvec", "gguf"][-1] == "yes"
    assert rows["plain", "pt"][-1] == "no" and "pt-import" in rows["plain", "pt"]
    assert "--allow-pickle" in " ".join(rows["repeng", "repeng-pickle"])      # listed, not unpickled


def test_list_json_and_allow_pickle(capsys, folder):
    (folder / "broken.safetensors").unlink()
    rc, out, _ = _run(capsys, "list", folder, "--json", "--allow-pickle")
    assert rc == 0
    rows = {r["file"]: r for r in map(json.loads, out.splitlines())}
    assert rows["repeng.pkl"]["layers"] == [1, 2, 5] and rows["repeng.pkl"]["format"] == "repeng-pickle"
    assert rows["sv.pt"]["format"] == "steering-vectors" and rows["ours.safetensors"]["served"] is True
    assert rows["cvec.gguf"]["model"] == "tiny" and rows["cvec.gguf"]["hidden_size"] == 8


def test_inspect_prints_layers_norms_and_provenance(capsys, tmp_path):
    v = _vec(metadata={"model": "tiny", "method": "cast", "source_task": "movies"})
    write_vector(v, tmp_path / "v.safetensors")
    rc, out, _ = _run(capsys, "inspect", tmp_path / "v.safetensors", "--json")
    assert rc == 0
    info = json.loads(out)
    assert info["format"] == "safetensors" and info["layers"] == [1, 2, 5] and info["hidden_size"] == 8
    assert info["content_hash"] == v.content_hash()
    for layer in v.layers:
        assert math.isclose(info["norms"][str(layer)], float(v.directions[layer].double().norm()), rel_tol=1e-12)
    assert info["metadata"]["source_task"] == "movies" and info["metadata"]["format"] == "cast-vllm/1"
    rc, out, _ = _run(capsys, "inspect", tmp_path / "v.safetensors")
    assert rc == 0 and "layers        1-2,5 (3)" in out and "source_task  movies" in out
    assert f"     5  {float(v.directions[5].norm()):.6g}" in out


def test_convert_through_every_format_keeps_numbers_exactly(capsys, tmp_path):
    v = _vec()
    write_vector(v, tmp_path / "0.gguf")
    chain = [("0.gguf", None), ("1.safetensors", None), ("2.pt", None), ("3.pt", "steering-vectors"),
             ("4.pkl", None), ("5.bin", "gguf"), ("6.pth", None)]
    for (src, _), (dst, to) in zip(chain, chain[1:]):
        from_fmt = ["--from", "gguf"] if src.endswith(".bin") else []
        rc, out, err = _run(capsys, "convert", tmp_path / src, tmp_path / dst, *from_fmt,
                            *(["--to", to] if to else []), "--allow-pickle")
        assert rc == 0, err
        assert f"-> {tmp_path / dst} ({to or read_vector(tmp_path / dst, allow_pickle=True)[1]})" in out
    back, fmt = read_vector(tmp_path / "6.pth")
    assert fmt == "pt" and back.layers == v.layers
    assert all(torch.equal(back.directions[i], v.directions[i]) for i in v.layers)


def test_convert_to_gguf_needs_consent_to_drop_layer_0(capsys, tmp_path):
    write_vector(_vec(layers=(0, 3)), tmp_path / "v.pt")
    rc, _, err = _run(capsys, "convert", tmp_path / "v.pt", tmp_path / "v.gguf")
    assert rc == 2 and "layer 0" in err and "--drop-layer-0" in err and not (tmp_path / "v.gguf").exists()
    rc, out, _ = _run(capsys, "convert", tmp_path / "v.pt", tmp_path / "v.gguf", "--drop-layer-0")
    assert rc == 0 and "layers 3 (1)" in out and read_vector(tmp_path / "v.gguf")[0].layers == [3]


def test_combine_weighs_and_unions_layers(capsys, tmp_path):
    a = _vec(layers=(1, 2), seed=1, metadata={"model": "tiny"})
    b = _vec(layers=(2, 3), seed=2, metadata={"model": "tiny"})
    write_vector(a, tmp_path / "a.gguf")
    write_vector(b, tmp_path / "b.pt")
    rc, out, _ = _run(capsys, "combine", tmp_path / "out.safetensors", f"{tmp_path / 'a.gguf'}:1.5",
                      f"{tmp_path / 'b.pt'}:-0.5")
    assert rc == 0 and "= 1.5 * a.gguf - 0.5 * b.pt: layers 1-3 (3)" in out
    out_v, _ = read_vector(tmp_path / "out.safetensors")
    assert torch.allclose(out_v.directions[1], 1.5 * a.directions[1])
    assert torch.allclose(out_v.directions[2], 1.5 * a.directions[2] - 0.5 * b.directions[2])
    assert torch.allclose(out_v.directions[3], -0.5 * b.directions[3])
    assert out_v.metadata["method"] == "combine"
    assert [(c["source_file"], c["weight"]) for c in components_of(out_v)] == [("a.gguf", 1.5), ("b.pt", -0.5)]
    rc, _, _ = _run(capsys, "combine", tmp_path / "same.pt", tmp_path / "a.gguf")   # weight 1 when left out
    assert rc == 0 and torch.equal(read_vector(tmp_path / "same.pt")[0].directions[2], a.directions[2])


@pytest.mark.parametrize("case", ["hidden", "nan-weight", "inf-weight", "missing", "pickle", "suffix", "no-suffix",
                                  "nan-values", "garbage", "directory", "overflow", "not-a-dir", "bad-combine-out",
                                  "no-file-before-weight"])
def test_bad_input_is_one_message_and_exit_code_2(capsys, tmp_path, case):
    write_vector(_vec(hidden=8), tmp_path / "h8.safetensors")
    write_vector(_vec(hidden=16), tmp_path / "h16.safetensors")
    write_vector(_vec(), tmp_path / "cv.pkl")
    torch.save({1: torch.tensor([1.0, math.nan])}, tmp_path / "nan.pt")
    (tmp_path / "garbage.gguf").write_bytes(b"garbage")
    (tmp_path / "dir.safetensors").mkdir()
    big = SteeringVector({1: torch.full((8,), 3e38)})
    write_vector(big, tmp_path / "big.safetensors")
    argv, message = {
        "hidden": (["combine", "{d}/o.safetensors", "{d}/h8.safetensors", "{d}/h16.safetensors"],
                   "different hidden sizes [8, 16]"),
        "nan-weight": (["combine", "{d}/o.safetensors", "{d}/h8.safetensors:nan"], "the weight must be finite"),
        "inf-weight": (["combine", "{d}/o.safetensors", "{d}/h8.safetensors:-inf"], "the weight must be finite"),
        "missing": (["inspect", "{d}/nope.safetensors"], "does not exist"),
        "pickle": (["convert", "{d}/cv.pkl", "{d}/cv.safetensors"], "loading a pickle can run code"),
        "suffix": (["convert", "{d}/h8.safetensors", "{d}/x.gguf", "--to", "pt"], "means gguf, not pt"),
        "no-suffix": (["convert", "{d}/h8.safetensors", "{d}/x.bin"], "cannot tell the format"),
        "nan-values": (["convert", "{d}/nan.pt", "{d}/x.safetensors"], "NaN or Inf"),
        "garbage": (["inspect", "{d}/garbage.gguf"], "not a readable GGUF file"),
        "directory": (["inspect", "{d}/dir.safetensors"], "is not a file"),
        "overflow": (["combine", "{d}/o.safetensors", "{d}/big.safetensors:2"],
                     "combined vector: layer 1 contains NaN"),
        "not-a-dir": (["list", "{d}/h8.safetensors"], "is not a folder"),
        "bad-combine-out": (["combine", "{d}/o.txt", "{d}/h8.safetensors"], "cannot tell the format"),
        "no-file-before-weight": (["combine", "{d}/o.pt", ":2"], "no file before the weight"),
    }[case]
    argv = [a.format(d=tmp_path) for a in argv]
    rc, out, err = _run(capsys, *argv)
    assert rc == 2 and message in err and err.startswith(f"cast-vllm vectors {argv[0]}: "), err
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "x.safetensors").exists()


def test_unknown_format_names_are_refused_by_the_parser(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["vectors", "convert", "a.pt", "b.pt", "--to", "onnx"])
    assert info.value.code == 2 and "invalid choice: 'onnx'" in capsys.readouterr().err


def test_the_console_script_never_shows_a_traceback(tmp_path):
    """A real process, as a user runs it: a malicious pickle and a damaged file."""
    marker = tmp_path / "planted"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Plant(marker)))
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not really a zip")
    for argv in (["inspect", str(tmp_path / "evil.pkl"), "--allow-pickle"], ["inspect", str(tmp_path / "bad.pt")]):
        proc = subprocess.run([sys.executable, "-m", "cast_vllm.cli", "vectors", *argv], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("cast-vllm vectors inspect: ") and proc.stdout == ""
    assert not marker.exists()


class _Plant:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))
