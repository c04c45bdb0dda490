"""Import a control vector made by llama.cpp (`cvector-generator`), repeng or EasySteer (GGUF,
`direction.N` = the output of 0-based decoder block N, our layer N) into a vector directory.

    python examples/import_peer_vector.py control_vector.gguf vectors/ --name happy [--model smollm2-135m]

Without a file, `--demo` first writes one in llama.cpp's layout with the `gguf` package, so the
script runs anywhere.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from transformers import AutoConfig

from cast_vllm import SteeringVector
from cast_vllm.model_zoo import resolve


def write_llama_cpp_layout(path: Path, hidden: int, num_layers: int) -> Path:
    """What llama.cpp's cvector-generator writes: F32 `direction.1..n-1`, `controlvector.*` keys."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_int32("controlvector.layer_count", num_layers - 1)
    rng = np.random.default_rng(0)
    for layer in range(1, num_layers):
        writer.add_tensor(f"direction.{layer}", rng.standard_normal(hidden).astype(np.float32) * 0.1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("gguf", nargs="?", help="the peer's .gguf control vector")
    parser.add_argument("vector_dir", help="vector directory to save into (cast-vllm serve --vector-dir)")
    parser.add_argument("--name", default="imported", help="vector name (the file stem)")
    parser.add_argument("--model", default="smollm2-135m", help="checked against this model's shape")
    parser.add_argument("--demo", action="store_true", help="write a llama.cpp-layout file first")
    args = parser.parse_args()

    config = AutoConfig.from_pretrained(resolve(args.model))
    out_dir = Path(args.vector_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        if args.gguf:
            source = Path(args.gguf)
        elif args.demo:
            source = write_llama_cpp_layout(Path(scratch) / "llama-cpp.gguf", config.hidden_size,
                                            config.num_hidden_layers)
        else:
            parser.error("give a .gguf file, or --demo to write one")
        vec = SteeringVector.load(source)
    vec.check_against_model(config.hidden_size, config.num_hidden_layers, f"vector {args.name!r}")
    target = vec.save(out_dir / f"{args.name}.safetensors")
    print(f"imported {source.name}: layers {vec.layers[0]}..{vec.layers[-1]} ({len(vec.layers)}), "
          f"hidden {vec.hidden_size} -> {target}")
    print(f'steer with: {{"steering": {{"vector": "{args.name}", "scale": 2.0}}}}')


if __name__ == "__main__":
    main()
