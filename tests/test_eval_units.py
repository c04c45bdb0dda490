"""Evaluation harness pieces that need no engine: splits, pools, scoring, search, methods, tests."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from cast_vllm.evaluation import scoring
from cast_vllm.evaluation.methods import MethodError, cross_task_prompt, parse_methods, retrieve
from cast_vllm.evaluation.search import CoordinateSearch, DevScore, SearchError, SearchSpace, Setting
from cast_vllm.evaluation.splits import EvalDataError, normalise_text, source_pool, split_target
from cast_vllm.evaluation.stats import mcnemar_exact, paired_bootstrap
from cast_vllm.method.tasks import TaskItem, build_prompt, load_task, load_task_spec


def _sentiment_items(n_pos=70, n_neg=30, dup=0):
    items = []
    for i in range(n_pos + n_neg):
        label = "positive" if i < n_pos else "negative"
        items.append(TaskItem(str(i), f"review number {i} here", label, ("positive", "negative"),
                              0 if label == "positive" else 1))
    for j in range(dup):   # same text as item j, different id
        items.append(TaskItem(f"d{j}", f"Review  number {j} HERE", items[j].answer, items[j].options))
    return items


# ---- splits --------------------------------------------------------------------------------

def test_split_is_deterministic_disjoint_and_balanced():
    items = _sentiment_items(dup=10)
    a = split_target(items, n_dev=20, n_test=40, seed=0)
    b = split_target(items, n_dev=20, n_test=40, seed=0)
    c = split_target(items, n_dev=20, n_test=40, seed=1)
    assert a.test_ids == b.test_ids and a.dev_ids == b.dev_ids
    assert a.test_ids != c.test_ids
    assert len(a.test) == 40 and len(a.dev) == 20
    assert not set(a.test_ids) & set(a.dev_ids)
    texts_test = {normalise_text(it.input) for it in a.test}
    assert not texts_test & {normalise_text(it.input) for it in a.dev}      # duplicates collapsed
    counts = Counter(it.answer for it in a.test)
    assert counts["positive"] == counts["negative"] == 20                  # 70/30 file, balanced test
    assert a.stratified


def test_test_part_does_not_depend_on_n_dev():
    items = _sentiment_items()
    assert split_target(items, 10, 30).test_ids == split_target(items, 50, 30).test_ids


def test_split_refuses_too_few_items():
    with pytest.raises(EvalDataError, match="fewer than n_dev \\+ n_test = 60 \\+ 50"):
        split_target(_sentiment_items(), n_dev=60, n_test=50)
    with pytest.raises(EvalDataError, match="must be >= 1"):
        split_target(_sentiment_items(), n_dev=0, n_test=5)


def test_open_vocabulary_split_is_not_stratified():
    items = [TaskItem(str(i), f"word{i}", f"out{i}") for i in range(40)]
    s = split_target(items, 5, 10)
    assert not s.stratified and len(s.test) == 10


def test_source_pool_excludes_target_texts_and_is_seeded():
    items = _sentiment_items()
    split = split_target(items, 20, 20)
    pool, excluded = source_pool(items, split.dev + split.test, size=30, seed=0)
    assert excluded == 40 and len(pool) == 30
    banned = {normalise_text(it.input) for it in split.dev + split.test}
    assert not {normalise_text(it.input) for it in pool} & banned
    assert [it.id for it in pool] == [it.id for it in source_pool(items, split.dev + split.test, 30, 0)[0]]
    with pytest.raises(EvalDataError, match="no source item is left"):
        source_pool(items[:5], items[:5], 10)


# ---- significance ------------------------------------------------------------------------

def test_mcnemar_exact_values():
    a = [True] * 5 + [False] * 10
    b = [False] * 5 + [False] * 10
    r = mcnemar_exact(a, b)
    assert (r["only_method"], r["only_reference"]) == (5, 0)
    assert r["p_value"] == pytest.approx(2 / 32)          # 2 * 0.5**5
    assert mcnemar_exact(b, a)["p_value"] == pytest.approx(r["p_value"])
    assert mcnemar_exact(a, a)["p_value"] == 1.0
    # 3 vs 1 discordant: 2 * (1 + 4) / 16
    assert mcnemar_exact([1, 1, 1, 0], [0, 0, 0, 1])["p_value"] == pytest.approx(10 / 16)
    with pytest.raises(ValueError, match="equally long"):
        mcnemar_exact([1, 0], [1])


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    ref = rng.random(200) < 0.5
    same = paired_bootstrap(ref, ref)
    assert same["delta"] == 0 and same["p_value"] == 1.0
    better = ref | (rng.random(200) < 0.5)
    r = paired_bootstrap(np.stack([better, better]), ref)
    assert r["delta"] > 0.15 and r["p_value"] < 0.01 and r["ci95"][0] > 0
    noisy = paired_bootstrap(rng.random(200) < 0.5, ref)
    assert noisy["ci95"][0] <= noisy["delta"] <= noisy["ci95"][1]
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap(ref[:10], ref)


# ---- scoring -------------------------------------------------------------------------------

def test_calibration_removes_a_constant_label_bias():
    gold = np.array([0, 1] * 50)
    signal = np.where(gold == 0, 0.5, -0.5)
    logprobs = np.stack([signal + 2.0, -signal], axis=1)       # label 0 favoured by +2 everywhere
    mask = np.ones_like(logprobs, dtype=bool)
    raw = scoring.predict(logprobs, mask)
    assert (raw == 0).all()                                    # biased: always label 0
    bias = scoring.calibration_bias(logprobs, mask)
    assert ((scoring.predict(logprobs, mask, bias)) == gold).all()


def test_predict_respects_option_mask():
    logprobs = np.array([[-1.0, -2.0, -0.5], [-3.0, -1.0, -0.1]])
    mask = np.array([[True, True, False], [True, True, True]])
    assert scoring.predict(logprobs, mask).tolist() == [0, 2]


@pytest.mark.parametrize("text,gold,ok", [
    (" Paris\n", "Paris", True), ("paris, France", "Paris", True), ("colder", "cold", False),
    ("", "cold", False), ("Cold.", "cold", True), ("the cold", "cold", False)])
def test_generation_correct(text, gold, ok):
    assert scoring.generation_correct(text, gold) is ok


def test_label_shares_closed_and_open():
    shares = scoring.label_shares(["A", "A", "B", "x"], ["A", "B", "C"])
    assert shares == {"A": 0.5, "B": 0.25, "C": 0.0, "<other>": 0.25}
    open_ = scoring.label_shares([f"w{i % 7}" for i in range(70)], top=3)
    assert len(open_) == 4 and abs(sum(open_.values()) - 1) < 1e-9


def test_label_set_tokens_and_clash(default_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(default_model_dir))
    spec = load_task_spec("sentiment")
    labels = scoring.make_label_set(spec, _sentiment_items(), tok)
    assert labels.keys == ("positive", "negative")
    assert labels.token_ids == tuple(tok.encode(w, add_special_tokens=False)[0] for w in (" positive", " negative"))
    task = tmp_path / "clash.yaml"
    task.write_text("format: sentiment\nlabel_words: {positive: ' very good', negative: ' very bad'}\n")
    with pytest.raises(scoring.ScoringError, match="share their first token"):
        scoring.make_label_set(load_task_spec(str(task)), _sentiment_items(), tok)


# ---- search --------------------------------------------------------------------------------

def test_search_space_for_model_fits_and_validates():
    sp = SearchSpace.for_model(30)
    assert sp.width == 3 and sp.starts == (3, 6, 9, 12, 15)
    sp18 = SearchSpace.for_model(18)
    assert all(s + sp18.width <= 18 for s in sp18.starts)
    with pytest.raises(SearchError, match="unknown mode"):
        SearchSpace.for_model(30, modes=("scale",))
    with pytest.raises(SearchError, match="positive and finite"):
        SearchSpace.for_model(30, alphas=(0.0,))


def test_coordinate_search_finds_the_best_setting_of_a_known_landscape():
    sp = SearchSpace.for_model(30)

    def score(s: Setting) -> DevScore:       # best: window at 9, alpha 2, norm_preserving, last_prompt
        acc = 0.9 - 0.05 * abs(s.layers[0] - 9) / 3 - 0.1 * abs(np.log2(s.alpha / 2))
        acc -= 0.2 * (s.mode == "add") + 0.3 * (s.positions == "all") + 0.01 * abs(len(s.layers) - 3)
        return DevScore(acc, -1.0)

    search = CoordinateSearch(sp)
    total = 0
    while batch := search.propose():
        total += len(batch)
        with pytest.raises(SearchError, match="tell"):
            search.propose()
        search.tell([score(s) for s in batch])
    assert search.done and total == len(search.trace) <= 12
    assert len({s for s, _ in search.trace}) == total        # nothing scored twice
    best, sc = search.best
    assert best == Setting((9, 10, 11), 2.0, "norm_preserving", "last_prompt")
    assert sc.accuracy == max(s.accuracy for _, s in search.trace)
    json.dumps(search.trace_dicts())


def test_search_tie_break_prefers_margin_then_order():
    search = CoordinateSearch(SearchSpace.for_model(30, vary_width=False))
    batch = search.propose()
    search.tell([DevScore(0.8, -0.5 if i == 2 else -0.6) for i in range(len(batch))])
    assert search.best[0] == batch[2]


# ---- methods -------------------------------------------------------------------------------

def test_cross_task_prompt_matches_build_prompt_for_one_format():
    spec = load_task_spec("sentiment")
    items = _sentiment_items(3, 3)
    assert cross_task_prompt(items[0], items[1:4], spec, spec) == build_prompt(items[0], items[1:4], spec)
    mixed = cross_task_prompt(items[0], items[1:2], spec, load_task_spec("pairs"))
    assert mixed.startswith("Q: review number 1 here\nA: positive\n\nText: review number 0 here\nSentiment:")


def test_retrieve_orders_by_similarity_and_excludes_self():
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(20, 8))
    idx = retrieve(pool[:3], pool, 3, exclude=[[0], [1], [2]])
    assert all(len(r) == 3 and i not in r for i, r in enumerate(idx))
    idx_self = retrieve(pool[:3], pool, 2)
    assert [r[-1] for r in idx_self] == [0, 1, 2]               # most similar last, next to the query
    with pytest.raises(MethodError, match="cannot retrieve"):
        retrieve(pool[:2], pool[:3], 3, exclude=[[0], [1]])


def test_parse_methods():
    assert parse_methods("cast,icl")[0] == "zero_shot"
    with pytest.raises(MethodError, match="unknown method"):
        parse_methods("cast,fewshot")


def test_real_files_load_for_every_suite_pair(shared_data):
    from cast_vllm.evaluation.suite import DEFAULT_PAIRS, suite_configs

    configs = suite_configs("smollm2-135m", shared_data)
    assert [p.name for p, _ in configs] == [p.name for p in DEFAULT_PAIRS]
    for pair, cfg in configs:
        items = load_task(cfg.target, cfg.task)
        split_target(items, cfg.n_dev, cfg.n_test)       # enough distinct items for the suite sizes


def test_vader_sets_from_pypi_match_the_shared_files(shared_data, tmp_path, monkeypatch):
    from cast_vllm.evaluation.vader import VaderDataError, vader_file

    assert vader_file("tweets", shared_data) == shared_data / "sentiment" / "tweets.jsonl"
    monkeypatch.setenv("CAST_VLLM_HOME", str(tmp_path))
    fetched = vader_file("tweets", tmp_path / "no-shared-data")      # downloads the sdist, converts
    assert fetched.parent == tmp_path / "data" / "vader"
    assert fetched.read_text(encoding="utf-8") == (shared_data / "sentiment" / "tweets.jsonl").read_text(
        encoding="utf-8").rstrip("\n") + "\n"
    assert len(load_task(fetched, "sentiment")) == len(load_task(shared_data / "sentiment" / "tweets.jsonl", "sentiment"))
    with pytest.raises(VaderDataError, match="unknown VADER set"):
        vader_file("imdb")


def test_suite_gives_multi_source_its_pairs_extra_sources(shared_data):
    from cast_vllm.evaluation.suite import DEFAULT_PAIRS, _config_key, suite_configs

    configs = {p.name: c for p, c in suite_configs(
        "smollm2-135m", shared_data, overrides={"methods": ["zero_shot", "cast", "cast_multi_source"]})}
    assert "cast_multi_source" not in configs["movies->movies"].methods          # in-domain: no other source
    assert [p.split("/")[-1] for p in configs["movies->tweets"].extra_sources] == ["amazon.jsonl"]
    for pair in DEFAULT_PAIRS:
        for rel in pair.extra_sources:
            assert (shared_data / rel).is_file() and rel != pair.source
    plain = suite_configs("smollm2-135m", shared_data, pairs=["movies->tweets"])[0][1]
    assert plain.extra_sources == () and "extra_sources" not in _config_key(plain)   # old results stay reusable


def test_a_suite_run_of_some_pairs_keeps_the_others(tmp_path):
    from cast_vllm.evaluation.suite import _with_other_pairs

    previous = {"arc_easy->arc_challenge": {"name": "arc_easy->arc_challenge", "v": 1},
                "movies->tweets": {"name": "movies->tweets", "v": 1}}
    merged = _with_other_pairs([{"name": "movies->tweets", "v": 2}, {"name": "movies->amazon", "v": 2}], previous)
    assert [(r["name"], r["v"]) for r in merged] == [("movies->tweets", 2), ("movies->amazon", 2),
                                                     ("arc_easy->arc_challenge", 1)]
