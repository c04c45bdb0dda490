"""`cast-vllm batch`: input checked line by line before any engine starts, results in input order
with the steering receipt, refused requests on their own line, resume after an interruption,
and two Ray workers writing exactly what one writes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import ENGINE_DEFAULTS, random_vector, save_vectors

from cast_vllm.batch.requests import BatchInputError, parse_line, read_requests
from cast_vllm.batch.runner import BatchOptions, run_batch
from cast_vllm.cli import main

DEFAULTS = {"max_tokens": 5, "temperature": 0.0}
ENGINE = {k: v for k, v in ENGINE_DEFAULTS.items() if k != "seed"}
LINES = [
    {"id": "plain", "prompt": "the weather today is"},
    {"id": "steered", "prompt": "the weather today is", "steering": {"vector": "v1", "scale": 3.0}},
    {"id": "unknown-vector", "prompt": "hello", "steering": {"vector": "missing"}},
    {"id": "chat", "messages": [{"role": "user", "content": "say hi"}], "steering": "v2"},
    {"prompt": "no id given", "sampling": {"max_tokens": 3}},
    {"id": "sampled", "prompt": "once upon a", "sampling": {"n": 2, "temperature": 0.9, "seed": 7}},
    {"id": "mix", "prompt": "a quick brown fox",
     "steering": [{"vector": "v1", "scale": 1.0}, {"vector": "v2", "scale": -1.0, "positions": "generated"}]},
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    vectors = save_vectors(root / "vectors", {"v1": random_vector(1, scale=3.0), "v2": random_vector(2, scale=3.0)})
    path = root / "requests.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in LINES) + "\n")     # a blank line is fine
    return root, path, vectors


def _options(model, path, out, vectors, **kw):
    return BatchOptions(model=str(model), input=str(path), output=str(out), vector_dir=str(vectors), shard_size=2,
                        max_tokens=5, engine_kwargs=ENGINE, progress=False, **kw)


@pytest.fixture(scope="module")
def one_worker(tiny_model_dir, inputs):
    root, path, vectors = inputs
    out = root / "one.jsonl"
    summary = run_batch(_options(tiny_model_dir("llama"), path, out, vectors))
    return summary, out


def test_results_in_input_order_with_receipts_and_refusals(one_worker):
    summary, out = one_worker
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["index"] for x in lines] == list(range(len(LINES)))
    assert [x["id"] for x in lines] == [str(line.get("id", i)) for i, line in enumerate(LINES)]
    by_id = {x["id"]: x for x in lines}
    assert "unknown steering vector 'missing'" in by_id["unknown-vector"]["error"]
    assert by_id["unknown-vector"]["outputs"] == []
    assert (summary.requests, summary.written, summary.errors, summary.resumed) == (len(LINES), len(LINES), 1, 0)
    assert by_id["plain"]["steering"] is None and by_id["steered"]["steering"]["components"][0]["vector"] == "v1"
    assert [c["vector"] for c in by_id["mix"]["steering"]["components"]] == ["v1", "v2"]
    assert by_id["steered"]["outputs"][0]["token_ids"] != by_id["plain"]["outputs"][0]["token_ids"]
    assert len(by_id["4"]["outputs"][0]["token_ids"]) == 3 and len(by_id["plain"]["outputs"][0]["token_ids"]) == 5
    assert len(by_id["sampled"]["outputs"]) == 2


def test_resume_after_an_interruption_gives_the_same_file(one_worker, inputs, tiny_model_dir):
    _, full = one_worker
    root, path, vectors = inputs
    cut = root / "cut.jsonl"
    data = full.read_bytes()
    lines = data.splitlines(keepends=True)
    cut.write_bytes(b"".join(lines[:3]) + lines[3][:17])        # three lines and a torn fourth
    summary = run_batch(_options(tiny_model_dir("llama"), path, cut, vectors))
    assert summary.resumed == 3 and summary.written == len(LINES) - 3
    assert cut.read_bytes() == data
    again = run_batch(_options(tiny_model_dir("llama"), path, cut, vectors))       # nothing left to do
    assert (again.resumed, again.written) == (len(LINES), 0) and cut.read_bytes() == data


def test_an_output_of_another_input_is_not_continued(one_worker, inputs, tiny_model_dir, tmp_path):
    _, full = one_worker
    _, _, vectors = inputs
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "x", "prompt": "different"}) + "\n")
    with pytest.raises(BatchInputError, match="is not the result of this input's request 0"):
        run_batch(_options(tiny_model_dir("llama"), other, full, vectors))


def test_two_ray_workers_write_what_one_writes(one_worker, inputs, tiny_model_dir):
    pytest.importorskip("ray")
    import ray

    _, single = one_worker
    root, path, vectors = inputs
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_batch(_options(tiny_model_dir("llama"), path, root / "two.jsonl", vectors, workers=2))
    finally:
        if started:
            ray.shutdown()
    assert summary.workers == 2 and summary.written == len(LINES)
    assert (root / "two.jsonl").read_bytes() == single.read_bytes()


@pytest.mark.parametrize("text, problem", [
    ("not json", "not JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"prompt": "x", "promt": "y"}', r"unknown key\(s\) \['promt'\]"),
    ('{"id": "x"}', "exactly one of 'prompt'"),
    ('{"prompt": "x", "messages": [{"role": "user", "content": "y"}]}', "exactly one of 'prompt'"),
    ('{"prompt": 3}', "'prompt' must be a string"),
    ('{"messages": []}', "non-empty list"),
    ('{"messages": [{"role": "user"}]}', "non-empty list"),
    ('{"prompt": "x", "sampling": {"max_token": 3}}', r"unknown sampling key\(s\) \['max_token'\]"),
    ('{"prompt": "x", "sampling": {"temperature": -1}}', "bad sampling"),
    ('{"prompt": "x", "sampling": {"max_tokens": "many"}}', "bad sampling"),
    ('{"prompt": "x", "sampling": []}', "'sampling' must be an object"),
    ('{"prompt": "x", "id": true}', "'id' must be a string or an integer"),
])
def test_bad_lines_are_named(text, problem):
    with pytest.raises(BatchInputError, match=problem) as info:
        parse_line(text, 0, "in.jsonl:7", DEFAULTS)
    assert str(info.value).startswith("in.jsonl:7: ")


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(max_size=60), st.dictionaries(
    st.sampled_from(["id", "prompt", "messages", "sampling", "steering", "x"]),
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
              st.lists(st.dictionaries(st.sampled_from(["role", "content"]), st.text(max_size=5)), max_size=2),
              st.dictionaries(st.sampled_from(["max_tokens", "temperature", "n", "seed", "top_p"]),
                              st.one_of(st.integers(-5, 5), st.floats(-2, 2), st.text(max_size=3))))).map(json.dumps)))
def test_any_line_parses_or_is_refused_by_name(text):
    try:
        request = parse_line(text, 0, "f:1", DEFAULTS)
    except BatchInputError as exc:
        assert str(exc).startswith("f:1: ")
        return
    assert (request.prompt is None) != (request.messages is None)


def test_every_bad_line_is_reported_before_anything_runs(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "ok", "id": "a"}\nnope\n{"prompt": "ok", "id": "a"}\n')
    with pytest.raises(BatchInputError) as info:
        read_requests(path, DEFAULTS)
    assert "2 bad line(s)" in str(info.value) and ":2: not JSON" in str(info.value)
    assert "id 'a' repeats line 1" in str(info.value)
    path.write_bytes(b'{"prompt": "\xff"}\n')
    with pytest.raises(BatchInputError, match="not UTF-8"):
        read_requests(path, DEFAULTS)
    path.write_text("\n\n")
    with pytest.raises(BatchInputError, match="holds no requests"):
        read_requests(path, DEFAULTS)


def test_cli_refuses_bad_input_with_exit_2(tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text('{"promt": "x"}\n')
    # the input is checked before the model is even looked at
    assert main(["batch", "--model", str(tmp_path), "--input", str(path), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "unknown key(s) ['promt']" in capsys.readouterr().err
    assert main(["batch", "--input", str(path), "--output", str(path)]) == 2
    assert "must not be the input file" in capsys.readouterr().err


def test_a_broken_vector_file_is_refused_before_any_engine_starts(tiny_model_dir, tmp_path):
    vectors = tmp_path / "vectors"
    vectors.mkdir()
    (vectors / "broken.safetensors").write_bytes(b"not a safetensors file")
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"prompt": "x", "steering": "broken"}) + "\n")
    with pytest.raises(BatchInputError, match="vector 'broken' cannot be used"):
        run_batch(_options(tiny_model_dir("llama"), path, tmp_path / "out.jsonl", vectors))
