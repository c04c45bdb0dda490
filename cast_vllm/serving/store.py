"""The server's vector store: an upload directory in front of the user's vector directory.

Uploads land in the upload directory (searched first, so an upload shadows a file of the same
name). Deleting a name over HTTP removes the uploaded file, and hides (never deletes) a file of
the user's ``--vector-dir``: the server does not destroy files it did not create. Loading a
hidden name by ``POST`` brings it back.
"""

from __future__ import annotations

from pathlib import Path

from cast_vllm.store import SUFFIXES, VectorStore
from cast_vllm.vectors import VectorFileError, check_vector_name


class ServingVectorStore(VectorStore):
    """``VectorStore`` with an upload directory first and a set of names unloaded by ``DELETE``."""

    def __init__(self, upload_dir: str | Path, vector_dirs, blob_dir: str | Path | None = None):
        super().__init__([upload_dir, *vector_dirs], blob_dir=blob_dir)
        self.hidden: set[str] = set()

    @property
    def upload_dir(self) -> Path:
        return self.dirs[0]

    def names(self) -> list[str]:
        return [n for n in super().names() if n not in self.hidden]

    def path_of(self, name: str) -> Path:
        if check_vector_name(name) in self.hidden:
            known = self.names()
            shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
            raise VectorFileError(f"unknown steering vector {name!r} (known: {shown or 'none'})")
        return super().path_of(name)

    def find(self, name: str) -> Path | None:
        """The file serving ``name``, or None when the name is unknown (or unloaded)."""
        try:
            return self.path_of(name)
        except VectorFileError:
            return None

    def uploaded_names(self) -> set[str]:
        """Names with a file in the upload directory (what ``cast_max_uploaded_vectors`` counts)."""
        return {p.stem for suffix in SUFFIXES for p in self.upload_dir.glob(f"*{suffix}") if p.is_file()}

    def source_of(self, path: Path) -> str:
        return "upload" if path.parent == self.upload_dir else "vector_dir"

    def unhide(self, name: str) -> None:
        self.hidden.discard(name)

    def unload(self, name: str) -> str:
        """Remove an uploaded file and hide any directory file of that name; returns the source."""
        path = self.path_of(name)
        source = self.source_of(path)
        if source == "upload":
            self.remove(name)
        if self.find(name) is not None:  # a vector-dir file (possibly shadowed by the upload)
            with self._lock:
                for d in self.dirs[1:]:
                    for p in (d / f"{name}.safetensors", d / f"{name}.gguf"):
                        self._cache.pop(p, None)
            self.hidden.add(name)
        return source
