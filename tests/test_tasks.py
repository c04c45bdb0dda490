"""Task formats, task files and prompt builders: real shared data, bad files named by line."""

import json

import pytest

from cast_vllm.method.tasks import (
    TaskFileError, build_prompt, default_task, load_task, load_task_spec,
)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_sentiment_thresholds_and_ids(tmp_path):
    f = write(tmp_path / "s.jsonl", "\n".join(json.dumps(r) for r in [
        {"id": "a", "text": "great film", "rating": 2.5},
        {"id": "b", "text": "meh", "rating": 0.4},          # dropped: between -1 and 1
        {"id": "c", "text": "awful film", "rating": -1.0},
        {"text": "fine, just fine", "rating": 1.0},          # no id: index
    ]) + "\n")
    items = load_task(f, "sentiment")
    assert [(i.id, i.answer, i.label, i.line) for i in items] == [
        ("a", "positive", 0, 1), ("c", "negative", 1, 3), ("3", "positive", 0, 4)]
    spec = default_task("sentiment")
    assert spec.option_completions(items[0]) == [" positive", " negative"]


def test_shared_data_formats(shared_data):
    movies = load_task(shared_data / "sentiment/movies.jsonl", "sentiment")
    assert 9000 < len(movies) < 10605 and {i.answer for i in movies} == {"positive", "negative"}
    csqa = load_task(shared_data / "mc/commonsense_qa.jsonl", "mc")
    assert len(csqa) == 1221
    # letters in choices: the options are already in the query, the trailing "Answer:" is dropped
    assert "\nA. " in csqa[0].input and not csqa[0].input.endswith("Answer:")
    arc = load_task(shared_data / "mc/arc_easy.jsonl", "mc")
    assert arc[0].input.count("\n") >= 4 and arc[0].options == ("A", "B", "C", "D")
    fr = load_task(shared_data / "function_vectors/english-french.json", "pairs")
    assert len(fr) == 4698 and fr[0].options == () and fr[0].line == 2   # pretty-printed array: record lines


def test_prompts_zero_and_few_shot(shared_data):
    items = load_task(shared_data / "function_vectors/antonym.json", "pairs")
    zero = build_prompt(items[0], [], "pairs")
    assert zero == f"Q: {items[0].input}\nA:"
    few = build_prompt(items[0], items[1:3], "pairs")
    assert few == (f"Q: {items[1].input}\nA: {items[1].answer}\n\nQ: {items[2].input}\nA: {items[2].answer}"
                   f"\n\nQ: {items[0].input}\nA:")
    mc = load_task(shared_data / "mc/arc_easy.jsonl", "mc")
    p = build_prompt(mc[0], mc[1:2], "mc")
    assert p.endswith("Answer:") and f"Answer: {mc[1].answer}\n\n" in p


def test_task_file_yaml_and_json(tmp_path):
    spec = load_task_spec(write(tmp_path / "t.yaml", (
        "format: sentiment\ninstruction: Is the review good or bad?\ntemplate: \"Review: {input}\\n\"\n"
        "answer_prefix: \"Verdict:\"\nlabel_words: {positive: \" good\", negative: \" bad\"}\n"
        "positive_threshold: 2.0\n")))
    assert spec.name == "t" and spec.positive_threshold == 2.0
    data = write(tmp_path / "d.jsonl", '{"text": "x", "rating": 1.5}\n{"text": "y", "rating": 2.5}\n'
                                       '{"text": "z", "rating": -3}\n')
    items = load_task(data, tmp_path / "t.yaml")
    assert [i.input for i in items] == ["y", "z"]               # 1.5 is below the custom threshold
    assert build_prompt(items[1], items[:1], spec) == (
        "Is the review good or bad?\nReview: y\nVerdict: good\n\nReview: z\nVerdict:")
    mc = load_task_spec(write(tmp_path / "m.json", json.dumps(
        {"format": "mc", "label_words": [" 1", " 2"], "answer_prefix": "Option:"})))
    item = load_task(write(tmp_path / "q.jsonl", '{"query": "Q?", "choices": ["a", "b"], "gold": 1}\n'), mc)[0]
    assert mc.completion(item) == " 2" and mc.option_completions(item) == [" 1", " 2"]


def test_custom_pair_fields(tmp_path):
    spec = load_task_spec(write(tmp_path / "p.yaml", "format: pairs\ninput_field: en\noutput_field: fr\n"))
    items = load_task(write(tmp_path / "p.json", '[{"en": "cat", "fr": "chat"}]'), spec)
    assert items[0].input == "cat" and spec.completion(items[0]) == " chat"


@pytest.mark.parametrize("text, fmt, where, message", [
    ('{"text": "a", "rating": 2}\n{"text": "b", "rating": "high"}\n', "sentiment", ":2:", "'rating' must be"),
    ('{"text": "a", "rating": 2}\n\n{"text": "b"\n', "sentiment", ":3:", "not valid JSON"),
    ('{"text": "a", "rating": 9}\n', "sentiment", ":1:", "outside"),
    ('{"query": "q", "choices": ["a", "b"], "gold": 2}\n', "mc", ":1:", "'gold' must be an index"),
    ('{"query": "q", "choices": "ab", "gold": 0}\n', "mc", ":1:", "'choices' must be"),
    ('[\n  {"input": "a", "output": "b"},\n  {"input": "c"}\n]', "pairs", ":3:", "missing key 'output'"),
    ('[\n  {"input": "a", "output": "b"},\n  {"input": "c", "output": }\n]', "pairs", ":3:", "not valid JSON"),
    ('[\n  {"input": "a", "output": "b"}\n', "pairs", ":", "not closed"),
    ('{"id": "x", "text": "a", "rating": 2}\n{"id": "x", "text": "b", "rating": 2}\n', "sentiment", ":2:",
     "duplicate id"),
    ('{"text": "a", "rating": 0.1}\n', "sentiment", "", "none of the 1 records"),
    ('', "pairs", "", "no records"),
])
def test_bad_data_files_name_the_line(tmp_path, text, fmt, where, message):
    f = write(tmp_path / "bad.jsonl", text)
    with pytest.raises(TaskFileError, match=message) as err:
        load_task(f, fmt)
    assert f"bad.jsonl{where}" in str(err.value)


@pytest.mark.parametrize("name, text, message", [
    ("a.yaml", "format: sentiment\ntemplate: no placeholder\n", "must contain '{input}'"),
    ("b.yaml", "format: regression\n", "'format' must be one of"),
    ("c.yaml", "format: pairs\nlabel_words: [a]\n", "does not apply"),
    ("d.yaml", "format: sentiment\nlabel_words: {good: x, bad: y}\n", "exactly 'positive' and 'negative'"),
    ("e.yaml", "format: mc\ncolour: red\n", "unknown keys"),
    ("f.yaml", "format: sentiment\n  bad: [indent\n", "not valid YAML"),
    ("g.json", '{"format": "sentiment", "positive_threshold": "x"}', "finite number"),
])
def test_bad_task_files(tmp_path, name, text, message):
    with pytest.raises(TaskFileError, match=message):
        load_task_spec(write(tmp_path / name, text))


def test_unknown_task_and_missing_file(tmp_path):
    with pytest.raises(TaskFileError, match="unknown task 'regression'"):
        load_task_spec("regression")
    with pytest.raises(TaskFileError, match="does not exist"):
        load_task(tmp_path / "none.jsonl", "pairs")


def test_chat_prompts(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir("llama"))
    spec = default_task("pairs")
    from cast_vllm.method.tasks import TaskItem

    a, b = TaskItem("0", "cat", "chat"), TaskItem("1", "dog", "chien")
    p = build_prompt(a, [b], spec, chat=True, tokenizer=tok)
    assert p == "<|bos|>user: Q: dog\nA:\n<|bos|>assistant: chien\n<|bos|>user: Q: cat\nA:\nassistant:"
    with pytest.raises(TaskFileError, match="chat template"):
        build_prompt(a, [], spec, chat=True, tokenizer=None)
