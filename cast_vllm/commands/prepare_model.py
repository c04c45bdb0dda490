from cast_vllm.model_zoo import DEFAULT_MODEL, MODELS, prepare_model


def add_arguments(p):
    p.add_argument("name", nargs="?", default=DEFAULT_MODEL, choices=sorted(MODELS))
    p.add_argument("--out", default=None, help="output folder (default: $CAST_VLLM_HOME/models/NAME)")


def run(args) -> int:
    print(prepare_model(args.name, args.out))
    return 0
