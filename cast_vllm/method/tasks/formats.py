"""The registry of task formats: per format, how a record becomes an example, the built-in
prompt settings, the label words a task file may set and the text that completes an answer.

Records, task specs and prompts only ask ``get_format``, so a new format is one
``TaskFormat`` subclass registered here (plus its tests):

- ``sentiment``: ``{"text", "rating"}``, rating in [-4, 4]; >= 1 is positive, <= -1 negative,
  the rest is dropped (thresholds configurable in a task file);
- ``mc``: ``{"query", "choices", "gold"}``; answered with an option letter. When ``choices``
  are bare letters the options are already written in ``query`` (CommonsenseQA style);
- ``pairs``: ``{"input", "output"}``; answered by generating ``output``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

from cast_vllm.method.tasks.items import LETTERS, TaskFileError, TaskItem

if TYPE_CHECKING:
    from cast_vllm.method.tasks.spec import TaskSpec


class ParsedRecord(NamedTuple):
    """The format-specific fields of a ``TaskItem`` (records.py adds id, line and source)."""

    input: str
    answer: str
    options: tuple[str, ...]
    label: int | None


class TaskFormat:
    """One record format. ``defaults``: the ``TaskSpec`` fields of its built-in task."""

    name: str = ""
    defaults: Mapping[str, Any] = {}

    def parse(self, spec: "TaskSpec", rec: Mapping, where: str) -> ParsedRecord | None:
        """A record's fields, or None to drop it; ``TaskFileError`` naming ``where`` if bad."""
        raise NotImplementedError

    def label_words(self, path: Path, value: Any) -> dict[str, str]:
        """A task file's ``label_words`` checked and keyed by label."""
        raise TaskFileError(f"{path}: 'label_words' does not apply to the {self.name} format (answers are generated)")

    def check(self, spec: "TaskSpec", path: Path) -> None:
        """Refuse a task file whose settings contradict each other."""

    def completion(self, spec: "TaskSpec", key: str) -> str:
        """The text that follows the answer prefix for the answer ``key``."""
        words = spec.label_words or {}
        if key in words:
            return words[key]
        return " " + key

    def claims(self, item: TaskItem) -> bool:
        """Whether an item without a task most likely came from this format."""
        return False


def _text_field(rec: Mapping, key: str, where: str) -> str:
    if key not in rec:
        raise TaskFileError(f"{where}: missing key {key!r} (has {sorted(rec)})")
    value = rec[key]
    if not isinstance(value, str):
        raise TaskFileError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise TaskFileError(f"{where}: {key!r} is empty")
    return value


class SentimentFormat(TaskFormat):
    name = "sentiment"
    defaults = {"template": "Text: {input}\n", "answer_prefix": "Sentiment:",
                "label_words": {"positive": " positive", "negative": " negative"}}
    OPTIONS = ("positive", "negative")

    def parse(self, spec, rec, where):
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
        return ParsedRecord(text.strip(), self.OPTIONS[label], self.OPTIONS, label)

    def label_words(self, path, value):
        if not isinstance(value, dict) or set(value) != set(self.OPTIONS) or not all(
                isinstance(v, str) and v for v in value.values()):
            raise TaskFileError(f"{path}: sentiment 'label_words' must map exactly 'positive' and 'negative' to "
                                "strings")
        if value["positive"] == value["negative"]:
            raise TaskFileError(f"{path}: the two sentiment label words must differ")
        return dict(value)

    def check(self, spec, path):
        if spec.negative_threshold >= spec.positive_threshold:
            raise TaskFileError(f"{path}: negative_threshold must be below positive_threshold")

    def claims(self, item):
        return item.options == self.OPTIONS


class MultipleChoiceFormat(TaskFormat):
    name = "mc"
    defaults = {"template": "{input}\n", "answer_prefix": "Answer:"}

    def parse(self, spec, rec, where):
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
        return ParsedRecord(text, letters[gold], letters, gold)

    def label_words(self, path, value):
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise TaskFileError(f"{path}: mc 'label_words' must be a list of non-empty strings, one per option")
        return {LETTERS[i]: v for i, v in enumerate(value[: len(LETTERS)])}

    def claims(self, item):
        return bool(item.options)     # asked after sentiment, whose two options are words


class PairsFormat(TaskFormat):
    name = "pairs"
    defaults = {"template": "Q: {input}\n", "answer_prefix": "A:"}

    def parse(self, spec, rec, where):
        inp = _text_field(rec, spec.input_field, where)
        out = _text_field(rec, spec.output_field, where)
        return ParsedRecord(inp.strip(), out.strip(), (), None)

    def completion(self, spec, key):
        return spec.answer_lead + key

    def claims(self, item):
        return not item.options


#: every known format by name, in registration order (the order error messages list them)
FORMATS: dict[str, TaskFormat] = {}


def register_format(fmt: TaskFormat) -> TaskFormat:
    FORMATS[fmt.name] = fmt
    return fmt


for _builtin in (SentimentFormat(), MultipleChoiceFormat(), PairsFormat()):
    register_format(_builtin)

#: the built-in format names
TASK_FORMATS = tuple(FORMATS)


def get_format(name: str) -> TaskFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise TaskFileError(f"unknown task format {name!r}; use one of {', '.join(FORMATS)} or a task file") from None


def guess_format(item: TaskItem) -> str:
    """The format an item most likely came from (for a prompt built without a task)."""
    return next(name for name, fmt in FORMATS.items() if fmt.claims(item))
