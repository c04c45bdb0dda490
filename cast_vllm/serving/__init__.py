"""The OpenAI-compatible steered server: vLLM's own server with our endpoint plugin
(``vllm serve`` and ``cast-vllm serve`` are one server).

- ``plugin``:       the ``vllm.endpoint_plugins`` entry point: routes, middleware, service, metrics;
                    inert unless the model is a steering wrapper
- ``server``:       ``cast-vllm serve``: fills ``hf_overrides`` and ``VLLM_PLUGINS``, runs vLLM's ``serve``
- ``access``:       the API keys vLLM enforces; the warning for an exposed bind without a key
- ``service``:      admission before streaming, in-flight tracking, vector management, counters
- ``routes``:       the ``/v1/steering/vectors`` routes
- ``middleware``:   the one outermost ASGI middleware that ties the rest in
- ``origin``:       steering routes closed to browsers of other sites (no CORS, Origin checked)
- ``request_body``: top-level ``steering`` moved into ``vllm_xargs``; steered beam search refused
- ``receipts``:     the steering receipt on steered responses (header, body field, final SSE chunk)
- ``store``:        upload directory in front of the vector directories; DELETE semantics
- ``metrics``:      the Prometheus collector behind the ``cast_steering_*`` series on ``/metrics``
- ``launcher``:     run the server (either command) as a child process (tests, benchmarks)

The ``cast_*`` settings both commands read are listed in ``cast_vllm.engine.settings``.
"""
