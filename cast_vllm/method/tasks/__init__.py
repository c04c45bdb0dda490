"""Tasks: record formats (``formats.py``, the registry), task specs and task files
(``spec.py``), data files (``records.py``) and prompts (``prompts.py``), shared by extraction
and evaluation. Import the public names from here."""

from cast_vllm.method.tasks.formats import (
    FORMATS, TASK_FORMATS, ParsedRecord, TaskFormat, get_format, guess_format, register_format,
)
from cast_vllm.method.tasks.items import LETTERS, TaskFileError, TaskItem
from cast_vllm.method.tasks.prompts import build_prompt, build_prompts, plain_prompt
from cast_vllm.method.tasks.records import iter_records, load_task
from cast_vllm.method.tasks.spec import TaskSpec, default_task, load_task_spec

__all__ = [
    "FORMATS", "LETTERS", "TASK_FORMATS", "ParsedRecord", "TaskFileError", "TaskFormat", "TaskItem", "TaskSpec",
    "build_prompt", "build_prompts", "default_task", "get_format", "guess_format", "iter_records", "load_task",
    "load_task_spec", "plain_prompt", "register_format",
]
