"""`cast-vllm` command line. Each subcommand lives in ``cast_vllm/commands/<name>.py`` with
``add_arguments(parser)`` and ``run(args) -> int``; modules load only when their command runs."""

from __future__ import annotations

import argparse
import importlib
import sys

from cast_vllm.logging_setup import configure_cli_logging

COMMANDS = {
    "prepare-model": ("prepare_model", "prepare an embedded model and print its folder"),
    "extract": ("extract", "build a CAST steering vector from a source task"),
    "generate": ("generate", "steered generation from the command line"),
    "serve": ("serve", "OpenAI-compatible server with per-request steering"),
    "eval": ("eval", "evaluate cross-task transfer (zero-shot, ICL, CAST, controls)"),
    "bench": ("bench", "throughput, latency and kernel benchmarks"),
    "demo": ("demo", "the end-to-end demo on the default model"),
    "vectors": ("vectors", "list, inspect, convert and combine vector files (GGUF, repeng, steering-vectors, .pt)"),
}


def _load(name: str):
    return importlib.import_module(f"cast_vllm.commands.{COMMANDS[name][0]}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cast-vllm", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name in argv:  # only the chosen command pays for its imports
            _load(name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = build_parser(argv).parse_known_args(argv)
    if extra and args.command != "serve":
        print(f"cast-vllm {args.command}: unrecognized arguments: {' '.join(extra)}", file=sys.stderr)
        return 2
    args.extra = extra
    configure_cli_logging(args.verbose)
    return int(_load(args.command).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
