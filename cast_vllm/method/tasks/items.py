"""What every task module shares: the parsed example (``TaskItem``) and the error that names a
bad task or data file (``TaskFileError``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from cast_vllm.errors import CastVllmError

#: option keys of multiple-choice items, in order
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class TaskFileError(CastVllmError, ValueError):
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
