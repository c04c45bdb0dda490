"""The vLLM version guard and the list of vLLM internals we depend on (engine/vllm_compat.py).

Other vLLM versions are simulated by setting ``vllm.__version__`` (the string the guard reads)
and a vLLM lacking a patched method by deleting it, each in a child interpreter, so that no
hook installed there leaks into this process.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cast_vllm.engine import vllm_compat
from cast_vllm.engine.vllm_compat import (DEPENDED_INTERNALS, PATCHED_INTERNALS, PUBLIC_VLLM_MODULES,
                                          SUPPORTED_VLLM, missing_internals, version_supported)

PACKAGE = Path(vllm_compat.__file__).resolve().parents[1]


@pytest.mark.parametrize("version,ok", [
    ("0.32.0", True), ("0.32.0+cpu", True), ("0.32.3", True), ("0.32.1rc1", True), ("0.32.5.dev3+gabc", True),
    ("0.31.2", False), ("0.33.0rc1", False), ("0.33.0", False), ("1.0.0", False), ("not-a-version", False),
])
def test_supported_range(version, ok):
    assert version_supported(version) is ok


def test_installed_vllm_is_supported():
    assert version_supported(vllm_compat.installed_vllm_version()), SUPPORTED_VLLM


def test_every_listed_internal_exists_in_the_installed_vllm():
    assert missing_internals(PATCHED_INTERNALS + DEPENDED_INTERNALS) == []


def test_hooks_patch_exactly_the_listed_internals():
    """Every vLLM attribute hooks.py assigns is in PATCHED_INTERNALS and vice versa (the list
    is the one place to look)."""
    tree = ast.parse((PACKAGE / "engine" / "hooks.py").read_text())
    from_vllm = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and (node.module or "").startswith("vllm") for alias in node.names}
    assigned = {(t.value.id, t.attr) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                and t.value.id in from_vllm and not t.attr.startswith("_cast")}
    listed = set()
    for item in PATCHED_INTERNALS:
        owner, _, attr = item.name.rpartition(".")
        if item.how == "patched":
            listed.add((owner or item.module.rsplit(".", 1)[-1], attr))
        else:  # extended: the class gets our cast_steering_stats (workers also cast_put_vector)
            cls = owner or attr
            listed |= {(cls, m) for m in ("cast_steering_stats", "cast_put_vector") if cls == "WorkerBase"
                       or m == "cast_steering_stats"}
    assert assigned == listed


@pytest.mark.parametrize("item", PATCHED_INTERNALS + DEPENDED_INTERNALS, ids=lambda i: i.qualname)
def test_no_listed_internal_is_stale(item):
    """Each entry names the module of ours that uses it, and that module still does: a
    deleted use must leave the list too."""
    source = (PACKAGE.parent / (item.by.replace(".", "/") + ".py")).read_text()
    needle = item.name.split(".")[-1] if item.name else item.module
    assert needle in source, f"{item.by} no longer uses {item.qualname}: remove it from vllm_compat.py"


def _vllm_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vllm":
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "vllm":
                    yield alias.name, None


def test_every_private_vllm_import_is_listed():
    listed = {(i.module, i.name.split(".")[0]) for i in PATCHED_INTERNALS + DEPENDED_INTERNALS}
    listed_modules = {i.module for i in PATCHED_INTERNALS + DEPENDED_INTERNALS}
    unlisted = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for module, name in _vllm_imports(path):
            if (module in PUBLIC_VLLM_MODULES or (module, name) in listed or (name is None and module in listed_modules)
                    or f"{module}.{name}" in listed_modules):  # from vllm.v1.core import kv_cache_utils
                continue
            unlisted.append(f"{path.relative_to(PACKAGE.parent)}: {module}" + (f".{name}" if name else ""))
    assert not unlisted, ("private vLLM imports missing from cast_vllm/engine/vllm_compat.py "
                          f"(add them to DEPENDED_INTERNALS): {unlisted}")


def _child(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != vllm_compat.ALLOW_UNSUPPORTED_ENV}
    full_env.update(VLLM_CONFIGURE_LOGGING="0", **env)
    prelude = textwrap.dedent("""
        import logging, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
        import vllm
        from vllm import ModelRegistry
        from vllm.v1.core.sched.scheduler import Scheduler
        from vllm.v1.engine.input_processor import InputProcessor
        from cast_vllm.engine import plugin
        from cast_vllm.engine.vllm_compat import UnsupportedVLLMError

        def patched():
            return bool(getattr(InputProcessor.process_inputs, "_cast_patched", False))

        def registered():
            return "CastLlamaForCausalLM" in ModelRegistry.get_supported_archs()
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=300)


def test_unsupported_version_installs_nothing_and_steering_refuses(tiny_model_dir):
    model = tiny_model_dir("llama")
    proc = _child(f"""
        vllm.__version__ = "0.33.1"
        plugin.register()                      # as vLLM calls it: logs, never raises
        assert not patched() and not registered(), "hooks installed on an unsupported vLLM"
        try:
            plugin.register(strict=True)
        except UnsupportedVLLMError as exc:
            print("STRICT:", exc)
        from cast_vllm import SteeredLLM
        try:
            SteeredLLM({str(model)!r})
        except UnsupportedVLLMError:
            print("STEEREDLLM REFUSED")
        assert not patched()
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "STRICT:" in proc.stdout and "STEEREDLLM REFUSED" in proc.stdout, proc.stdout
    for text in (proc.stdout, proc.stderr):     # the logged refusal and the raised error
        assert SUPPORTED_VLLM in text and "vLLM 0.33.1 is installed" in text
        assert "Scheduler._handle_blocked_waiting_request" in text and "CAST_VLLM_ALLOW_UNSUPPORTED_VLLM=1" in text
    assert "ERROR cast_vllm.engine.plugin" in proc.stderr


def test_unsupported_version_allowed_by_env_var():
    proc = _child("""
        vllm.__version__ = "0.33.1"
        plugin.register(strict=True)
        assert patched() and registered()
        print("INSTALLED")
    """, CAST_VLLM_ALLOW_UNSUPPORTED_VLLM="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "INSTALLED" in proc.stdout
    assert "WARNING cast_vllm.engine.plugin" in proc.stderr and "outside the supported range" in proc.stderr


def test_missing_patched_internal_is_named_and_nothing_is_patched():
    """A vLLM without one patched method: refused before any other hook goes in (even when
    unsupported versions are allowed)."""
    proc = _child("""
        del Scheduler._handle_blocked_waiting_request
        plugin.register()
        assert not patched() and not registered()
        try:
            plugin.register(strict=True)
        except UnsupportedVLLMError as exc:
            print("STRICT:", exc)
    """, CAST_VLLM_ALLOW_UNSUPPORTED_VLLM="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lacks vllm.v1.core.sched.scheduler.Scheduler._handle_blocked_waiting_request" in proc.stdout
    assert "Nothing was patched" in proc.stdout
