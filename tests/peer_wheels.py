"""Peers' own code for interop tests: a pinned PyPI wheel, downloaded (never installed), checked
against its sha256 and imported straight from the zip for the duration of one test module.
A test skips when PyPI cannot be reached; a wheel whose hash changed fails."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest


def download_wheel(where: Path, dist: str, version: str, sha256: str) -> Path:
    """``pip download dist==version --no-deps`` into ``where``; the one wheel it fetched."""
    cmd = [sys.executable, "-m", "pip", "download", f"{dist}=={version}", "--no-deps",
           "--only-binary=:all:", "--timeout", "20", "--retries", "1", "-q", "-d", str(where)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip download {dist}=={version} timed out (PyPI unreachable?)")
    wheels = sorted(where.glob(f"{dist.replace('-', '_')}-{version}-*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"pip download {dist}=={version} failed (PyPI unreachable?): {tail[0]}")
    assert hashlib.sha256(wheels[0].read_bytes()).hexdigest() == sha256, f"the {dist} {version} wheel changed"
    return wheels[0]


def unavailable_modules(spec: dict[str, list[str]], why: str) -> dict[str, types.ModuleType]:
    """Modules standing in for an optional dependency the tested code only imports: each named
    attribute is a class that raises ``why`` when used. Parents of dotted names are created too."""
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
            def refuse(*a, _attr=attr, **k):
                raise RuntimeError(f"{name}.{_attr}: {why}")
            setattr(mods[name], attr, type(attr, (), {"__init__": refuse}))
    return mods


@contextlib.contextmanager
def import_from_wheel(wheel: Path, package: str, *, stand_ins: dict[str, list[str]] | None = None,
                      why: str = "not installed", during_import: Callable[[pytest.MonkeyPatch], None] | None = None,
                      ) -> Iterator[types.ModuleType]:
    """``import package`` from the wheel's zip. ``stand_ins`` (see unavailable_modules) are put in
    ``sys.modules`` only when their top-level package is not installed, and only while the import
    runs, like ``during_import(monkeypatch)``; afterwards the package's modules are removed again."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(wheel))
        try:
            with pytest.MonkeyPatch.context() as importing:   # gone before anything else looks
                tops = {name.split(".")[0] for name in stand_ins or {}}
                missing = {top for top in tops if importlib.util.find_spec(top) is None}
                for name, mod in unavailable_modules(stand_ins or {}, why).items():
                    if name.split(".")[0] in missing:
                        importing.setitem(sys.modules, name, mod)
                if during_import is not None:
                    during_import(importing)
                module = importlib.import_module(package)
            assert module.__file__.startswith(str(wheel)), module.__file__
            yield module
        finally:
            for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
                del sys.modules[name]


def _numpy_1_alias(mp: pytest.MonkeyPatch) -> None:
    import numpy as np

    if not hasattr(np, "float_"):   # repeng 0.4.0 annotates with numpy 1's alias (upstream 96b4e20)
        mp.setattr(np, "float_", np.float64, raising=False)


@dataclass(frozen=True)
class Peer:
    """A peer package pinned to one wheel, and what importing it needs here."""
    dist: str
    version: str
    sha256: str
    package: str
    stand_ins: dict = field(default_factory=dict)
    why: str = "not installed"
    during_import: Callable[[pytest.MonkeyPatch], None] | None = None


#: repeng.extract imports sklearn's PCA for training only; the tests never train
REPENG = Peer("repeng", "0.4.0", "9192ac3118cff53f78ab18a899975e719a09e9cb8d44e90aae757655152cd3ce", "repeng",
              {"sklearn.decomposition": ["PCA"]},
              "scikit-learn is not installed: repeng training is not available in this test", _numpy_1_alias)
#: steering_vectors.aggregators imports sklearn's regressions for training only
STEERING_VECTORS = Peer("steering-vectors", "0.12.2",
                        "e2556b27bb2344c7306d7768818900579590307e516e83e9b646187824e79b9f", "steering_vectors",
                        {"sklearn.linear_model": ["LinearRegression", "LogisticRegression"]},
                        "scikit-learn is not installed: steering-vectors training is not available in this test")


@contextlib.contextmanager
def peer_package(peer: Peer, tmp_path_factory) -> Iterator[types.ModuleType]:
    """The peer's own package for one test module (use from a module-scoped fixture)."""
    wheel = download_wheel(tmp_path_factory.mktemp(peer.dist), peer.dist, peer.version, peer.sha256)
    with import_from_wheel(wheel, peer.package, stand_ins=peer.stand_ins, why=peer.why,
                           during_import=peer.during_import) as module:
        yield module
