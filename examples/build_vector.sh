#!/usr/bin/env bash
# Build a CAST steering vector from movie-review sentiment (the source task) with `cast-vllm
# extract`, then show what it holds. Every setting can be overridden from the environment:
#   MODEL=smollm2-135m SOURCE=../shared/data/sentiment/movies.jsonl OUT=vectors/movies.safetensors
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
MODEL="${MODEL:-smollm2-135m}"
SOURCE="${SOURCE:-$here/../../shared/data/sentiment/movies.jsonl}"
OUT="${OUT:-vectors/movies.safetensors}"
NUM_SELECTED="${NUM_SELECTED:-32}"
NUM_DEMOS="${NUM_DEMOS:-4}"
POOL_SIZE="${POOL_SIZE:-200}"
BACKEND="${BACKEND:-vllm}"          # vllm (fast) or hf (the reference reader)

cast-vllm extract --model "$MODEL" --source "$SOURCE" --task sentiment --out "$OUT" \
    --num-selected "$NUM_SELECTED" --num-demos "$NUM_DEMOS" --pool-size "$POOL_SIZE" \
    --backend "$BACKEND" --gguf "${OUT%.safetensors}.gguf"
python - "$OUT" <<'PY'
import sys
from cast_vllm import SteeringVector

vec = SteeringVector.load(sys.argv[1])
print(f"{sys.argv[1]}: {len(vec.layers)} layers, hidden {vec.hidden_size}, method {vec.metadata['method']}")
for layer in vec.layers[:: max(1, len(vec.layers) // 6)]:
    print(f"  layer {layer:3d}  norm {vec.directions[layer].norm():.3f}")
PY
