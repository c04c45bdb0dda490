"""The OpenAI-compatible steered server (``cast-vllm serve``).

- ``server``:       vLLM's server arguments and start-up, with steering added
- ``service``:      admission before streaming, in-flight tracking, vector management, counters
- ``routes``:       ``/v1/steering/vectors`` routes and the one ASGI middleware that ties the rest in
- ``origin``:       steering routes closed to browsers of other sites (no CORS, Origin checked)
- ``request_body``: top-level ``steering`` moved into ``vllm_xargs``; steered beam search refused
- ``receipts``:     the steering receipt on steered responses (header, body field, final SSE chunk)
- ``store``:        upload directory in front of ``--vector-dir``; DELETE semantics
- ``metrics``:      the Prometheus collector behind the ``cast_steering_*`` series on ``/metrics``
- ``launcher``:     run the server as a child process (tests, benchmarks)
"""
