"""vllm-lens (a vLLM plugin) for ``bench peers``: run from a venv of its own, in a subprocess
that answers one JSON line per command, so its plugin never loads into this environment."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from cast_vllm import envs
from cast_vllm.benchmarks.peer_systems import Workload
from cast_vllm.benchmarks.peer_wheels import (
    VLLM_LENS,
    PeerUnavailable,
    fetch_wheel,
    peers_dir,
)


class LensPeer:
    """vllm-lens in a subprocess with its own venv; commands over a pipe, one per workload."""
    name = "vllm-lens"

    def __init__(self, model: str, vectors, workloads: dict[str, Workload], max_num_seqs: int, max_tokens: int,
                 tmp: Path, start_timeout: float = 600):
        import torch

        python = ensure_lens_venv()
        spec = tmp / "vllm-lens-spec.pt"
        layers = sorted(vectors[0])
        torch.save({"model": model, "max_num_seqs": max_num_seqs, "max_tokens": max_tokens, "layers": layers,
                    "vectors": torch.stack([torch.stack([d[i] for i in layers]) for d in vectors]),
                    "workloads": {n: {"prompts": w.prompts, "vectors": w.vectors} for n, w in workloads.items()}},
                   spec)
        self.log_path = tmp / "vllm-lens.log"
        package_root = Path(__file__).resolve().parents[2]   # the folder holding cast_vllm/
        env = envs.snapshot()
        env.update({envs.VLLM_PLUGINS.name: "activations", envs.VLLM_ENABLE_V1_MULTIPROCESSING.name: "0",
                    "PYTHONPATH": os.pathsep.join([str(package_root), *filter(None, [env.get("PYTHONPATH")])])})
        env.pop("VLLM_LENS_DISABLE", None)
        self.log = open(self.log_path, "w")   # noqa: SIM115 - the worker's stderr, closed in close()
        self.proc = subprocess.Popen(
            [str(python), "-c", "from cast_vllm.benchmarks.peer_lens import lens_worker; lens_worker()", str(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.info = self._read(start_timeout)

    def _read(self, timeout: float) -> dict:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            self.close()
            raise PeerUnavailable(f"vllm-lens worker gave no answer in {timeout:.0f} s; log tail: {self.log_tail()}")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            raise PeerUnavailable(f"vllm-lens worker exited (rc {self.proc.returncode}); log tail: {self.log_tail()}")
        msg = json.loads(line)
        if "error" in msg:
            raise PeerUnavailable(f"vllm-lens worker: {msg['error']}")
        return msg

    def log_tail(self, lines: int = 6) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def generate(self, work: Workload) -> tuple[list[list[int]], float]:
        self.proc.stdin.write(json.dumps({"cmd": "run", "workload": work.name}) + "\n")
        self.proc.stdin.flush()
        msg = self._read(600)
        return msg["tokens"], msg["seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def ensure_lens_venv() -> Path:
    """``$CAST_VLLM_HOME/peers/vllm-lens-venv``'s python, created once: a venv that also sees this
    environment's site-packages (a ``.pth`` file), with the pinned vllm-lens wheel (sha256-checked)
    and zstandard installed ``--no-deps --ignore-requires-python``. Never touches this environment."""
    venv = peers_dir() / "vllm-lens-venv"
    python = venv / "bin" / "python"
    marker = venv / "cast-vllm-peer.json"
    want = {"dist": VLLM_LENS.dist, "version": VLLM_LENS.version, "sha256": VLLM_LENS.sha256}
    if python.exists() and marker.is_file() and json.loads(marker.read_text()) == want:
        return python
    wheel = fetch_wheel(VLLM_LENS)
    proc = subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)],
                          capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise PeerUnavailable(f"could not create {venv}: {proc.stderr.strip()[-300:]}")
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "cast-vllm-main-env.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--ignore-requires-python",
           "--timeout", "20", "--retries", "1", "-q", str(wheel), "zstandard"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired as e:
        raise PeerUnavailable("pip install into the vllm-lens venv timed out (PyPI unreachable?)") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PeerUnavailable(f"pip install vllm-lens into {venv} failed (PyPI unreachable?): {tail[0]}")
    marker.write_text(json.dumps(want))
    return python


def lens_worker() -> None:
    """The vllm-lens side (run by ``LensPeer`` with the vllm-lens venv's python): answers one JSON
    line per command on the original stdout; everything else printed goes to stderr."""
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def send(msg: dict) -> None:
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    try:
        envs.use_cpu_engine_defaults()
        import torch
        spec = torch.load(sys.argv[-1])
        import vllm_lens
        from vllm import LLM, SamplingParams, TokensPrompt

        llm = LLM(spec["model"], dtype="float32", max_model_len=512, max_num_seqs=spec["max_num_seqs"], seed=0,
                  kv_cache_memory_bytes=1 << 30, enable_prefix_caching=False, distributed_executor_backend="uni",
                  enforce_eager=True)
        if not hasattr(llm, "register_hooks"):
            raise RuntimeError("the vllm-lens plugin did not load (LLM has no register_hooks)")
        vectors, layers = spec["vectors"], spec["layers"]
        send({"ready": True, "vllm_lens": vllm_lens.__version__, "python": platform.python_version(),
              "enforce_eager": bool(llm.llm_engine.vllm_config.model_config.enforce_eager),
              "torch_threads": torch.get_num_threads()})
    except Exception as e:   # noqa: BLE001 - reported to the parent, which records it
        send({"error": f"{type(e).__name__}: {e}"})
        return
    base = {"max_tokens": spec["max_tokens"], "temperature": 0.0, "ignore_eos": True}
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        work = spec["workloads"][msg["workload"]]
        params = [SamplingParams(**base) if k is None else SamplingParams(**base, extra_args={
            "apply_steering_vectors": [vllm_lens.SteeringVector(activations=vectors[k], layer_indices=layers,
                                                                scale=1.0)]}) for k in work["vectors"]]
        prompts = [TokensPrompt(prompt_token_ids=p) for p in work["prompts"]]
        try:
            t0 = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            dt = time.perf_counter() - t0
        except Exception as e:   # noqa: BLE001
            send({"error": f"generate: {type(e).__name__}: {e}"})
            return
        send({"tokens": [list(o.outputs[0].token_ids) for o in outs], "seconds": dt})
