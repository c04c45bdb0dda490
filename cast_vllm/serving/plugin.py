"""vLLM endpoint plugin (entry point ``vllm.endpoint_plugins``, name ``cast_vllm``): the steering
HTTP surface of vLLM's own OpenAI-compatible server, so ``vllm serve`` and ``cast-vllm serve`` are
one server.

vLLM loads endpoint plugins only when ``VLLM_PLUGINS`` names them (``cast-vllm serve`` sets it;
under plain ``vllm serve`` the operator does, e.g. ``VLLM_PLUGINS=cast_vllm``, which also
allows our general plugin of the same name). Two phases:

- ``attach_router`` (inside vLLM's ``build_app``): add the vector routes.
- ``init_state`` (inside ``init_app_state``, the engine running): for a steering wrapper model,
  build the ``SteeringService`` from the ``cast_*`` settings in the HF config (admission shared
  with the engine hook, the ``generate`` wrapper, the metrics collector) and put our middleware
  outermost. For any other model, or vLLM's render server (no engine), take the routes away
  again, so the app is exactly vLLM's.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

PLUGIN_NAME = "cast_vllm"
WORKER_EXTENSION = "cast_vllm.engine.worker_extension.SteeringWorkerExtension"
_collector = None  # the collector registered on prometheus' registry by this process, if any


class SteeringEndpoints:
    """The ``EndpointPlugin`` (``vllm/plugins/endpoint_plugins/interface.py``)."""

    name = PLUGIN_NAME
    required_tasks = ("generate",)

    def __init__(self):
        self.app = None
        self.routes: list = []

    def attach_router(self, app) -> None:
        from cast_vllm.serving.routes import build_router

        before = {id(r) for r in app.router.routes}
        app.include_router(build_router())
        self.app = app
        self.routes = [r for r in app.router.routes if id(r) not in before]

    async def init_state(self, engine_client, state, args) -> None:
        from cast_vllm.engine.settings import is_steering_model
        from cast_vllm.serving.access import warn_if_exposed

        model_config = getattr(engine_client, "model_config", None)
        if model_config is None or not is_steering_model(model_config.hf_config):
            self.detach()
            return
        if (getattr(args, "api_server_count", None) or 1) > 1:
            raise RuntimeError("steering endpoints run in one API server process (uploads, in-flight vectors and "
                               "the steering metrics live in it): pass --api-server-count 1")
        keep_logs_visible()
        service = build_service(engine_client, args)
        state.cast_steering = service
        self._add_middleware(service, args)
        _register_collector(service)
        warn_if_exposed(args)
        logger.info("steering endpoints on: vectors from %s, uploads into %s (%s)",
                    ", ".join(str(d) for d in service.store.dirs[1:]), service.store.upload_dir,
                    ", ".join(service.store.names()) or "no vectors yet")

    def detach(self) -> None:
        """Remove our routes: the model is not a steering wrapper (or there is no engine)."""
        if self.app is None:
            return
        mine = {id(r) for r in self.routes}
        self.app.router.routes[:] = [r for r in self.app.router.routes if id(r) not in mine]
        self.app.openapi_schema = None
        self.routes = []

    def _add_middleware(self, service, args) -> None:
        """Ours outermost: ``build_app`` added vLLM's CORS and API-key middleware after our routes."""
        from starlette.middleware import Middleware

        from cast_vllm.serving.access import api_keys
        from cast_vllm.serving.middleware import SteeringServerMiddleware

        self.app.user_middleware.insert(0, Middleware(SteeringServerMiddleware, service=service,
                                                      api_keys=api_keys(args)))
        self.app.middleware_stack = None  # Starlette rebuilds the stack on the first request


def build_service(engine_client, args):
    """The ``SteeringService`` of this API server, installed on ``engine_client``."""
    from cast_vllm.engine.settings import ServingSettings, SteeringSettings
    from cast_vllm.serving.service import SteeringService
    from cast_vllm.serving.store import ServingVectorStore

    hf_config = engine_client.model_config.hf_config
    serving = ServingSettings.from_hf_config(hf_config)
    upload_dir = serving.upload_dir or private_upload_dir()
    Path(upload_dir).mkdir(parents=True, exist_ok=True)
    store = ServingVectorStore(upload_dir, SteeringSettings.from_hf_config(hf_config).vector_dirs)
    service = SteeringService(engine_client, store, serving)
    service.install()
    return service


def keep_logs_visible() -> None:
    """Give our loggers vLLM's level: ``build_app`` imports the SageMaker standards package, which
    sets the root logger to ERROR, and our warnings (an exposed bind address) would go unseen."""
    ours = logging.getLogger("cast_vllm")
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.getLogger("vllm").getEffectiveLevel())


def private_upload_dir() -> str:
    """A fresh upload directory, removed when the process exits."""
    path = tempfile.mkdtemp(prefix="cast-vllm-uploads-")
    atexit.register(shutil.rmtree, path, True)
    return path


def _register_collector(service) -> None:
    """The ``cast_steering_*`` series on vLLM's ``/metrics`` (one collector per process)."""
    global _collector
    import prometheus_client

    from cast_vllm.serving.metrics import SteeringCollector

    if _collector is not None:
        prometheus_client.REGISTRY.unregister(_collector)
    _collector = SteeringCollector(service)
    prometheus_client.REGISTRY.register(_collector)
