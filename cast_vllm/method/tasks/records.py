"""Data files -> validated ``TaskItem`` lists. Files may be JSONL or one JSON array
(pretty-printed or not); every record keeps its line number so a bad record is reported as
``path:line``. What a record must hold is its format's business (``formats.py``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

from cast_vllm.method.tasks.formats import get_format
from cast_vllm.method.tasks.items import TaskFileError, TaskItem
from cast_vllm.method.tasks.spec import TaskSpec, load_task_spec


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
    task_format = get_format(spec.format)
    path = Path(path)
    items: list[TaskItem] = []
    seen_ids: dict[str, int] = {}
    n_records = 0
    for index, (line, rec) in enumerate(iter_records(path)):
        n_records += 1
        where = f"{path}:{line}"
        if not isinstance(rec, dict):
            raise TaskFileError(f"{where}: a {spec.format} record must be a JSON object, got {type(rec).__name__}")
        rid = _record_id(rec, index, where)
        parsed = task_format.parse(spec, rec, where)
        if parsed is None:
            continue
        item = TaskItem(rid, *parsed, line, str(path), rec)
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


def _record_id(rec: Mapping, index: int, where: str) -> str:
    if "id" not in rec:
        return str(index)
    rid = rec["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise TaskFileError(f"{where}: 'id' must be a string or int, got {type(rid).__name__}")
    return str(rid)
