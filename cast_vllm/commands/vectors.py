"""`cast-vllm vectors`: list, inspect, convert and combine steering vector files.

Formats: safetensors (ours), gguf (llama.cpp / repeng), pt (a [num_layers, hidden] tensor or a
{layer: tensor} dict), steering-vectors (torch.save of its SteeringVector), repeng-pickle (a pickled
ControlVector; read only with --allow-pickle). Bad input ends with a message and exit code 2.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

PROG = "cast-vllm vectors"


def add_arguments(p):
    from cast_vllm.vector_formats import FORMATS

    sub = p.add_subparsers(dest="vectors_command", required=True, metavar="SUBCOMMAND")
    pickle_help = ("read repeng pickles (.pkl); pickles can run code when loaded, so only for files you trust "
                   "(cast-vllm then builds only repeng's ControlVector and numpy arrays)")
    drop_help = "GGUF output only: leave out layer 0, which llama.cpp refuses (otherwise an error)"

    ls = sub.add_parser("list", help="the vector files in a folder: format, layers, hidden size, model, method",
                        description="the vector files in a folder (what `serve --vector-dir` offers is marked)")
    ls.add_argument("dir", help="a vector folder")
    ls.add_argument("--json", action="store_true", help="one JSON object per file")
    ls.add_argument("--allow-pickle", action="store_true", help=pickle_help)

    ins = sub.add_parser("inspect", help="layers, per-layer L2 norms, hidden size and provenance of one file",
                         description="layers, per-layer L2 norms, hidden size and provenance of one file")
    ins.add_argument("file")
    ins.add_argument("--from", dest="from_format", choices=FORMATS, help="format (default: from the suffix)")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.add_argument("--allow-pickle", action="store_true", help=pickle_help)

    conv = sub.add_parser("convert", help="convert a vector between formats",
                          description="convert a vector between formats; the numbers and layer ids are kept exactly")
    conv.add_argument("input")
    conv.add_argument("output")
    conv.add_argument("--from", dest="from_format", choices=FORMATS, help="input format (default: from the suffix)")
    conv.add_argument("--to", dest="to_format", choices=FORMATS, help="output format (default: from the suffix)")
    conv.add_argument("--allow-pickle", action="store_true", help=pickle_help)
    conv.add_argument("--drop-layer-0", action="store_true", help=drop_help)

    comb = sub.add_parser("combine", help="weighted sum of vectors, per layer: OUT IN1[:WEIGHT] IN2[:WEIGHT] ...",
                          description="weighted sum of vectors per layer (weight 1 when left out; a layer present "
                                      "in only some inputs sums over those); hidden sizes must match")
    comb.add_argument("output")
    comb.add_argument("inputs", nargs="+", metavar="IN[:WEIGHT]", help="a vector file, optionally :weight "
                      "(e.g. happy.gguf:1.5 sad.safetensors:-0.5)")
    comb.add_argument("--to", dest="to_format", choices=FORMATS, help="output format (default: from the suffix)")
    comb.add_argument("--allow-pickle", action="store_true", help=pickle_help)
    comb.add_argument("--drop-layer-0", action="store_true", help=drop_help)


def run(args) -> int:
    import logging

    from cast_vllm.vectors import VectorFileError

    if not getattr(args, "verbose", False):   # the gguf writer's INFO lines would bury our one-line result
        logging.getLogger("gguf").setLevel(logging.WARNING)

    handlers = {"list": _list, "inspect": _inspect, "convert": _convert, "combine": _combine}
    try:
        return handlers[args.vectors_command](args)
    except (VectorFileError, ValueError, OSError) as exc:
        print(f"{PROG} {args.vectors_command}: {exc}", file=sys.stderr)
        return 2


# ---- list -----------------------------------------------------------------------------------
def _list(args) -> int:
    from cast_vllm.store import SUFFIXES
    from cast_vllm.vector_formats import PICKLE_FORMATS, SUFFIX_FORMATS, read_vector
    from cast_vllm.vectors import VectorFileError

    folder = Path(args.dir)
    if not folder.is_dir():
        raise VectorFileError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in SUFFIX_FORMATS and not p.name.startswith(".") and p.is_file())
    served_by_name = {}   # what the vector store picks for a name: the first suffix in its order
    for suffix in reversed(SUFFIXES):
        for p in files:
            if p.suffix == suffix and _valid_name(p.stem):
                served_by_name[p.stem] = p
    rows, failed = [], 0
    for p in files:
        row = {"name": p.stem, "file": p.name, "served": served_by_name.get(p.stem) == p}
        fmt = SUFFIX_FORMATS[p.suffix.lower()]
        if fmt in PICKLE_FORMATS and not args.allow_pickle:
            row.update(format=fmt, note="not read: a pickle (pass --allow-pickle if you trust it)")
        else:
            try:
                vec, fmt = read_vector(p, allow_pickle=args.allow_pickle)
            except VectorFileError as exc:
                print(f"{PROG} list: {exc}", file=sys.stderr)
                failed += 1
                continue
            row.update(format=fmt, layers=vec.layers, hidden_size=vec.hidden_size,
                       model=vec.metadata.get("model", "unknown"), method=vec.metadata.get("method", "unknown"))
        rows.append(row)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        _print_table(rows)
    return 2 if failed else 0


def _valid_name(name: str) -> bool:
    from cast_vllm.vectors import VectorFileError, check_vector_name

    try:
        check_vector_name(name)
        return True
    except VectorFileError:
        return False


def _print_table(rows: list[dict]) -> None:
    header = ("NAME", "FORMAT", "LAYERS", "HIDDEN", "MODEL", "METHOD", "SERVED")
    table = [header] + [(
        r["name"], r["format"], layer_ranges(r["layers"]) if "layers" in r else "-",
        str(r.get("hidden_size", "-")), r.get("model", "-"), r.get("method", r.get("note", "-")),
        "yes" if r["served"] else "no") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def layer_ranges(layers: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3,7' (n layers)."""
    parts, start = [], None
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            parts.append(str(start) if start == layer else f"{start}-{layer}")
            start = None
    return f"{','.join(parts)} ({len(layers)})"


# ---- inspect --------------------------------------------------------------------------------
def _inspect(args) -> int:
    from cast_vllm.vector_formats import read_vector

    vec, fmt = read_vector(args.file, args.from_format, allow_pickle=args.allow_pickle)
    norms = {layer: float(vec.directions[layer].double().norm()) for layer in vec.layers}
    info = {"file": str(args.file), "format": fmt, "hidden_size": vec.hidden_size, "layers": vec.layers,
            "norms": {str(k): v for k, v in norms.items()}, "content_hash": vec.content_hash(),
            "metadata": vec.metadata}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"file          {info['file']}")
    print(f"format        {fmt}")
    print(f"hidden size   {vec.hidden_size}")
    print(f"layers        {layer_ranges(vec.layers)}")
    print(f"content hash  {info['content_hash']}")
    print("L2 norm per layer:")
    for layer, norm in norms.items():
        print(f"  {layer:>4}  {norm:.6g}")
    if vec.metadata:
        print("metadata:")
        width = max(len(k) for k in vec.metadata)
        for key in sorted(vec.metadata):
            print(f"  {key.ljust(width)}  {vec.metadata[key]}")
    return 0


# ---- convert --------------------------------------------------------------------------------
def _convert(args) -> int:
    from cast_vllm.vector_formats import format_of, read_vector, write_vector

    to = format_of(args.output, args.to_format)   # refuse a bad output before reading anything
    vec, fmt = read_vector(args.input, args.from_format, allow_pickle=args.allow_pickle)
    write_vector(vec, args.output, to, drop_layer_0=args.drop_layer_0)
    written = [layer for layer in vec.layers if not (to == "gguf" and layer == 0)]
    print(f"{args.input} ({fmt}) -> {args.output} ({to}): layers {layer_ranges(written)}, "
          f"hidden size {vec.hidden_size}")
    return 0


# ---- combine --------------------------------------------------------------------------------
def parse_weighted(arg: str) -> tuple[str, float]:
    """'path:1.5' -> (path, 1.5); a path without ':<number>' has weight 1."""
    from cast_vllm.vectors import VectorFileError

    path, sep, tail = arg.rpartition(":")
    if not sep:
        return arg, 1.0
    try:
        weight = float(tail)
    except ValueError:
        return arg, 1.0   # a ':' inside the path itself
    if not path:
        raise VectorFileError(f"{arg!r}: no file before the weight")
    if not math.isfinite(weight):
        raise VectorFileError(f"{arg!r}: the weight must be finite")
    return path, weight


def _combine(args) -> int:
    from cast_vllm.vector_formats import format_of, read_vector, write_vector
    from cast_vllm.vector_math import combine

    to = format_of(args.output, args.to_format)
    terms = []
    for arg in args.inputs:
        path, weight = parse_weighted(arg)
        vec, _ = read_vector(path, allow_pickle=args.allow_pickle)
        vec.metadata["source_file"] = Path(path).name   # names the component in the result's provenance
        terms.append((vec, weight))
    out = combine(terms)
    write_vector(out, args.output, to, drop_layer_0=args.drop_layer_0)
    written = [layer for layer in out.layers if not (to == "gguf" and layer == 0)]
    shown = " ".join(f"{'-' if w < 0 else '+'} {abs(w):g} * {v.metadata['source_file']}" for v, w in terms)
    print(f"{args.output} ({to}) = {shown.removeprefix('+ ')}: layers {layer_ranges(written)}, "
          f"hidden size {out.hidden_size}")
    return 0
