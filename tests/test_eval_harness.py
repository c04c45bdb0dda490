"""The evaluation protocol's mechanics on a tiny random Llama through the real steering engine.

One engine for the module. The tiny model's answers are noise; what is checked is the
protocol: disjoint splits, selection on dev only, identical test items for every method, the
JSON schema and the significance tests.
"""

from __future__ import annotations

import json

import pytest
from tiny_models import write_sentiment_jsonl

from cast_vllm.evaluation.config import EvalConfig, EvalConfigError
from cast_vllm.evaluation.engine import EvalEngine
from cast_vllm.evaluation.methods import DERIVED_METHODS, METHODS, MethodError
from cast_vllm.evaluation.protocol import evaluate
from cast_vllm.evaluation.report import render_markdown, write_report
from cast_vllm.evaluation.splits import EvalDataError, normalise_text

@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    eng = EvalEngine(str(tiny_model_dir("llama")), max_model_len=512)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-data")
    src = write_sentiment_jsonl(root / "src.jsonl", 30, 1000)
    tgt = write_sentiment_jsonl(root / "tgt.jsonl", 45, 2000)
    extra = write_sentiment_jsonl(root / "extra.jsonl", 30, 3000)
    pairs = root / "pairs.json"
    pairs.write_text(json.dumps([{"input": f"w{i}", "output": f"x{i % 9}y{i}"} for i in range(40)]))
    return {"src": src, "tgt": tgt, "extra": extra, "pairs": pairs, "root": root}


def _config(data, **kw):
    base = dict(model="unused", source=str(data["src"]), target=str(data["tgt"]), task="sentiment", seeds=2,
                n_test=12, n_dev=8, pool_size=16, num_selected=6, num_demos=2, icl_shots=(1, 2),
                alphas=(1.0, 2.0), layer_fractions=(0.25, 0.5), layer_width=1, latency_items=8, latency_batch=4,
                latency_rounds=1, name="tiny")
    base.update(kw)
    return EvalConfig(**base)


def _run(engine, data, tiny_model_dir, **kw):
    cfg = _config(data, model=str(tiny_model_dir("llama")), **kw)
    start = len(engine.audit)
    result = evaluate(cfg, engine=engine, progress=False)
    return result, engine.audit[start:]


@pytest.fixture(scope="module")
def full_run(engine, data, tiny_model_dir):
    return _run(engine, data, tiny_model_dir, calibration="dev")


def test_result_schema_is_complete(full_run):
    result, _ = full_run
    json.dumps(result)                                         # JSON-ready
    for key in ("model", "source", "target", "n_test", "seeds", "methods", "chosen", "significance"):
        assert key in result
    assert result["n_test"] == 12 and result["seeds"] == 2 and result["scoring"] == "labels"
    assert set(result["methods"]) == set(METHODS)
    for name, entry in result["methods"].items():
        assert 0.0 <= entry["accuracy"] <= 1.0, name
        assert entry["accuracy_std"] >= 0.0
        assert entry["latency_ms_per_query"] > 0
        assert set(entry["label_shares"]) <= {"positive", "negative"}
        assert sum(entry["label_shares"].values()) == pytest.approx(1.0)
        assert 0.0 <= entry["accuracy_calibrated"] <= 1.0
    chosen = result["chosen"]
    assert set(chosen) == {"layers", "alpha", "mode", "positions"}
    assert chosen["alpha"] in (1.0, 2.0) and chosen["mode"] in ("norm_preserving", "add")
    assert chosen["positions"] in ("last_prompt", "all")
    # seeds: steered methods have one accuracy per seed, except mean_diff (the whole pool)
    assert len(result["methods"]["cast"]["accuracy_per_seed"]) == 2
    assert len(result["methods"]["random_vector"]["accuracy_per_seed"]) == 2
    assert len(result["methods"]["mean_diff"]["accuracy_per_seed"]) == 1
    assert result["methods"]["icl"]["chosen"]["k"] in (1, 2)


def test_significance_against_zero_shot(full_run):
    result, _ = full_run
    assert set(result["significance"]) == set(METHODS) - {"zero_shot"}
    zero = result["methods"]["zero_shot"]["correct"][0]
    for name, sig in result["significance"].items():
        assert 0.0 <= sig["p_bootstrap"] <= 1.0
        assert all(0.0 <= p <= 1.0 for p in sig["p_mcnemar_per_seed"])
        entry = result["methods"][name]
        mean = sum(sum(c) for c in entry["correct"]) / (len(entry["correct"]) * len(zero))
        assert sig["delta"] == pytest.approx(mean - sum(zero) / len(zero))
        for run, m in zip(entry["correct"], entry["vs_zero_shot"]["mcnemar"]):
            assert m["only_method"] == sum(1 for a, b in zip(run, zero) if a and not b)


def test_splits_are_disjoint_and_balanced(full_run, data):
    result, _ = full_run
    dev, test = result["splits"]["dev_ids"], result["splits"]["test_ids"]
    assert len(dev) == 8 and len(test) == 12 and not set(dev) & set(test)
    labels = {json.loads(line)["id"]: json.loads(line)["rating"] > 0 for line in data["tgt"].read_text().splitlines()}
    assert sum(labels[i] for i in test) == 6                    # 2:1 file, balanced test part


def test_calibrated_zero_shot_is_zero_shot_with_the_dev_label_prior_removed(full_run):
    result, _ = full_run
    zero, calibrated = result["methods"]["zero_shot"], result["methods"]["calibrated_zero_shot"]
    assert calibrated["accuracy"] == pytest.approx(zero["accuracy_calibrated"])
    assert calibrated["latency_ms_per_query"] == zero["latency_ms_per_query"]
    assert "calibrated_zero_shot" in result["significance"]       # paired against zero-shot like every method
    # a different answer on some item exactly where the two disagree
    flips = sum(a != b for a, b in zip(calibrated["correct"][0], zero["correct"][0]))
    assert abs(calibrated["accuracy"] - zero["accuracy"]) * len(zero["correct"][0]) <= flips


def test_every_method_sees_the_identical_test_items(full_run):
    result, audit = full_run
    test_ids = result["splits"]["test_ids"]
    test_calls = [a for a in audit if a.phase == "test"]
    # calibrated zero-shot is scored from zero-shot's answers: no engine call of its own
    assert {a.method for a in test_calls} == set(METHODS) - set(DERIVED_METHODS)
    for a in test_calls:
        n_runs = len(result["methods"][a.method]["correct"])
        assert a.item_ids == test_ids * n_runs, a.method     # same items, same order, every seed
    for entry in result["methods"].values():
        assert all(len(c) == len(test_ids) for c in entry["correct"])


def test_no_test_item_reaches_hyper_parameter_selection(full_run, data):
    result, audit = full_run
    test_ids, dev_ids = set(result["splits"]["test_ids"]), set(result["splits"]["dev_ids"])
    texts = {json.loads(line)["id"]: json.loads(line)["text"] for line in data["tgt"].read_text().splitlines()}
    test_texts = [texts[i] for i in test_ids]
    dev_calls = [a for a in audit if a.phase == "dev"]
    assert dev_calls and {a.method for a in dev_calls} >= {"zero_shot", "icl", "target_icl", "cast"}
    for a in dev_calls:
        assert set(a.item_ids) <= dev_ids, a.method
        for prompt in a.prompts:
            assert not any(t in prompt for t in test_texts), (a.method, prompt)
    # target_icl test prompts: demonstrations come from dev only
    for a in audit:
        if a.phase == "test" and a.method == "target_icl":
            for item_id, prompt in zip(a.item_ids, a.prompts):
                others = [texts[i] for i in test_ids if i != item_id]
                assert not any(t in prompt for t in others)
                assert any(texts[d] in prompt for d in dev_ids)
    # the search scored only dev, and the chosen setting is the best it scored
    trace = result["search"]["traces"]["cast/s0"]
    best = max(trace, key=lambda r: (round(r["dev_accuracy"], 9), r["dev_margin"]))
    assert {k: best[k] for k in ("layers", "alpha", "mode", "positions")} == result["chosen"]
    assert result["methods"]["cast"]["dev_accuracy"] == pytest.approx(best["dev_accuracy"])


def test_in_domain_source_pool_excludes_target_dev_and_test(engine, data, tiny_model_dir):
    result, _ = _run(engine, data, tiny_model_dir, source=str(data["tgt"]), methods="zero_shot,cast,mean_diff",
                     seeds=1, latency_items=0)
    held_out = set(result["splits"]["dev_ids"]) | set(result["splits"]["test_ids"])
    assert result["source_pool"]["excluded_overlapping"] == len(held_out)
    for name, vec in result["vectors"].items():
        assert not set(vec["sample_ids"]) & held_out, name
    assert result["methods"]["zero_shot"]["latency_ms_per_query"] is None


def test_generation_scored_pairs_task(engine, data, tiny_model_dir):
    result, audit = _run(engine, data, tiny_model_dir, source=str(data["pairs"]), target=str(data["pairs"]),
                         task="pairs", methods="zero_shot,icl,cast", seeds=1, max_new_tokens=4, latency_items=0)
    assert result["scoring"] == "generation" and result["labels"] is None
    for entry in result["methods"].values():
        assert 0.0 <= entry["accuracy"] <= 1.0
        assert len(entry["examples"]) == 5 and all("output" in e for e in entry["examples"])
        assert sum(entry["label_shares"].values()) == pytest.approx(1.0)


def test_report_renders_table_and_png(full_run, tmp_path):
    result, _ = full_run
    other = dict(result, name="in->in", in_domain=True)
    suite = {"model": "tiny", "pairs": [result, other], "seconds": 1.0}
    text = render_markdown(suite)
    assert "| target (source) |" in text and "**average (1 cross-task)**" in text
    assert "(in-domain reference)" in text and "Goal check" in text
    (tmp_path / "transfer_notes.md").write_text("## What we learned\nnotes here\n")
    write_report(suite, tmp_path / "t.md", tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 10_000
    assert (tmp_path / "t.md").read_text().rstrip().endswith("notes here")


def test_bad_configurations_are_refused_with_a_reason(engine, data, tiny_model_dir):
    with pytest.raises(MethodError, match="unknown method"):
        _config(data, methods="zero_shot,magic").validate()
    with pytest.raises(EvalConfigError, match="does not exist"):
        _config(data, target=str(data["root"] / "missing.jsonl")).validate()
    with pytest.raises(EvalConfigError, match="calibration"):
        _config(data, calibration="platt").validate()
    with pytest.raises(EvalDataError, match="fewer than n_dev"):
        evaluate(_config(data, model=str(tiny_model_dir("llama")), n_test=200), engine=engine, progress=False)
    with pytest.raises(EvalConfigError, match="label scoring needs at most"):
        evaluate(_config(data, model=str(tiny_model_dir("llama")), source=str(data["pairs"]),
                         target=str(data["pairs"]), task="pairs", scoring="labels"), engine=engine, progress=False)


def test_cli_refuses_incomplete_arguments(capsys):
    from cast_vllm.cli import main

    assert main(["eval", "--source", "a.jsonl"]) == 2
    assert "--target, --task required" in capsys.readouterr().err
    assert main(["eval", "--source", "a.jsonl", "--target", "b.jsonl", "--task", "sentiment",
                 "--methods", "cast,nope"]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_texts_are_normalised_for_overlap():
    assert normalise_text("  Good   Film ") == normalise_text("good film")


def test_cast_variants_search_their_own_settings_on_dev(engine, data, tiny_model_dir):
    """The issue-13 variants run only when named, each with its own dev search (even when the
    ablations borrow CAST's setting), and target-aware selection reads the dev queries only."""
    result, audit = _run(engine, data, tiny_model_dir, methods="zero_shot,cast,cast_target_aware,cast_balanced",
                         seeds=1, latency_items=0, ablation_settings="cast")
    assert set(result["methods"]) == {"zero_shot", "cast", "cast_target_aware", "cast_balanced"}
    assert {"cast/s0", "cast_target_aware/s0", "cast_balanced/s0"} <= set(result["search"]["traces"])
    vecs = result["vectors"]
    assert vecs["cast_target_aware/s0"]["sample_ids"] != vecs["cast/s0"]["sample_ids"]
    assert vecs["cast_balanced/s0"]["sample_ids"] == vecs["cast/s0"]["sample_ids"]    # same picks, other demos
    dev_ids = set(result["splits"]["dev_ids"])
    assert all(set(a.item_ids) <= dev_ids for a in audit if a.phase == "dev")
    assert not {"cast_target_aware", "cast_balanced"} & set(_config(data).methods)


def test_relative_and_multi_source_variants(engine, data, tiny_model_dir):
    """cast_relative resizes CAST's vector layer by layer to one share of the target's residual
    norm; cast_multi_source sums the sources' CAST vectors with per-layer similarity weights
    (recorded, summing to 1), drawing samples from every source."""
    result, _ = _run(engine, data, tiny_model_dir, methods="zero_shot,cast,cast_relative,cast_multi_source",
                     seeds=1, latency_items=0, extra_sources=[str(data["extra"])])
    assert {"cast_relative", "cast_multi_source"} <= set(result["methods"])
    assert {"cast_relative/s0", "cast_multi_source/s0"} <= set(result["search"]["traces"])
    vecs = result["vectors"]
    assert vecs["cast_relative/s0"]["sample_ids"] == vecs["cast/s0"]["sample_ids"]
    multi = vecs["cast_multi_source/s0"]
    weights = multi["source_weights"]
    assert set(weights) == {"src", "extra"}
    per_layer = [sum(w) for w in zip(*weights.values())]
    assert per_layer == pytest.approx([1.0] * len(per_layer))
    assert {i.split(":")[0] for i in multi["sample_ids"]} == {"src", "extra"}


def test_multi_source_configuration_is_checked(data):
    with pytest.raises(EvalConfigError, match="needs extra_sources"):
        _config(data, methods="zero_shot,cast_multi_source").validate()
    with pytest.raises(EvalConfigError, match="must differ"):
        _config(data, methods="zero_shot,cast_multi_source", extra_sources=[str(data["src"])]).validate()
    with pytest.raises(EvalConfigError, match="extra source file .* does not exist"):
        _config(data, methods="zero_shot,cast_multi_source",
                extra_sources=[str(data["root"] / "missing.jsonl")]).validate()
    with pytest.raises(EvalConfigError, match="similarity_threshold"):
        _config(data, similarity_threshold=1.5).validate()
