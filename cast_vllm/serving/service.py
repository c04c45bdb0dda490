"""Steering state of one API server: admission before streaming starts, in-flight tracking,
vector management and the counters behind ``/metrics``.

Why a wrapper around ``EngineClient.generate``: vLLM runs ``process_inputs`` (our admission hook)
only once the response generator is iterated, which for ``stream=true`` is after the HTTP 200
header has gone out, and it reports any failure there as a 500 ``EngineGenerateError``. The
wrapper validates the steering spec when the serving layer *creates* the generator, so a bad
spec is an HTTP 400 with the admission message on every endpoint, streaming or not. It also
knows when each request ends, which is what ``DELETE`` and the in-flight gauges need, and it
feeds each steered request's outputs to its HTTP receipt (``receipts``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import Counter
from pathlib import Path

from vllm.exceptions import VLLMValidationError
from vllm.renderers.inputs.preprocess import extract_prompt_len

from cast_vllm.engine.admission import Admission
from cast_vllm.engine.resolved import ResolvedSteering
from cast_vllm.engine.settings import ServingSettings, SteeringSettings
from cast_vllm.errors import CastVllmError
from cast_vllm.serving import receipts
from cast_vllm.serving.store import ServingVectorStore
from cast_vllm.spec import SteeringSpecError
from cast_vllm.vectors import MAX_VECTOR_NAME_LENGTH, SteeringVector, VectorFileError, check_vector_name

logger = logging.getLogger(__name__)


class SteeringRequestError(CastVllmError, VLLMValidationError, ValueError):
    """A request refused for its steering; vLLM's error handlers turn it into HTTP 400."""

    def __init__(self, message: str):
        super().__init__(message, parameter="vllm_xargs")


class VectorRouteError(CastVllmError):
    """A vector-management request that cannot be done; carries its HTTP status."""

    def __init__(self, status: int, message: str, err_type: str = "BadRequestError"):
        super().__init__(message)
        self.status = status
        self.err_type = err_type


class _Ticket:
    """One request's claim on its vector names; released exactly once."""

    __slots__ = ("service", "names", "done")

    def __init__(self, service: "SteeringService", names: tuple[str, ...]):
        self.service, self.names, self.done = service, names, False
        service.in_flight_requests += 1
        service.in_flight_vectors.update(names)

    def release(self) -> None:
        if self.done:
            return
        self.done = True
        self.service.in_flight_requests -= 1
        self.service.in_flight_vectors.subtract(self.names)
        for name in self.names:
            if self.service.in_flight_vectors[name] <= 0:
                del self.service.in_flight_vectors[name]


class SteeringService:
    def __init__(self, engine_client, store: ServingVectorStore, limits: ServingSettings):
        self.engine_client = engine_client
        self.store = store
        self.limits = limits
        self.uploads_in_progress = 0
        model_config = engine_client.model_config
        self.hidden_size = model_config.get_hidden_size()
        self.num_layers = model_config.get_total_num_hidden_layers()
        self.settings = SteeringSettings.of_engine(engine_client.vllm_config)
        # One admission (and so one store and one cache) for the HTTP checks and the engine hook.
        self.admission = Admission(self.settings, self.hidden_size, self.num_layers)
        self.admission.store = store
        self.steered_requests = 0
        self.rejected_requests = 0
        self.in_flight_requests = 0
        self.in_flight_vectors: Counter[str] = Counter()
        self.engine_stats: dict = {}
        self._info_cache: dict[Path, tuple[tuple[int, int], dict]] = {}

    @property
    def max_upload_bytes(self) -> int:
        return self.limits.max_upload_bytes

    # ---- request path ------------------------------------------------------------------
    def install(self) -> None:
        """Share our admission with the engine hook and wrap ``generate`` (see module doc)."""
        self.engine_client.input_processor._cast_admission = self.admission
        original = self.engine_client.generate

        def generate(prompt, sampling_params, request_id, *args, **kwargs):
            resolved = self.admit(sampling_params)
            stream = original(prompt, sampling_params, request_id, *args, **kwargs)
            if resolved is None:
                return stream
            ticket = _Ticket(self, tuple(dict.fromkeys(c.vector for c in resolved.components)))
            tracker = receipts.track(resolved, self._prompt_len(prompt), sampling_params)
            tracked = self._tracked(stream, ticket, tracker)
            weakref.finalize(tracked, ticket.release)  # a generator never iterated still releases
            return tracked

        self.engine_client.generate = generate

    def admit(self, sampling_params) -> ResolvedSteering | None:
        """The request's resolved steering (None if unsteered); raises ``SteeringRequestError``.

        Every request with ``extra_args`` is checked, so a misspelt steering key or a key in the
        engine's reserved namespace is a 400 here rather than a failure inside the stream.
        """
        extra = getattr(sampling_params, "extra_args", None)
        if not extra:
            return None
        try:
            resolved = self.admission.resolve(extra)
        except (SteeringSpecError, VectorFileError) as exc:
            self.rejected_requests += 1
            raise SteeringRequestError(str(exc)) from None
        if resolved is not None:
            self.steered_requests += 1
        return resolved

    def _prompt_len(self, prompt) -> int:
        """Prompt tokens as the engine will see them (the streamed receipt header needs it up front)."""
        try:
            return int(extract_prompt_len(self.engine_client.model_config, prompt) or 0)
        except Exception as exc:  # a prompt form we cannot measure: the first output carries the count
            logger.debug("prompt length unknown before generation (%s); the receipt takes it from the output", exc)
            return 0

    @staticmethod
    async def _tracked(stream, ticket: _Ticket, tracker: receipts.ReceiptTracker | None):
        try:
            async for out in stream:
                if tracker is not None:
                    tracker.observe(out)
                yield out
        except Exception as exc:
            cause = exc.__cause__
            # Refused by the engine hook after our check passed (e.g. vector deleted in between).
            if isinstance(cause, SteeringSpecError):
                raise SteeringRequestError(str(cause)) from None
            raise
        finally:
            ticket.release()
            await stream.aclose()

    # ---- engine-side counters ----------------------------------------------------------
    async def refresh_engine_stats(self, timeout: float = 5.0) -> dict:
        """Ask the engine core (between steps) for slot waits and per-worker slot counters."""
        try:
            self.engine_stats = await asyncio.wait_for(
                self.engine_client.engine_core.call_utility_async("cast_steering_stats"), timeout)
        except Exception as exc:
            logger.warning("could not read steering counters from the engine core: %s", exc)
        return self.engine_stats

    def worker_totals(self) -> dict:
        """Slot counters of the first worker: every tensor/pipeline rank makes the same decisions."""
        workers = [w for w in self.engine_stats.get("workers") or [] if w]
        return workers[0] if workers else {}

    # ---- vector management -------------------------------------------------------------
    def _checked_name(self, name: str) -> str:
        """A plain vector name of at most ``MAX_VECTOR_NAME_LENGTH`` characters (400 otherwise).

        Checked here too, not only in ``check_vector_name``: a long name must never reach the
        filesystem (ENAMETOOLONG would be a 500).
        """
        if isinstance(name, str) and len(name) > MAX_VECTOR_NAME_LENGTH:
            raise VectorRouteError(400, f"vector name of {len(name)} characters exceeds the limit of "
                                        f"{MAX_VECTOR_NAME_LENGTH}")
        try:
            return check_vector_name(name)
        except VectorFileError as exc:
            raise VectorRouteError(400, str(exc)) from None

    def _path(self, name: str) -> Path:
        path = self.store.find(self._checked_name(name))
        if path is None:
            raise VectorRouteError(404, f"unknown steering vector {name!r}", "NotFoundError")
        return path

    def info(self, name: str, path: Path | None = None) -> dict:
        path = path or self._path(name)
        try:
            st = path.stat()
        except FileNotFoundError:  # removed from the directory just now
            raise VectorRouteError(404, f"unknown steering vector {name!r}", "NotFoundError") from None
        ident = (st.st_mtime_ns, st.st_size)
        cached = self._info_cache.get(path)
        if cached is None or cached[0] != ident:
            body: dict = {"format": path.suffix.lstrip(".")}
            try:
                vec = SteeringVector.load(path)
                body.update(layers=vec.layers, hidden_size=vec.hidden_size, metadata=vec.metadata)
                vec.check_against_model(self.hidden_size, self.num_layers, f"vector {name!r}")
                body.update(usable=True)
            except VectorFileError as exc:
                body.update(usable=False, error=str(exc))
            cached = (ident, body)
            self._info_cache[path] = cached
        return {"object": "steering_vector", "name": name, "source": self.store.source_of(path), **cached[1],
                "loaded": self.store.is_loaded(path), "in_flight": self.in_flight_vectors.get(name, 0)}

    def list(self) -> list[dict]:
        out = []
        for name in self.store.names():
            path = self.store.find(name)
            if path is not None:
                try:
                    out.append(self.info(name, path))
                except VectorRouteError:
                    continue
        return out

    def _load(self, name: str) -> dict:
        try:
            stored = self.store.get(name)
            stored.vector.check_against_model(self.hidden_size, self.num_layers, f"vector {name!r}")
        except VectorFileError as exc:
            raise VectorRouteError(400, str(exc)) from None
        return self.info(name, stored.path)

    def load(self, name: str) -> dict:
        """Validate a vector of the vector directory and keep it ready (undoes a DELETE)."""
        self._checked_name(name)
        hidden = name in self.store.hidden
        self.store.unhide(name)
        if self.store.find(name) is None:
            raise VectorRouteError(404, f"no vector file named {name!r} in {[str(d) for d in self.store.dirs]}",
                                   "NotFoundError")
        try:
            return self._load(name)
        except VectorRouteError:
            if hidden:
                self.store.hidden.add(name)
            raise

    def check_upload(self, name: str, overwrite: bool) -> None:
        """Refuse an upload that cannot be stored, before its body is read (400 / 409)."""
        self._checked_name(name)
        existing = self.store.find(name)
        if existing is not None and not overwrite:
            raise VectorRouteError(409, f"steering vector {name!r} already exists ({self.store.source_of(existing)}); "
                                        "pass overwrite=true or DELETE it first", "ConflictError")
        uploaded = self.store.uploaded_names()
        if name not in uploaded and len(uploaded) >= self.limits.max_uploaded_vectors:
            raise VectorRouteError(409, f"the server already keeps {len(uploaded)} uploaded vectors, the limit "
                                        f"(--max-uploaded-vectors {self.limits.max_uploaded_vectors}, hf_overrides "
                                        "cast_max_uploaded_vectors); DELETE one first",
                                   "ConflictError")

    @contextlib.contextmanager
    def upload_slot(self):
        """Hold one of ``max_concurrent_uploads`` upload buffers (429 when all are taken)."""
        if self.uploads_in_progress >= self.limits.max_concurrent_uploads:
            raise VectorRouteError(429, f"{self.uploads_in_progress} uploads are already in progress, the limit "
                                        f"(--max-concurrent-uploads {self.limits.max_concurrent_uploads}, hf_overrides "
                                        "cast_max_concurrent_uploads); retry later",
                                   "RateLimitError")
        self.uploads_in_progress += 1
        try:
            yield
        finally:
            self.uploads_in_progress -= 1

    def upload(self, name: str, data: bytes, overwrite: bool = False) -> dict:
        """Parse (safetensors only, never pickle), check against the model, store, load."""
        self._checked_name(name)
        try:
            vec = SteeringVector.from_safetensors_bytes(bytes(data), where=f"upload {name!r}")
            vec.check_against_model(self.hidden_size, self.num_layers, f"upload {name!r}")
        except VectorFileError as exc:
            raise VectorRouteError(400, str(exc)) from None
        self.check_upload(name, overwrite)  # again: other uploads may have finished meanwhile
        self.store.register(name, vec)
        self.store.unhide(name)
        logger.info("uploaded steering vector %r (%d layers)", name, len(vec.layers))
        return self._load(name)

    def delete(self, name: str) -> dict:
        """Refused (409) while requests use the name; otherwise the name stops resolving at once."""
        self._path(name)
        busy = self.in_flight_vectors.get(name, 0)
        if busy:
            raise VectorRouteError(409, f"steering vector {name!r} is used by {busy} request(s) in flight; "
                                        "retry when they finish", "ConflictError")
        source = self.store.unload(name)
        logger.info("deleted steering vector %r (%s)", name, source)
        return {"object": "steering_vector.deleted", "name": name, "source": source, "deleted": True}
