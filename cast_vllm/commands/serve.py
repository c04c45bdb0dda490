"""``cast-vllm serve``: vLLM's OpenAI-compatible server with per-request steering.

Options not listed here are vLLM server options and go to vLLM unchanged (``--api-key``,
``--dtype``, ``--max-model-len``, ``--enforce-eager``, ...). Ours become ``cast_*`` keys of
``hf_overrides``, the same keys a plain ``vllm serve`` user writes (``serving.server``).
"""


def add_arguments(p):
    from cast_vllm.engine.settings import (DEFAULT_MAX_CONCURRENT_UPLOADS, DEFAULT_MAX_SCALE,
                                           AUTO_SLOT_CAP, DEFAULT_MAX_UPLOAD_BYTES,
                                           DEFAULT_MAX_UPLOADED_VECTORS)
    from cast_vllm.serving.server import DEFAULT_HOST, DEFAULT_PORT

    p.add_argument("--model", default=None,
                   help="model folder, hub id or embedded model name (default: smollm2-135m, prepared if needed)")
    p.add_argument("--vector-dir", default=None,
                   help="directory of steering vectors, by file stem (default: $CAST_VLLM_HOME/vectors)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--max-steering-vectors", type=int, default=None,
                   help="steering slots: distinct steering configurations one batch can hold (default: vLLM's "
                        f"--max-num-seqs, at most {AUTO_SLOT_CAP} and 1 GiB of table)")
    p.add_argument("--max-steering-scale", type=float, default=DEFAULT_MAX_SCALE,
                   help="largest |scale| a request may ask for")
    p.add_argument("--upload-dir", default=None,
                   help="where uploaded vectors are kept (default: a private folder removed at exit)")
    p.add_argument("--max-upload-bytes", type=int, default=DEFAULT_MAX_UPLOAD_BYTES,
                   help="largest vector upload accepted, in bytes")
    p.add_argument("--max-uploaded-vectors", type=int, default=DEFAULT_MAX_UPLOADED_VECTORS,
                   help="uploaded vectors the server keeps at once (409 beyond: DELETE one first)")
    p.add_argument("--max-concurrent-uploads", type=int, default=DEFAULT_MAX_CONCURRENT_UPLOADS,
                   help="uploads read into memory at once (429 beyond)")
    p.epilog = "Any other option is passed to vLLM's OpenAI-compatible server (e.g. --api-key, --dtype)."


def run(args) -> int:
    from cast_vllm.engine.settings import default_vector_dir
    from cast_vllm.model_zoo import resolve
    from cast_vllm.serving.server import ServeOptions, run as run_server

    model = resolve(args.model)
    options = ServeOptions(model=model, vector_dir=args.vector_dir or default_vector_dir(), host=args.host,
                           port=args.port, max_steering_vectors=args.max_steering_vectors,
                           max_steering_scale=args.max_steering_scale, upload_dir=args.upload_dir,
                           max_upload_bytes=args.max_upload_bytes, max_uploaded_vectors=args.max_uploaded_vectors,
                           max_concurrent_uploads=args.max_concurrent_uploads)
    try:
        return run_server(options, list(getattr(args, "extra", None) or []))
    except KeyboardInterrupt:
        return 0
