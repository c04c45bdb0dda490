"""The batch output file: one JSON line per input request, in input order, written as shards
finish, so an interrupted run resumes after the last complete line.

A result line::

    {"index": 0, "id": "q1", "prompt_tokens": 12,
     "outputs": [{"text": "...", "token_ids": [...], "finish_reason": "length"}],
     "steering": {...the receipt...} | null, "error": null}

A request the engine refused (a bad steering spec, a prompt longer than the context) has
``"outputs": []`` and ``"error"`` saying why; the run goes on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from cast_vllm.batch.requests import BatchInputError, BatchRequest


def result_line(request: BatchRequest, output) -> dict:
    receipt = getattr(output, "steering", None)
    return {"index": request.index, "id": request.id, "prompt_tokens": len(output.prompt_token_ids or ()),
            "outputs": [{"text": c.text, "token_ids": list(c.token_ids), "finish_reason": c.finish_reason}
                        for c in output.outputs],
            "steering": None if receipt is None else receipt.to_dict(), "error": None}


def error_line(request: BatchRequest, error: str) -> dict:
    return {"index": request.index, "id": request.id, "prompt_tokens": None, "outputs": [], "steering": None,
            "error": error}


class ResultWriter:
    """Appends result lines in input order; on open, keeps the complete lines of an earlier run
    of the same input (checked by index and id) and cuts a torn last line."""

    def __init__(self, path: str | Path, requests: Sequence[BatchRequest], resume: bool = True):
        self.path = Path(path)
        self.requests = requests
        self.done = self._resume() if resume and self.path.exists() else 0
        if not resume or not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(b"")
        self.errors = 0
        self._file = self.path.open("ab")

    def _resume(self) -> int:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        done = 0
        for lineno, raw in enumerate(complete.splitlines(), 1):
            try:
                line = json.loads(raw)
                index, rid = line["index"], line["id"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise BatchInputError(f"{self.path}:{lineno} is not a result line; give another --output or "
                                      "--no-resume to overwrite it") from None
            if done >= len(self.requests) or (index, rid) != (done, self.requests[done].id):
                raise BatchInputError(f"{self.path}:{lineno} (index {index}, id {rid!r}) is not the result of this "
                                      f"input's request {done}; give another --output or --no-resume")
            done += 1
        if len(complete) != len(data):      # a line cut by the interruption: drop it
            with self.path.open("r+b") as f:
                f.truncate(len(complete))
        return done

    def write(self, lines: Sequence[dict]) -> None:
        for line in lines:
            if line["index"] != self.done:
                raise RuntimeError(f"result {line['index']} written out of order (expected {self.done})")
            self._file.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
            self.errors += line["error"] is not None
            self.done += 1
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
