"""Finished activation shards on disk, so a rerun after an interruption resumes.

Each shard is saved under a key that hashes the model files, the reader settings and the
shard's token ids, so a changed input can never reuse a stale shard. A shard file that cannot
be read (empty, cut short, not an array) is recomputed with a warning. Files are written
atomically, and ``ShardCheckpoint.remove_own`` deletes only this run's shard files: the folder
goes too only when cast-vllm made it (a marker file says so) and nothing else is in it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from cast_vllm.atomic import atomic_write
from cast_vllm.method.activations import ReaderConfig

logger = logging.getLogger(__name__)

#: file that marks a checkpoint folder cast-vllm created (so a later run may remove it)
CHECKPOINT_MARKER = ".cast-vllm-checkpoints"


def model_fingerprint(config: ReaderConfig) -> str:
    """Hash of the reader settings and the model files' names, sizes and mtimes."""
    h = hashlib.sha256()
    settings = {k: v for k, v in asdict(config).items() if k in {"model", "layers", "backend", "dtype"}}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    folder = Path(config.model)
    if folder.is_dir():
        for f in sorted(folder.iterdir()):
            if f.is_file() and (f.suffix in {".safetensors", ".bin", ".json"}):
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


class ShardCheckpoint:
    """Finished shards on disk, content-addressed; knows which files are its own (module doc)."""

    def __init__(self, directory: str | Path, fingerprint: str):
        self.dir = Path(directory)
        self.fingerprint = fingerprint
        self.owns_dir = self._claim_dir()
        self.used: set[Path] = set()    # shard files this run read or wrote

    def _claim_dir(self) -> bool:
        """Make the folder; True if cast-vllm made it, now or in an earlier (interrupted) run."""
        try:
            self.dir.mkdir(parents=True)
        except FileExistsError:
            if not self.dir.is_dir():
                raise
            return (self.dir / CHECKPOINT_MARKER).is_file()
        (self.dir / CHECKPOINT_MARKER).write_text("made by cast-vllm extract for activation shards; safe to delete\n")
        return True

    def path(self, shard: Sequence[Sequence[int]]) -> Path:
        h = hashlib.sha256(self.fingerprint.encode())
        for ids in shard:
            h.update(np.asarray(ids, dtype=np.int64).tobytes())
            h.update(b"|")
        return self.dir / f"shard-{h.hexdigest()[:40]}.npy"

    def load(self, shard: Sequence[Sequence[int]]) -> np.ndarray | None:
        """The saved activations, or None when missing or unusable (then the shard is recomputed)."""
        p = self.path(shard)
        if not p.is_file():
            return None
        try:
            with open(p, "rb") as f:
                arr = np.lib.format.read_array(f, allow_pickle=False)
        except Exception as exc:   # a cache file: whatever cannot be read is recomputed
            logger.warning("checkpoint %s is unreadable (%s: %s); recomputing its shard", p, type(exc).__name__, exc)
            return None
        if arr.ndim != 3 or arr.dtype != np.float32 or len(arr) != len(shard):
            logger.warning("checkpoint %s holds a %s %s array, not %d prompts' activations; recomputing its shard",
                           p, arr.dtype, list(arr.shape), len(shard))
            return None
        self.used.add(p)
        return arr

    def save(self, shard: Sequence[Sequence[int]], arr: np.ndarray) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)

        self.used.add(atomic_write(self.path(shard), write))

    def remove_own(self) -> None:
        """Delete this run's shard files; the folder too if cast-vllm made it and it is now empty."""
        for p in sorted(self.used):
            p.unlink(missing_ok=True)
        self.used.clear()
        if not self.owns_dir or not self.dir.is_dir():
            return
        others = [e.name for e in self.dir.iterdir() if e.name != CHECKPOINT_MARKER]
        if others:
            logger.info("keeping %s: it holds %d other files", self.dir, len(others))
            return
        (self.dir / CHECKPOINT_MARKER).unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:   # something appeared meanwhile: leave it
            pass
