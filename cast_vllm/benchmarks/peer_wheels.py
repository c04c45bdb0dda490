"""Peers' own code, pinned: wheels downloaded from PyPI (never installed into this environment),
checked against their sha256 and imported straight from the zip. The peers benchmark runs them,
and the interop tests (``tests/peer_wheels.py``) use the same pins."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cast_vllm.errors import CastVllmError


class PeerUnavailable(CastVllmError, RuntimeError):
    """A peer could not be obtained or started; the message says why (recorded in the JSON)."""


@dataclass(frozen=True)
class WheelPin:
    dist: str
    version: str
    sha256: str
    package: str
    #: optional dependencies the package imports only for training: stand-ins raise if used
    stand_ins: dict = field(default_factory=dict)
    numpy_1_alias: bool = False
    #: pip download options (vllm-lens's metadata asks for Python >= 3.12)
    download_options: tuple = ()


REPENG = WheelPin("repeng", "0.4.0", "9192ac3118cff53f78ab18a899975e719a09e9cb8d44e90aae757655152cd3ce", "repeng",
                  {"sklearn.decomposition": ["PCA"]}, numpy_1_alias=True)
STEERING_VECTORS = WheelPin("steering-vectors", "0.12.2",
                            "e2556b27bb2344c7306d7768818900579590307e516e83e9b646187824e79b9f", "steering_vectors",
                            {"sklearn.linear_model": ["LinearRegression", "LogisticRegression"]})
VLLM_LENS = WheelPin("vllm-lens", "1.3.0", "b841116bd53ef00d3b5da6db637f0cd78e4a9917c953575752b02e99b7cc066d",
                     "vllm_lens", download_options=("--ignore-requires-python", "--python-version", "3.12"))
HOTWIRE = ("hotwire-vllm", "0.1.2")
PINS = {"repeng": REPENG, "steering-vectors": STEERING_VECTORS, "vllm-lens": VLLM_LENS}


def peers_dir() -> Path:
    from cast_vllm.home import cast_home

    return cast_home() / "peers"


def fetch_wheel(pin: WheelPin, where: Path | None = None) -> Path:
    """The pinned wheel, from ``where`` (default ``$CAST_VLLM_HOME/peers/wheels``) when it is there
    with the right hash, else ``pip download --no-deps`` into it. ``PeerUnavailable`` when PyPI
    cannot be reached; ``RuntimeError`` when the wheel's hash changed."""
    where = where or peers_dir() / "wheels"
    where.mkdir(parents=True, exist_ok=True)
    pattern = f"{pin.dist.replace('-', '_')}-{pin.version}-*.whl"

    def good() -> Path | None:
        for wheel in sorted(where.glob(pattern)):
            if hashlib.sha256(wheel.read_bytes()).hexdigest() == pin.sha256:
                return wheel
        return None

    if (wheel := good()) is not None:
        return wheel
    cmd = [sys.executable, "-m", "pip", "download", f"{pin.dist}=={pin.version}", "--no-deps",
           "--only-binary=:all:", "--timeout", "20", "--retries", "1", "-q", "-d", str(where), *pin.download_options]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    except subprocess.TimeoutExpired as e:
        raise PeerUnavailable(f"pip download {pin.dist}=={pin.version} timed out (PyPI unreachable?)") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PeerUnavailable(f"pip download {pin.dist}=={pin.version} failed (PyPI unreachable?): {tail[0]}")
    if (wheel := good()) is None:
        raise RuntimeError(f"the {pin.dist} {pin.version} wheel from PyPI does not have the pinned sha256")
    return wheel


def _stand_in_modules(spec: dict[str, list[str]], why: str) -> dict[str, types.ModuleType]:
    """Modules whose named attributes are classes that raise ``why`` when used."""
    mods: dict[str, types.ModuleType] = {}
    for name, attrs in spec.items():
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            mod_name = ".".join(parts[:i])
            if mod_name not in mods:
                mods[mod_name] = types.ModuleType(mod_name)
                mods[mod_name].__spec__ = importlib.machinery.ModuleSpec(mod_name, None)
                if i > 1:
                    setattr(mods[".".join(parts[:i - 1])], parts[i - 1], mods[mod_name])
        for attr in attrs:
            def refuse(*a, _attr=attr, _name=name, **k):
                raise RuntimeError(f"{_name}.{_attr}: {why}")
            setattr(mods[name], attr, type(attr, (), {"__init__": refuse}))
    return mods


@contextlib.contextmanager
def imported_from_wheel(wheel: Path, pin: WheelPin) -> Iterator[types.ModuleType]:
    """``import pin.package`` from the wheel's zip for the block; its modules are removed afterwards
    (so a later import, from another wheel or an install, starts clean). Stand-ins for optional
    training-only dependencies, and numpy 1's ``float_`` alias, exist only while the import runs."""
    import numpy as np

    sys.path.insert(0, str(wheel))
    added: list[str] = []
    alias = pin.numpy_1_alias and not hasattr(np, "float_")
    try:
        tops = {name.split(".")[0] for name in pin.stand_ins}
        missing = {top for top in tops if importlib.util.find_spec(top) is None}
        for name, mod in _stand_in_modules(pin.stand_ins, "not installed: training is not available").items():
            if name.split(".")[0] in missing and name not in sys.modules:
                sys.modules[name] = mod
                added.append(name)
        if alias:   # repeng 0.4.0 annotates with numpy 1's alias (fixed upstream in 96b4e20)
            np.float_ = np.float64
        try:
            module = importlib.import_module(pin.package)
        finally:
            for name in added:
                sys.modules.pop(name, None)
            if alias:
                del np.float_
        if not str(module.__file__).startswith(str(wheel)):
            raise RuntimeError(f"{pin.package} was imported from {module.__file__}, not from {wheel}")
        yield module
    finally:
        for name in [m for m in sys.modules if m == pin.package or m.startswith(pin.package + ".")]:
            del sys.modules[name]
        with contextlib.suppress(ValueError):
            sys.path.remove(str(wheel))
