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
        self._cache: dict[Path, tuple[tuple[int, int, int] | None, StoredVector]] = {}
        self._verified_blobs: dict[Path, tuple[int, int, int] | None] = {}
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
        """Load (cached by file identity), validate and blob a vector by name.

        The blob is checked on every call (one ``stat``): a blob removed or replaced since it
        was verified is verified again and rebuilt from the vector if it is missing or corrupt.
        """
        path = self.path_of(name)
        ident = _identity(path)
        with self._lock:
            hit = self._cache.get(path)
        if hit is None or hit[0] != ident:
            vector = SteeringVector.load(path)
            digest = vector.content_hash()
            stored = StoredVector(name=name, path=path, vector=vector, content_hash=digest,
                                  blob=self.blob_dir / f"{digest}.safetensors")
            with self._lock:
                self._cache[path] = (ident, stored)
        else:
            stored = hit[1]
        self._ensure_blob(stored)
        return stored

    def _ensure_blob(self, stored: StoredVector) -> None:
        blob_ident = _identity(stored.blob)
        if blob_ident is not None and self._verified_blobs.get(stored.blob) == blob_ident:
            return
        if blob_ident is not None:
            try:
                if SteeringVector.load(stored.blob).content_hash() == stored.content_hash:
                    self._verified_blobs[stored.blob] = blob_ident
                    return
            except VectorFileError:
                pass
            logger.warning("blob %s does not match its content hash; rebuilding it from %s", stored.blob, stored.path)
        stored.vector.save(stored.blob)
        self._verified_blobs[stored.blob] = _identity(stored.blob)

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

    def is_loaded(self, path: Path) -> bool:
        """Validated and cached (what admission will use without reading the file again)."""
        with self._lock:
            hit = self._cache.get(path)
        return hit is not None and hit[0] == _identity(path)

    def remove(self, name: str) -> None:
        path = self.path_of(name)
        path.unlink()
        with self._lock:
            self._cache.pop(path, None)


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or rewritten (None: no such file)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def load_blob(content_hash: str, blob: str | Path, source: str | Path | None = None) -> SteeringVector:
    """The vector with this content hash: from its blob, else from its source file (rebuilding the blob).

    Raises ``VectorFileError`` when neither holds those numbers any more.
    """
    problem = "is missing"
    try:
        vec = SteeringVector.load(blob)
        if vec.content_hash() == content_hash:
            return vec
        problem = "does not match its content hash"
    except VectorFileError as exc:
        problem = f"cannot be read ({exc})" if Path(blob).exists() else "is missing"
    if source is not None:
        try:
            vec = SteeringVector.load(source)
        except VectorFileError as exc:
            raise VectorFileError(f"blob {blob} {problem}, and its source cannot be read: {exc}") from None
        if vec.content_hash() == content_hash:
            logger.warning("blob %s %s; rebuilt from %s", blob, problem, source)
            vec.save(blob)
            return vec
        raise VectorFileError(f"blob {blob} {problem}, and its source {source} now holds other numbers")
    raise VectorFileError(f"blob {blob} {problem}")


class BlobCache:
    """LRU of vectors by content hash (blobs are immutable), for the engine core and the workers."""

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._items: OrderedDict[str, SteeringVector] = OrderedDict()

    def __contains__(self, content_hash: str) -> bool:
        return content_hash in self._items

    def get(self, content_hash: str, blob: str | Path, source: str | None = None) -> SteeringVector:
        vec = self._items.get(content_hash)
        if vec is None:
            vec = load_blob(content_hash, blob, source)
            self.put(content_hash, vec)
        else:
            self._items.move_to_end(content_hash)
        return vec

    def put(self, content_hash: str, vector: SteeringVector) -> None:
        self._items[content_hash] = vector
        self._items.move_to_end(content_hash)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
