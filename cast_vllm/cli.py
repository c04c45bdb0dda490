"""`cast-vllm` command line. Each subcommand lives in ``cast_vllm/commands/<name>.py`` with
``add_arguments(parser)`` and ``run(args) -> int``; modules load only when their command runs."""

from __future__ import annotations

import argparse
import importlib
import sys

from cast_vllm import __version__
from cast_vllm.engine.vllm_compat import VLLM_INSTALL_HINT
from cast_vllm.errors import CastVllmError
from cast_vllm.logging_setup import configure_cli_logging

DESCRIPTION = ("cast-vllm: CAST activation steering served by vLLM, with per-request steering vectors "
               "(many vectors in one batch).")
# Commands whose engine logs are their output (vLLM's own INFO lines stay).
LOUD_COMMANDS = {"serve"}

COMMANDS = {
    "prepare-model": ("prepare_model", "prepare an embedded model and print its folder"),
    "extract": ("extract", "build a CAST steering vector from a source task"),
    "generate": ("generate", "steered generation from the command line"),
    "batch": ("batch", "offline batch inference from a JSONL file (resumable, N Ray workers)"),
    "serve": ("serve", "OpenAI-compatible server with per-request steering"),
    "eval": ("eval", "evaluate cross-task transfer (zero-shot, ICL, CAST, controls)"),
    "bench": ("bench", "benchmarks: offline throughput, serving latency, extraction, kernel"),
    "demo": ("demo", "the end-to-end demo on the default model"),
    "vectors": ("vectors", "list, inspect, convert and combine vector files (GGUF, repeng, steering-vectors, .pt)"),
}


def _load(name: str):
    return importlib.import_module(f"cast_vllm.commands.{COMMANDS[name][0]}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cast-vllm", description=DESCRIPTION,
                                     epilog="cast-vllm COMMAND --help lists a command's options.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and vLLM's and Ray's INFO logs (hidden otherwise)")
    parser.add_argument("--version", action="version", version=f"cast-vllm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name in argv:  # only the chosen command pays for its imports
            _load(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose, command = _peek(argv)
    # Before any command module loads: vLLM reads its logging variables when first imported.
    configure_cli_logging(verbose, quiet=command not in LOUD_COMMANDS)
    try:
        args, extra = build_parser(argv).parse_known_args(argv)
        if extra and args.command != "serve":
            print(f"cast-vllm {args.command}: unrecognized arguments: {' '.join(extra)}", file=sys.stderr)
            return 2
        args.extra = extra
        return int(_load(args.command).run(args) or 0)
    except ModuleNotFoundError as exc:
        return _missing_dependency(exc)
    except CastVllmError as exc:   # ours name the problem: the message, not a traceback
        print(f"cast-vllm {command}: {exc}", file=sys.stderr)
        return exit_code(exc)


def exit_code(exc: CastVllmError) -> int:
    """2 for input we refuse (a ValueError: bad option, file or model name), 1 for anything else
    (an environment that cannot do it: a failed download, an unsupported vLLM)."""
    return 2 if isinstance(exc, ValueError) else 1


def _peek(argv: list[str]) -> tuple[bool, str | None]:
    """(-v given before the command, the command) without parsing the command's options."""
    verbose = False
    for arg in argv:
        if arg in ("-v", "--verbose"):
            verbose = True
        elif not arg.startswith("-"):
            return verbose, arg
    return verbose, None


def _missing_dependency(exc: ModuleNotFoundError) -> int:
    """vLLM, or another of our dependencies, missing: how to install it, instead of a traceback."""
    root = (exc.name or "").split(".")[0]
    if root == "vllm":
        print(f"cast-vllm: {VLLM_INSTALL_HINT}", file=sys.stderr)
    elif _declared_dependency(root):
        print(f"cast-vllm: {root} is not installed, although cast-vllm depends on it (installed with --no-deps?); "
              f"install cast-vllm with its dependencies:\n{VLLM_INSTALL_HINT}", file=sys.stderr)
    else:
        raise exc
    return 1


def _declared_dependency(module: str) -> bool:
    import re
    from importlib.metadata import PackageNotFoundError, requires

    try:
        names = {re.split(r"[\s;<>=!~\[]", r, maxsplit=1)[0].lower().replace("-", "_")
                 for r in requires("cast-vllm") or []}
    except PackageNotFoundError:
        return False
    module = module.lower()
    return module in names or {"yaml": "pyyaml", "torch": "torch"}.get(module) in names


if __name__ == "__main__":
    sys.exit(main())
