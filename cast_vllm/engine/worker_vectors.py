"""The vectors a worker holds: the worker side of shipping vectors in-band.

Before the first request that uses a vector is scheduled, the engine core ships the vector's
safetensors bytes to every worker once (``cast_put_vector``, an RPC through vLLM's executor, so
it reaches every tensor- and pipeline-parallel rank on every node). The worker checks the bytes
against the content hash the request names, keeps the vector in memory and writes it to its own
blob folder (``$CAST_VLLM_WORKER_HOME/blobs``, default ``$CAST_VLLM_HOME``), from where an
evicted vector is read back. So workers need no filesystem shared with the front end.

A vector that was never shipped (a scheduler driven without an engine core) is read from the
paths the request carries, which works where front end and workers share a filesystem;
``from_paths`` counts those reads.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cast_vllm import envs
from cast_vllm.atomic import atomic_write_bytes
from cast_vllm.store import BlobCache
from cast_vllm.vectors import SteeringVector, VectorFileError

logger = logging.getLogger(__name__)


class WorkerVectors:
    def __init__(self, capacity: int):
        self.dir = Path(envs.worker_home()).expanduser() / "blobs"
        self.cache = BlobCache(capacity)
        self.received = 0       # vectors shipped to this worker
        self.from_paths = 0     # vectors read from the request's paths instead

    def put(self, content_hash: str, data: bytes) -> None:
        """Keep a shipped vector; raises ``VectorFileError`` when the bytes do not hold it."""
        vector = SteeringVector.from_safetensors_bytes(bytes(data), where=f"shipped vector {content_hash[:12]}")
        if vector.content_hash() != content_hash:
            raise VectorFileError(f"shipped vector {content_hash[:12]} holds other numbers "
                                  f"(content hash {vector.content_hash()[:12]})")
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.local_path(content_hash), bytes(data))
        self.cache.put(content_hash, vector)
        self.received += 1
        logger.debug("received steering vector %s (%d bytes) into %s", content_hash[:12], len(data), self.dir)

    def local_path(self, content_hash: str) -> Path:
        return self.dir / f"{content_hash}.safetensors"

    def get(self, content_hash: str, blob: str, source: str | None) -> SteeringVector:
        """The vector with this hash: shipped (memory, then this worker's folder), else from the
        request's paths. Raises ``VectorFileError`` when none holds it."""
        local = self.local_path(content_hash)
        if content_hash in self.cache or local.is_file():
            return self.cache.get(content_hash, local)
        vector = self.cache.get(content_hash, blob, source)
        self.from_paths += 1
        return vector
