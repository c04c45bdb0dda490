"""``TaskSpec``: how records of one format are written as prompts, taken from the format's
built-in task or from a small YAML/JSON task file that overrides it::

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
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from cast_vllm.method.tasks.formats import FORMATS, get_format
from cast_vllm.method.tasks.items import TaskFileError, TaskItem


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
        return get_format(self.format).completion(self, key)

    def option_completions(self, item: TaskItem) -> list[str]:
        """Completion texts of every option, in ``item.options`` order (empty for ``pairs``):
        what an evaluator compares next-token log-probabilities over."""
        return [self.completion_for(item, key) for key in item.options]

    def render_query(self, item: TaskItem) -> str:
        return self.template.replace("{input}", item.input)


def default_task(fmt: str) -> TaskSpec:
    """The built-in task for a record format."""
    return TaskSpec(format=fmt, name=fmt, **get_format(fmt).defaults)


#: what a task file may set: every field but the file's own path
_SPEC_KEYS = {f.name for f in fields(TaskSpec)} - {"path"}
_NUMBER_KEYS = {"positive_threshold", "negative_threshold"}


def load_task_spec(task: "str | Path | TaskSpec") -> TaskSpec:
    """A format name (``sentiment``/``mc``/``pairs``) or a YAML/JSON task file -> ``TaskSpec``."""
    if isinstance(task, TaskSpec):
        return task
    name = str(task)
    if name in FORMATS:
        return default_task(name)
    path = Path(name)
    if path.suffix.lower() not in {".yaml", ".yml", ".json"}:
        raise TaskFileError(
            f"unknown task {name!r}: use one of {', '.join(FORMATS)} or a .yaml/.yml/.json task file")
    if not path.is_file():
        raise TaskFileError(f"task file {path} does not exist")
    data = _read_task_file(path)
    unknown = set(data) - _SPEC_KEYS
    if unknown:
        raise TaskFileError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS)}")
    fmt = data.get("format")
    if fmt not in FORMATS:
        raise TaskFileError(f"{path}: 'format' must be one of {', '.join(FORMATS)}, got {fmt!r}")
    task_format = get_format(fmt)
    settings: dict[str, Any] = {"path": str(path), "name": path.stem}
    for key, value in data.items():
        if key == "format":
            continue
        if key in _NUMBER_KEYS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TaskFileError(f"{path}: {key!r} must be a finite number, got {value!r}")
            settings[key] = float(value)
        elif key == "label_words":
            settings[key] = task_format.label_words(path, value)
        else:
            if not isinstance(value, str):
                raise TaskFileError(f"{path}: {key!r} must be a string, got {type(value).__name__}")
            settings[key] = value
    spec = replace(default_task(fmt), **settings)
    if "{input}" not in spec.template:
        raise TaskFileError(f"{path}: 'template' must contain '{{input}}', got {spec.template!r}")
    task_format.check(spec, path)
    return spec


def _read_task_file(path: Path) -> dict:
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
    return data
