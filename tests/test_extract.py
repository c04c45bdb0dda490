"""Vector building end to end: the pipeline's numbers recomputed by hand, determinism, several
sources, file round trips, the CLI (report, resume, refusals) and one run on the default model."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cast_vllm.method.activations import HFActivationReader, ReaderConfig, encode_prompts, load_tokenizer
from cast_vllm.method.cast_math import (
    aggregate_differences, assign_balanced_demos, assign_demos, label_balanced_weights, random_control_vector,
    relative_to_residual, similarity_weights, unique_names,
)
from cast_vllm.method.options import ExtractionError, ExtractOptions
from cast_vllm.method.pipeline import extract, extract_vector
from cast_vllm.method.tasks import build_prompt, load_task
from cast_vllm.vectors import SteeringVector

SMALL = dict(num_selected=6, num_demos=2, pool_size=30, layers="1-3", backend="hf", shard_size=16)


@pytest.fixture(scope="module")
def movies(shared_data):
    return str(shared_data / "sentiment" / "movies.jsonl")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return str(tiny_model_dir("llama"))


@pytest.fixture(scope="module")
def hf_result(tiny, movies):
    return extract(ExtractOptions(model=tiny, sources=[movies], tasks=["sentiment"], **SMALL))


def test_vector_is_mean_of_few_minus_zero_shot(hf_result, tiny, movies):
    vec = hf_result.vector
    meta = vec.metadata
    assert vec.layers == [1, 2, 3] and vec.hidden_size == 64
    assert meta["method"] == "cast" and meta["task_format"] == "sentiment" and meta["selection"] == "ideal"
    assert meta["source"] == movies and meta["hidden_size"] == "64" and meta["num_layers"] == "4"
    assert json.loads(meta["layers"]) == [1, 2, 3] and meta["num_demos"] == "2" and meta["seed"] == "0"
    assert meta["model_path"] == tiny and meta["created"]
    selected, demos = json.loads(meta["selected_ids"]), json.loads(meta["demo_ids"])
    assert len(selected) == 6 and len(set(selected)) == 6
    assert all(len(d) == 2 and sid not in d and set(d) <= set(selected) for sid, d in zip(selected, demos))
    # recompute from the recorded provenance with a fresh reader
    by_id = {it.id: it for it in load_task(movies, "sentiment")}
    tok = load_tokenizer(tiny)
    zero = [build_prompt(by_id[s], [], "sentiment") for s in selected]
    few = [build_prompt(by_id[s], [by_id[d] for d in ds], "sentiment") for s, ds in zip(selected, demos)]
    reader = HFActivationReader(ReaderConfig(tiny, (1, 2, 3), backend="hf"))
    diff = reader.read(encode_prompts(tok, few)) - reader.read(encode_prompts(tok, zero))
    for j, layer in enumerate([1, 2, 3]):
        np.testing.assert_allclose(vec.directions[layer].numpy(), diff[:, j].mean(0), rtol=1e-4, atol=1e-5)
    assert all(torch.isfinite(t).all() and t.norm() > 0 for t in vec.directions.values())


def test_same_seed_same_vector_other_rules_other_samples(hf_result, tiny, movies):
    again = extract(ExtractOptions(model=tiny, sources=[movies], tasks=["sentiment"], **SMALL))
    assert again.vector.content_hash() == hf_result.vector.content_hash()
    picks = {json.dumps(json.loads(hf_result.vector.metadata["selected_ids"]))}
    for rule in ("random", "kmeans"):
        r = extract(ExtractOptions(model=tiny, sources=[movies], tasks=["sentiment"], selection=rule, **SMALL))
        assert r.vector.metadata["selection"] == rule
        picks.add(json.dumps(json.loads(r.vector.metadata["selected_ids"])))
    assert len(picks) == 3


def test_vllm_backend_gives_the_same_vector(hf_result, tiny, movies):
    opts = {**SMALL, "backend": "vllm"}
    r = extract(ExtractOptions(model=tiny, sources=[movies], tasks=["sentiment"], kv_cache_bytes=64 << 20,
                               max_model_len=512, **opts))
    assert r.vector.metadata["selected_ids"] == hf_result.vector.metadata["selected_ids"]
    for layer in (1, 2, 3):
        a, b = r.vector.directions[layer], hf_result.vector.directions[layer]
        assert (a - b).abs().max() / b.abs().max() < 1e-4


def test_several_sources_weighted_by_target_similarity(tiny, movies, shared_data):
    tweets, amazon = str(shared_data / "sentiment/tweets.jsonl"), str(shared_data / "sentiment/amazon.jsonl")
    r = extract(ExtractOptions(model=tiny, sources=[movies, tweets], tasks=["sentiment"], target=amazon,
                               target_size=20, **SMALL))
    assert set(r.weights) == {"movies", "tweets"}
    w = {n: np.array(v) for n, v in r.weights.items()}
    np.testing.assert_allclose(w["movies"] + w["tweets"], 1.0)
    for j, layer in enumerate(r.layers):
        expect = w["movies"][j] * r.sources[0].directions[layer] + w["tweets"][j] * r.sources[1].directions[layer]
        np.testing.assert_allclose(r.vector.directions[layer].numpy(), expect, rtol=1e-5, atol=1e-6)
    assert json.loads(r.vector.metadata["source"]) == [movies, tweets]
    assert set(json.loads(r.vector.metadata["source_weights"])) == {"movies", "tweets"}


def test_aggregate_and_weights_math():
    d = np.random.default_rng(0).normal(size=(1, 2, 8))
    same = np.repeat(d, 5, axis=0)                           # identical differences: pca == mean
    np.testing.assert_allclose(aggregate_differences(same, "pca"), d[0], rtol=1e-5)
    np.testing.assert_allclose(aggregate_differences(-same, "pca"), -d[0], rtol=1e-5)   # sign follows the mean
    t = np.ones((2, 4))
    w = similarity_weights({"a": t.copy(), "b": -t}, t)
    np.testing.assert_allclose(w["a"], 1.0)
    np.testing.assert_allclose(w["b"], 0.0)
    eq = similarity_weights({"a": t, "b": t}, None)
    np.testing.assert_allclose(eq["a"], 0.5)
    with pytest.raises(ExtractionError, match="similarity threshold"):
        similarity_weights({"a": -t}, t, threshold=0.5)
    demos = assign_demos(6, 3, seed=1)
    assert demos == assign_demos(6, 3, seed=1) and all(i not in d and len(set(d)) == 3 for i, d in enumerate(demos))


@settings(max_examples=60, deadline=None)
@given(labels=st.lists(st.sampled_from("ABCD"), min_size=3, max_size=20), num_demos=st.integers(1, 6),
       seed=st.integers(0, 5))
def test_balanced_demos_cover_labels_evenly(labels, num_demos, seed):
    if num_demos >= len(labels):
        with pytest.raises(ExtractionError, match="num_demos must be in"):
            assign_balanced_demos(labels, num_demos, seed)
        return
    demos = assign_balanced_demos(labels, num_demos, seed)
    assert demos == assign_balanced_demos(labels, num_demos, seed)
    for i, d in enumerate(demos):
        assert len(d) == num_demos == len(set(d)) and i not in d
        counts = {k: sum(labels[j] == k for j in d) for k in set(labels)}
        available = {k: sum(labels[j] == k for j in range(len(labels)) if j != i) for k in counts}
        # no label is shown twice more than another that still had members to show
        for a in counts:
            for b in counts:
                if counts[a] > counts[b] + 1:
                    assert counts[b] == available[b], (labels, i, d)
    w = label_balanced_weights(labels)
    assert w.sum() == pytest.approx(1.0) and (w > 0).all()
    for k in set(labels):
        assert w[[j for j, x in enumerate(labels) if x == k]].sum() == pytest.approx(1 / len(set(labels)))


@settings(max_examples=60, deadline=None)
@given(norms=st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 50.0)), min_size=1, max_size=8),
       residual=st.floats(0.5, 500.0),
       growth=st.floats(1.0, 3.0), seed=st.integers(0, 3))
def test_relative_to_residual_gives_every_layer_one_share_of_its_stream(norms, residual, growth, seed):
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(len(norms), 6))
    dirs *= (np.array(norms) / np.linalg.norm(dirs, axis=1))[:, None]
    res = residual * growth ** np.arange(len(norms))
    live = np.array(norms) > 0
    if not live.any():
        with pytest.raises(ExtractionError, match="zero at every layer"):
            relative_to_residual(dirs, res)
        return
    out = relative_to_residual(dirs, res)
    shares = np.linalg.norm(out, axis=1) / res
    expected = np.median((np.array(norms) / res)[live])
    np.testing.assert_allclose(shares[live], expected, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(out[~live], 0.0)
    for i in np.nonzero(live & (np.linalg.norm(out, axis=1) > 0))[0]:   # directions kept, only sizes change
        cos = out[i] @ dirs[i] / (np.linalg.norm(out[i]) * np.linalg.norm(dirs[i]))
        assert cos == pytest.approx(1.0, abs=1e-5)


def test_relative_to_residual_refuses_bad_norms_and_names_are_unique():
    d = np.ones((3, 4))
    for bad in (np.array([1.0, 0.0, 1.0]), np.array([1.0, np.nan, 1.0]), np.ones(2)):
        with pytest.raises(ExtractionError):
            relative_to_residual(d, bad)
    assert unique_names(["movies", "tweets", "movies"]) == ["movies#0", "tweets", "movies#2"]
    assert unique_names(["a", "b"]) == ["a", "b"]


def test_weighted_aggregate():
    d = np.random.default_rng(1).normal(size=(4, 2, 8))
    w = np.array([0.5, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(aggregate_differences(d, "mean", w), d[:2].mean(0), rtol=1e-6)
    np.testing.assert_allclose(aggregate_differences(d, "mean", np.full(4, 0.25)), aggregate_differences(d), rtol=1e-6)
    for bad in ([1.0, 1.0, 0.0, 0.0], [0.5, 0.5], [1.5, -0.5, 0.0, 0.0]):
        with pytest.raises(ExtractionError, match="weights must be 4 non-negative numbers summing to 1"):
            aggregate_differences(d, "mean", np.array(bad))


def test_balanced_target_aware_extraction_recomputes_by_hand(tiny, movies, shared_data):
    """``ideal_target`` with ``balance_labels``: the picks differ from plain IDEAL's, the demos
    are label-balanced, and the vector is the label-weighted mean of few- minus zero-shot."""
    tweets = str(shared_data / "sentiment/tweets.jsonl")
    r = extract(ExtractOptions(model=tiny, sources=[movies], tasks=["sentiment"], selection="ideal_target",
                               target=tweets, target_size=20, balance_labels=True, **SMALL))
    meta = r.vector.metadata
    assert meta["selection"] == "ideal_target" and meta["balance_labels"] == "true"
    plain = extract(ExtractOptions(model=tiny, sources=[movies], tasks=["sentiment"], **SMALL))
    assert meta["selected_ids"] != plain.vector.metadata["selected_ids"]
    selected, demos = json.loads(meta["selected_ids"]), json.loads(meta["demo_ids"])
    by_id = {it.id: it for it in load_task(movies, "sentiment")}
    labels = [by_id[s].answer for s in selected]
    for sid, ds in zip(selected, demos):
        shown = {by_id[d].answer for d in ds}
        others = {by_id[x].answer for x in selected if x != sid}
        assert len(shown) == min(len(ds), len(others))
    tok = load_tokenizer(tiny)
    zero = [build_prompt(by_id[s], [], "sentiment") for s in selected]
    few = [build_prompt(by_id[s], [by_id[d] for d in ds], "sentiment") for s, ds in zip(selected, demos)]
    reader = HFActivationReader(ReaderConfig(tiny, (1, 2, 3), backend="hf"))
    diff = reader.read(encode_prompts(tok, few)) - reader.read(encode_prompts(tok, zero))
    w = label_balanced_weights(labels)
    for j, layer in enumerate([1, 2, 3]):
        np.testing.assert_allclose(r.vector.directions[layer].numpy(), np.einsum("s,sh->h", w, diff[:, j]),
                                   rtol=1e-4, atol=1e-5)


def test_random_control_keeps_norms(hf_result):
    ctrl = random_control_vector(hf_result.vector, seed=3)
    for layer, v in hf_result.vector.directions.items():
        assert torch.isclose(ctrl.directions[layer].norm(), v.norm(), rtol=1e-5)
        assert torch.nn.functional.cosine_similarity(ctrl.directions[layer], v, dim=0).abs() < 0.6
    assert ctrl.metadata["method"] == "random-control"


def test_file_round_trips(hf_result, tmp_path):
    v = hf_result.vector
    v.save(tmp_path / "v.safetensors")
    v.save_gguf(tmp_path / "v.gguf")
    a, b = SteeringVector.load(tmp_path / "v.safetensors"), SteeringVector.load(tmp_path / "v.gguf")
    assert a.content_hash() == b.content_hash() == v.content_hash()
    assert a.metadata["selected_ids"] == v.metadata["selected_ids"] == b.metadata["selected_ids"]


def test_bad_options_are_refused(tiny, movies, tmp_path):
    with pytest.raises(ExtractionError, match="num-demos must be in"):
        extract(ExtractOptions(model=tiny, sources=[movies], **{**SMALL, "num_demos": 6}))
    with pytest.raises(ExtractionError, match="ideal_target measures influence on the target: give --target"):
        extract(ExtractOptions(model=tiny, sources=[movies], **{**SMALL, "selection": "ideal_target"}))
    with pytest.raises(ExtractionError, match="fewer than --num-selected"):
        extract(ExtractOptions(model=tiny, sources=[movies], **{**SMALL, "pool_size": 4}))
    with pytest.raises(ValueError, match="layer 9 out of range"):
        extract(ExtractOptions(model=tiny, sources=[movies], **{**SMALL, "layers": "9"}))
    with pytest.raises(ValueError, match="neither a folder .*, a hub id .* nor an embedded model"):
        extract(ExtractOptions(model=str(tmp_path / "none"), sources=[movies], **SMALL))


def test_cli_extract_report_resume(tiny, movies, shared_data, tmp_path, capsys, caplog):
    from cast_vllm.cli import main

    out = tmp_path / "v.safetensors"
    args = ["extract", "--model", tiny, "--source", movies, "--task", "sentiment", "--out", str(out),
            "--gguf", str(tmp_path / "v.gguf"), "--layers", "1-3", "--num-selected", "6", "--num-demos", "2",
            "--pool-size", "30", "--backend", "hf", "--shard-size", "8", "--report", str(tmp_path / "rep"),
            "--compare", f"{shared_data / 'function_vectors/antonym.json'}:pairs", "--keep-checkpoints"]
    assert main(args) == 0
    v = SteeringVector.load(out)
    assert v.layers == [1, 2, 3] and v.metadata["method"] == "cast"
    assert SteeringVector.load(tmp_path / "v.gguf").content_hash() == v.content_hash()
    for name in ("layer_norms.png", "similarity_by_layer.png", "similarity_layer2.png"):
        assert (tmp_path / "rep" / name).read_bytes()[:4] == b"\x89PNG"
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert set(report["mean_cosine"]) == {"movies", "antonym", "movies | antonym"}
    assert report["in_vector"] == ["movies"]
    ckpt = tmp_path / "v.safetensors.ckpt"
    assert len(list(ckpt.glob("shard-*.npy"))) > 0
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(args[:-1]) == 0                      # rerun: every shard comes from the checkpoint
    assert any("0 computed" in r.getMessage() for r in caplog.records)
    assert SteeringVector.load(out).content_hash() == v.content_hash()
    assert not ckpt.exists()                             # removed after success without --keep-checkpoints
    capsys.readouterr()
    assert main(["extract", "--model", tiny, "--source", movies, "--task", "regression", "--out", str(out)]) == 2
    assert "unknown task 'regression'" in capsys.readouterr().err
    assert main(["extract", "--model", tiny, "--source", movies, "--task", "sentiment", "--out", "v.pt"]) == 2
    assert "--out must end in .safetensors or .gguf" in capsys.readouterr().err


def test_cli_extract_keeps_a_foreign_checkpoint_dir_and_recomputes_broken_shards(tiny, movies, tmp_path, caplog):
    """--checkpoint-dir may be a folder of the user's: only our shards are removed at the end
    (the whole folder used to be). Empty and cut shards are recomputed: same vector."""
    from cast_vllm.cli import main

    ckpt = tmp_path / "work"
    ckpt.mkdir()
    (ckpt / "notes.txt").write_text("the user's")
    out = tmp_path / "v.safetensors"
    args = ["extract", "--model", tiny, "--source", movies, "--task", "sentiment", "--out", str(out),
            "--layers", "2", "--num-selected", "4", "--num-demos", "1", "--pool-size", "12", "--backend", "hf",
            "--shard-size", "4", "--checkpoint-dir", str(ckpt)]
    assert main(args + ["--keep-checkpoints"]) == 0
    clean = SteeringVector.load(out).content_hash()
    shards = sorted(ckpt.glob("shard-*.npy"))
    assert len(shards) >= 3
    shards[0].write_bytes(b"")
    shards[1].write_bytes(shards[1].read_bytes()[:-7])
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(args) == 0
    assert any("2 computed" in r.getMessage() for r in caplog.records)
    assert SteeringVector.load(out).content_hash() == clean
    assert sorted(p.name for p in ckpt.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_default_model_on_movies(movies, tmp_path):
    """Integration: SmolLM2-135M through the vLLM probe on the real movie snippets."""
    vec = extract_vector("smollm2-135m", movies, "sentiment", out=tmp_path / "movies.safetensors",
                         layers="5-10", num_selected=8, num_demos=2, pool_size=32)
    loaded = SteeringVector.load(tmp_path / "movies.safetensors")
    assert loaded.layers == list(range(5, 11)) and loaded.hidden_size == 576
    assert loaded.metadata["model"] == "smollm2-135m" and loaded.metadata["num_layers"] == "30"
    assert loaded.metadata["backend"] == "vllm" and len(json.loads(loaded.metadata["selected_ids"])) == 8
    assert all(torch.isfinite(t).all() and 0 < t.norm() < 1e4 for t in loaded.directions.values())
    assert loaded.content_hash() == vec.content_hash()
