"""Vector stores: directories of vector files, looked up by name (the file stem).

Several processes (front end, engine core, workers) must see the same vectors. A name is
resolved once, at admission, to a content-addressed *blob* (``<blob_dir>/<sha256>.safetensors``)
and the blob path travels with the request, so a worker never sees a file that changed under it
and editing a vector can never reuse stale prefix-cache blocks.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cast_vllm.home import cast_home
from cast_vllm.vectors import SteeringVector, VectorFileError, check_vector_name

logger = logging.getLogger(__name__)
SUFFIXES = (".safetensors", ".gguf")


@dataclass(frozen=True)
class StoredVector:
    name: str
    path: Path
    vector: SteeringVector
    content_hash: str
    blob: Path


class VectorStore:
    """Name -> vector over an ordered list of directories (the first one is writable)."""

    def __init__(self, dirs, blob_dir: str | Path | None = None):
        self.dirs = [Path(d).expanduser().resolve() for d in dirs]
        if not self.dirs:
            raise VectorFileError("a vector store needs at least one directory")
        for d in self.dirs:
            if not d.is_dir():
                raise VectorFileError(f"vector directory {d} does not exist")
        self.blob_dir = Path(blob_dir) if blob_dir else cast_home() / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self._cache: dict[Path, tuple[tuple[int, int], StoredVector]] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        found = set()
        for d in self.dirs:
            for suffix in SUFFIXES:
                found.update(p.stem for p in d.glob(f"*{suffix}") if p.is_file())
        return sorted(found)

    def path_of(self, name: str) -> Path:
        check_vector_name(name)
        for d in self.dirs:
            for suffix in SUFFIXES:
                p = d / f"{name}{suffix}"
                if p.is_file():
                    return p
        known = self.names()
        shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
        raise VectorFileError(f"unknown steering vector {name!r} (known: {shown or 'none'})")

    def get(self, name: str) -> StoredVector:
        """Load (cached by file identity), validate and blob a vector by name."""
        path = self.path_of(name)
        st = path.stat()
        ident = (st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._cache.get(path)
            if hit and hit[0] == ident:
                return hit[1]
        vector = SteeringVector.load(path)
        digest = vector.content_hash()
        blob = self.blob_dir / f"{digest}.safetensors"
        if not blob.is_file():
            vector.save(blob)
        stored = StoredVector(name=name, path=path, vector=vector, content_hash=digest, blob=blob)
        with self._lock:
            self._cache[path] = (ident, stored)
        return stored

    def register(self, name: str, vector: SteeringVector) -> Path:
        """Save into the first (writable) directory; every process sees it at its next lookup."""
        check_vector_name(name)
        path = self.dirs[0] / f"{name}.safetensors"
        vector.save(path)
        stale = self.dirs[0] / f"{name}.gguf"
        if stale.exists():
            stale.unlink()
        logger.info("registered steering vector %r (%d layers) at %s", name, len(vector.layers), path)
        return path

    def remove(self, name: str) -> None:
        path = self.path_of(name)
        path.unlink()
        with self._lock:
            self._cache.pop(path, None)


class BlobCache:
    """Worker-side LRU of vectors by content hash (blobs are immutable)."""

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._items: OrderedDict[str, SteeringVector] = OrderedDict()

    def get(self, content_hash: str, blob: str) -> SteeringVector:
        vec = self._items.get(content_hash)
        if vec is None:
            vec = SteeringVector.load(blob)
            if vec.content_hash() != content_hash:
                raise VectorFileError(f"blob {blob} does not match its hash {content_hash}")
            self._items[content_hash] = vec
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(content_hash)
        return vec
