"""An OpenAI-client session against `cast-vllm serve`: upload a vector, steer completions and
chat (streaming too), read the steering receipts, list and delete vectors.

    cast-vllm serve --model smollm2-135m --vector-dir vectors/ &
    python examples/openai_client.py --vector vectors/movies.safetensors [--url http://127.0.0.1:8000]
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from pathlib import Path

from openai import OpenAI


def upload(url: str, api_key: str, name: str, path: Path) -> dict:
    """Raw `.safetensors` bytes, `application/octet-stream`, name in the query string."""
    request = urllib.request.Request(f"{url}/v1/steering/vectors?name={name}&overwrite=true", data=path.read_bytes(),
                                     method="POST", headers={"Content-Type": "application/octet-stream",
                                                             "Authorization": f"Bearer {api_key}"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default="EMPTY")
    parser.add_argument("--vector", required=True, help=".safetensors vector to upload")
    parser.add_argument("--name", default="example")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    info = upload(args.url, args.api_key, args.name, Path(args.vector))
    print(f"uploaded {info['name']}: {len(info['layers'])} layers")
    client = OpenAI(base_url=f"{args.url}/v1", api_key=args.api_key)
    model = client.models.list().data[0].id
    steering = {"steering": args.name, "steering_scale": 4.0}

    plain = client.completions.create(model=model, prompt="The movie was", max_tokens=args.max_tokens, temperature=0)
    raw = client.completions.with_raw_response.create(
        model=model, prompt="The movie was", max_tokens=args.max_tokens, temperature=0,
        extra_body={"vllm_xargs": steering})
    steered = raw.parse()
    print("unsteered:", repr(plain.choices[0].text))
    print("steered:  ", repr(steered.choices[0].text))
    print("receipt header:", raw.headers["x-cast-steering"][:100], "...")
    print("tokens steered:", steered.model_extra["steering"][0]["tokens_steered"])

    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "How was the film?"}], max_tokens=args.max_tokens,
        temperature=0, extra_body={"steering": {"vector": args.name, "scale": 4.0}})   # top-level form
    print("chat:     ", repr(chat.choices[0].message.content))

    text, receipt = "", None
    for chunk in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Describe the ending."}], stream=True,
            max_tokens=args.max_tokens, temperature=0, extra_body={"vllm_xargs": steering}):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        receipt = (chunk.model_extra or {}).get("steering", receipt)
    print("streamed: ", repr(text), "| receipt:", receipt and receipt[0]["tokens_steered"])

    listing = client.get("/steering/vectors", cast_to=object)
    print("vectors:  ", [v["name"] for v in listing["data"]])
    client.delete(f"/steering/vectors/{args.name}", cast_to=object)
    print("deleted", args.name)


if __name__ == "__main__":
    main()
