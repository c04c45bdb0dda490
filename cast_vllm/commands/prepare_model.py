import sys

from cast_vllm.model_zoo import DEFAULT_MODEL, MODELS, PrepareModelError, prepare_model


def add_arguments(p):
    p.add_argument("name", nargs="?", default=DEFAULT_MODEL, choices=sorted(MODELS))
    p.add_argument("--out", default=None, help="output folder (default: $CAST_VLLM_HOME/models/NAME)")


def run(args) -> int:
    try:
        path = prepare_model(args.name, args.out)
    except PrepareModelError as exc:
        print(f"cast-vllm prepare-model: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0
