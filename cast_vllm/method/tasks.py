"""Task formats, task files and prompt builders (shared by extraction and evaluation).

Three record formats (DESIGN.md):

- ``sentiment``: ``{"text", "rating"}``, rating in [-4, 4]; >= 1 is positive, <= -1 negative,
  the rest is dropped (thresholds configurable in a task file);
- ``mc``: ``{"query", "choices", "gold"}``; answered with an option letter. When ``choices``
  are bare letters the options are already written in ``query`` (CommonsenseQA style);
- ``pairs``: ``{"input", "output"}``; answered by generating ``output``.

Data files may be JSONL or one JSON array (pretty-printed or not); every record keeps its line
number so a bad record is reported as ``path:line``.

A *task* (``TaskSpec``) says how a record becomes a prompt. Each format has a default; a small
YAML/JSON task file overrides it::

    format: sentiment                  # record format (required)
    name: movie-sentiment
    instruction: "Classify the sentiment."   # optional first line of every prompt
    template: "Review: {input}\\n"      # how one query is written
    answer_prefix: "Sentiment:"        # ends every prompt; the answer follows it
    label_words: {positive: " positive", negative: " negative"}   # sentiment: map; mc: list
    separator: "\\n\\n"                 # between demonstrations and the query
    positive_threshold: 1.0            # sentiment only
    negative_threshold: -1.0
    input_field: input                 # pairs only: which keys hold input and output
    output_field: output

Prompts: zero-shot = ``instruction + template(query) + answer_prefix``; k-shot puts k blocks
``template(demo) + answer_prefix + completion(demo)`` before the query, joined by
``separator``. With ``chat=True`` the same blocks become user/assistant turns rendered with the
tokenizer's chat template.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

TASK_FORMATS = ("sentiment", "mc", "pairs")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class TaskFileError(ValueError):
    """A task or data file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class TaskItem:
    """One labelled example. ``input`` is the rendered query text (for ``mc`` it includes the
    lettered options), ``answer`` the gold label key (``"positive"``, ``"B"``, or the pair's
    output), ``options`` the label keys a classifier chooses from (empty for ``pairs``)."""

    id: str
    input: str
    answer: str
    options: tuple[str, ...] = ()
    label: int | None = None
    line: int = 0
    source: str = ""
    record: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class TaskSpec:
    """How records of one format are written as prompts."""

    format: str
    name: str = ""
    template: str = "{input}\n"
    answer_prefix: str = "Answer:"
    label_words: Mapping[str, str] | None = None   # label key -> completion text
    answer_lead: str = " "                          # put before a pair's output
    separator: str = "\n\n"
    instruction: str = ""
    positive_threshold: float = 1.0
    negative_threshold: float = -1.0
    input_field: str = "input"
    output_field: str = "output"
    path: str = ""

    def completion(self, item: TaskItem) -> str:
        """The text that follows the answer prefix for ``item``'s gold answer."""
        return self.completion_for(item, item.answer)

    def completion_for(self, item: TaskItem, key: str) -> str:
        if self.format == "pairs":
            return self.answer_lead + key
        words = self.label_words or {}
        if key in words:
            return words[key]
        return " " + key

    def option_completions(self, item: TaskItem) -> list[str]:
        """Completion texts of every option, in ``item.options`` order (empty for ``pairs``):
        what an evaluator compares next-token log-probabilities over."""
        return [self.completion_for(item, key) for key in item.options]

    def render_query(self, item: TaskItem) -> str:
        return self.template.replace("{input}", item.input)


def default_task(fmt: str) -> TaskSpec:
    """The built-in task for a record format."""
    if fmt == "sentiment":
        return TaskSpec(format="sentiment", name="sentiment", template="Text: {input}\n", answer_prefix="Sentiment:",
                        label_words={"positive": " positive", "negative": " negative"})
    if fmt == "mc":
        return TaskSpec(format="mc", name="mc", template="{input}\n", answer_prefix="Answer:")
    if fmt == "pairs":
        return TaskSpec(format="pairs", name="pairs", template="Q: {input}\n", answer_prefix="A:")
    raise TaskFileError(f"unknown task format {fmt!r}; use one of {', '.join(TASK_FORMATS)} or a task file")


_SPEC_KEYS = {"format", "name", "template", "answer_prefix", "label_words", "answer_lead", "separator",
              "instruction", "positive_threshold", "negative_threshold", "input_field", "output_field"}


def load_task_spec(task: "str | Path | TaskSpec") -> TaskSpec:
    """A format name (``sentiment``/``mc``/``pairs``) or a YAML/JSON task file -> ``TaskSpec``."""
    if isinstance(task, TaskSpec):
        return task
    name = str(task)
    if name in TASK_FORMATS:
        return default_task(name)
    path = Path(name)
    if path.suffix.lower() not in {".yaml", ".yml", ".json"}:
        raise TaskFileError(
            f"unknown task {name!r}: use one of {', '.join(TASK_FORMATS)} or a .yaml/.yml/.json task file")
    if not path.is_file():
        raise TaskFileError(f"task file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # yaml and json raise different types
        line = getattr(exc, "lineno", None) or getattr(getattr(exc, "problem_mark", None), "line", -1) + 1
        raise TaskFileError(f"{path}:{line}: not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise TaskFileError(f"{path}: a task file holds one mapping (format, template, ...), got {type(data).__name__}")
    unknown = set(data) - _SPEC_KEYS
    if unknown:
        raise TaskFileError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS)}")
    fmt = data.get("format")
    if fmt not in TASK_FORMATS:
        raise TaskFileError(f"{path}: 'format' must be one of {', '.join(TASK_FORMATS)}, got {fmt!r}")
    spec = default_task(fmt)
    fields: dict[str, Any] = {"path": str(path), "name": path.stem}
    for key, value in data.items():
        if key == "format":
            continue
        if key in {"positive_threshold", "negative_threshold"}:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TaskFileError(f"{path}: {key!r} must be a finite number, got {value!r}")
            fields[key] = float(value)
        elif key == "label_words":
            fields[key] = _label_words(path, fmt, value)
        else:
            if not isinstance(value, str):
                raise TaskFileError(f"{path}: {key!r} must be a string, got {type(value).__name__}")
            fields[key] = value
    spec = replace(spec, **fields)
    if "{input}" not in spec.template:
        raise TaskFileError(f"{path}: 'template' must contain '{{input}}', got {spec.template!r}")
    if spec.format == "sentiment" and spec.negative_threshold >= spec.positive_threshold:
        raise TaskFileError(f"{path}: negative_threshold must be below positive_threshold")
    return spec


def _label_words(path: Path, fmt: str, value: Any) -> dict[str, str]:
    if fmt == "pairs":
        raise TaskFileError(f"{path}: 'label_words' does not apply to the pairs format (answers are generated)")
    if fmt == "mc":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise TaskFileError(f"{path}: mc 'label_words' must be a list of non-empty strings, one per option")
        return {LETTERS[i]: v for i, v in enumerate(value[: len(LETTERS)])}
    if not isinstance(value, dict) or set(value) != {"positive", "negative"} or not all(
            isinstance(v, str) and v for v in value.values()):
        raise TaskFileError(f"{path}: sentiment 'label_words' must map exactly 'positive' and 'negative' to strings")
    if value["positive"] == value["negative"]:
        raise TaskFileError(f"{path}: the two sentiment label words must differ")
    return dict(value)


# ---- data files ----------------------------------------------------------------------------

def iter_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line, record)`` for every record of a JSONL file or a JSON array file."""
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"data file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TaskFileError(f"{path}: not UTF-8 text ({exc})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from _iter_json_array(path, text)
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskFileError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None


def _iter_json_array(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos = ws.match(text, 0).end() + 1          # past '['
    lines_before = 0
    last = 0

    def line_of(offset: int) -> int:
        nonlocal lines_before, last
        lines_before += text.count("\n", last, offset)
        last = offset
        return lines_before + 1

    pos = ws.match(text, pos).end()
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        pos = ws.match(text, pos).end()
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise TaskFileError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
        yield line_of(pos), obj
        pos = ws.match(text, end).end()
        if pos >= len(text):
            raise TaskFileError(f"{path}:{line_of(len(text))}: JSON array is not closed with ']'")
        if text[pos] == ",":
            pos += 1
            continue
        if text[pos] == "]":
            if text[pos + 1:].strip():
                raise TaskFileError(f"{path}:{line_of(pos)}: unexpected text after the JSON array")
            return
        raise TaskFileError(f"{path}:{line_of(pos)}: expected ',' or ']' in the JSON array, got {text[pos]!r}")


def load_task(path: str | Path, task: "str | Path | TaskSpec") -> list[TaskItem]:
    """Read and validate a data file in ``task``'s record format. Sentiment records between the
    thresholds are dropped. Raises ``TaskFileError`` naming ``path:line`` for a bad record."""
    spec = load_task_spec(task)
    path = Path(path)
    items: list[TaskItem] = []
    seen_ids: dict[str, int] = {}
    n_records = 0
    for index, (line, rec) in enumerate(iter_records(path)):
        n_records += 1
        where = f"{path}:{line}"
        if not isinstance(rec, dict):
            raise TaskFileError(f"{where}: a {spec.format} record must be a JSON object, got {type(rec).__name__}")
        item = _parse_record(spec, rec, where, index, line, str(path))
        if item is None:
            continue
        if item.id in seen_ids:
            raise TaskFileError(f"{where}: duplicate id {item.id!r} (first on line {seen_ids[item.id]})")
        seen_ids[item.id] = line
        items.append(item)
    if n_records == 0:
        raise TaskFileError(f"{path}: no records")
    if not items:
        raise TaskFileError(f"{path}: none of the {n_records} records is usable as {spec.format} "
                            "(all ratings between the thresholds?)")
    return items


def _text_field(rec: Mapping, key: str, where: str) -> str:
    if key not in rec:
        raise TaskFileError(f"{where}: missing key {key!r} (has {sorted(rec)})")
    value = rec[key]
    if not isinstance(value, str):
        raise TaskFileError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise TaskFileError(f"{where}: {key!r} is empty")
    return value


def _record_id(rec: Mapping, index: int, where: str) -> str:
    if "id" not in rec:
        return str(index)
    rid = rec["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise TaskFileError(f"{where}: 'id' must be a string or int, got {type(rid).__name__}")
    return str(rid)


def _parse_record(spec: TaskSpec, rec: Mapping, where: str, index: int, line: int, source: str) -> TaskItem | None:
    rid = _record_id(rec, index, where)
    if spec.format == "sentiment":
        text = _text_field(rec, "text", where)
        if "rating" not in rec:
            raise TaskFileError(f"{where}: missing key 'rating' (has {sorted(rec)})")
        rating = rec["rating"]
        if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not math.isfinite(rating):
            raise TaskFileError(f"{where}: 'rating' must be a finite number, got {rating!r}")
        if not -4.0 <= rating <= 4.0:
            raise TaskFileError(f"{where}: 'rating' {rating} is outside [-4, 4]")
        if rating >= spec.positive_threshold:
            label = 0
        elif rating <= spec.negative_threshold:
            label = 1
        else:
            return None
        options = ("positive", "negative")
        return TaskItem(rid, text.strip(), options[label], options, label, line, source, rec)
    if spec.format == "mc":
        query = _text_field(rec, "query", where)
        choices = rec.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise TaskFileError(f"{where}: 'choices' must be a list of at least 2 strings, got {choices!r}")
        if len(choices) > len(LETTERS):
            raise TaskFileError(f"{where}: {len(choices)} choices; at most {len(LETTERS)} are supported")
        gold = rec.get("gold")
        if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise TaskFileError(f"{where}: 'gold' must be an index into the {len(choices)} choices, got {gold!r}")
        letters = tuple(LETTERS[: len(choices)])
        query = query.strip()
        if tuple(c.strip() for c in choices) == letters:
            # options already listed in the query (CommonsenseQA); drop a trailing "Answer:"
            text = re.sub(r"\s*Answer:\s*$", "", query)
        else:
            text = query + "\n" + "\n".join(f"{letter}. {c.strip()}" for letter, c in zip(letters, choices))
        return TaskItem(rid, text, letters[gold], letters, gold, line, source, rec)
    # pairs
    inp = _text_field(rec, spec.input_field, where)
    out = _text_field(rec, spec.output_field, where)
    return TaskItem(rid, inp.strip(), out.strip(), (), None, line, source, rec)


# ---- prompts -------------------------------------------------------------------------------

def build_prompt(item: TaskItem, demos: Sequence[TaskItem] = (), task: "TaskSpec | str | None" = None,
                 *, chat: bool = False, tokenizer: Any = None) -> str:
    """The prompt for ``item`` with ``demos`` as worked examples (zero-shot when empty).

    The prompt ends with the answer prefix, so the last prompt token is the position that
    predicts the answer. ``chat=True`` renders user/assistant turns with ``tokenizer``'s chat
    template (the result already holds the special tokens: tokenize it without adding more).
    """
    spec = load_task_spec(task) if task is not None else default_task(_guess_format(item))
    if chat:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise TaskFileError("chat=True needs a tokenizer that has a chat template")
        messages = []
        if spec.instruction:
            messages.append({"role": "system", "content": spec.instruction})
        for demo in demos:
            messages.append({"role": "user", "content": (spec.render_query(demo) + spec.answer_prefix).strip()})
            messages.append({"role": "assistant", "content": spec.completion(demo).strip()})
        messages.append({"role": "user", "content": (spec.render_query(item) + spec.answer_prefix).strip()})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return plain_prompt(item, demos, spec)


def plain_prompt(item: TaskItem, demos: Sequence[TaskItem], spec: "TaskSpec",
                 demo_spec: "TaskSpec | None" = None) -> str:
    """Worked examples rendered in ``demo_spec``'s format (default: ``spec``), then the query in
    ``spec``'s, ending with its answer prefix (cross-task ICL uses two formats)."""
    demo_spec = demo_spec or spec
    blocks = [demo_spec.render_query(d) + demo_spec.answer_prefix + demo_spec.completion(d) for d in demos]
    blocks.append(spec.render_query(item) + spec.answer_prefix)
    prompt = spec.separator.join(blocks)
    if spec.instruction:
        prompt = spec.instruction.rstrip("\n") + "\n" + prompt
    return prompt


def _guess_format(item: TaskItem) -> str:
    if not item.options:
        return "pairs"
    return "sentiment" if item.options == ("positive", "negative") else "mc"
