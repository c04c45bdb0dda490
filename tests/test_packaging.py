"""What a user installs: the sdist (built from a copy of this tree), a wheel built from it, and
that wheel in fresh virtual environments.

A full install with vLLM (~2 min, ~4 GB) is too slow for every run; the README's commands
were checked by hand (README, "Installing without make"). Here the wheel goes in with
``--no-deps``: once into a bare venv (no vLLM, no torch: the CLI, the benchmarks' help and
the missing-vLLM message must work there) and once into a venv that borrows this project's
dependencies through a ``.pth`` file, to run some of the sdist's own tests against it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

import cast_vllm

ROOT = Path(__file__).resolve().parents[1]
VERSION = cast_vllm.__version__
IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                 ".hypothesis", "*.pyc", "results")


def _check(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """Built from a copy, so the checkout's egg-info and build folders are never touched."""
    tmp = tmp_path_factory.mktemp("sdist")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORED)
    _check([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
            "print(b.build_sdist(sys.argv[1]))", tmp / "dist"], cwd=src)
    (path,) = (tmp / "dist").glob("*.tar.gz")
    return path


@pytest.fixture(scope="module")
def wheel(sdist, tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    _check([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
            "-w", out, sdist])
    (path,) = out.glob("*.whl")
    return path


def _fresh_venv(where: Path, wheel: Path) -> Path:
    """A venv of the base interpreter with only our wheel in it (pip runs from this venv)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    _check([base, "-m", "venv", "--without-pip", where])
    python = where / "bin" / "python"
    _check([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel])
    return python


def test_sdist_carries_the_tests_their_helpers_and_the_papers(sdist):
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        pkg_info = tar.extractfile(f"cast_vllm-{VERSION}/PKG-INFO").read().decode()
    wanted = {"README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in", "pyproject.toml", "Makefile",
              "cast_vllm/py.typed", "kernels/README.md", "cast_vllm/kernels/__init__.py",
              "cast_vllm/kernels/modes.py", "cast_vllm/kernels/steer_residual.py",
              "tests/conftest.py", "tests/tiny_models.py"}
    wanted |= {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*.py") if "__pycache__" not in p.parts}
    wanted |= {str(p.relative_to(ROOT)) for p in (ROOT / "bench").glob("*.py")}
    wanted |= {str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*") if p.is_file()}
    assert wanted - names == set()
    assert f"Version: {VERSION}\n" in pkg_info and "License-Expression: Apache-2.0" in pkg_info
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_wheel_in_a_bare_venv_runs_the_cli_and_says_how_to_install_vllm(wheel, tmp_path):
    python = _fresh_venv(tmp_path / "bare", wheel)
    cli = tmp_path / "bare" / "bin" / "cast-vllm"
    probe = _check([python, "-c", "import importlib.util as u; print(u.find_spec('vllm'), u.find_spec('torch'))"])
    assert probe.stdout.split() == ["None", "None"]          # really nothing else in there
    assert _check([cli, "--version"], cwd=tmp_path).stdout.strip() == f"cast-vllm {VERSION}"
    for name in ("throughput", "serving", "extraction", "kernel", "scales", "latency"):
        out = _check([cli, "bench", name, "--help"], cwd=tmp_path).stdout
        assert f"usage: cast-vllm bench {name}" in out
        assert str(tmp_path / "bench-results") in "".join(out.split())   # the cwd, not inside site-packages
    for command in (["generate", "--model", "smollm2-135m", "--prompt", "hi"], ["serve"]):
        proc = subprocess.run([cli, *command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "vLLM is not installed" in proc.stderr and "--extra-index-url https://download.pytorch.org/whl/cpu" \
            in proc.stderr and "pip uninstall -y torchvision torchaudio torchcodec" in proc.stderr
    proc = subprocess.run([cli, "eval", "--source", "a", "--target", "b", "--task", "sentiment"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)   # numpy is missing here too
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "numpy is not installed, although cast-vllm depends on it" in proc.stderr
    api = subprocess.run([python, "-c", "import cast_vllm\ntry:\n    cast_vllm.SteeredLLM\n"
                          "except ModuleNotFoundError as exc:\n    print(type(exc).__name__, exc.name, exc)"],
                         capture_output=True, text=True, timeout=60)
    assert api.stdout.startswith("VLLMNotInstalledError vllm vLLM is not installed"), api.stderr
    site = Path(_check([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    assert (site / "cast_vllm" / "py.typed").is_file()
    assert (site / "cast_vllm" / "kernels" / "steer_residual.py").is_file()
    assert (site / "cast_vllm" / "kernels" / "modes.py").is_file()
    assert not (site / "kernels").exists()                   # no stray top-level package
    assert (site / "cast_vllm" / "benchmarks" / "throughput.py").is_file()
    (dist_info,) = site.glob("cast_vllm-*.dist-info")
    assert (dist_info / "licenses" / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    entry_points = (dist_info / "entry_points.txt").read_text()
    assert "cast_vllm.engine.plugin:register" in entry_points and "cast-vllm = cast_vllm.cli:main" in entry_points


def test_sdist_tests_run_against_the_installed_wheel(sdist, wheel, tmp_path):
    """Unpack the sdist and run two of its test files with the wheel installed (not the
    checkout: the interpreter runs with -P and the checkout's editable finder is not loaded)."""
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    tree = tmp_path / f"cast_vllm-{VERSION}"
    python = _fresh_venv(tmp_path / "venv", wheel)
    site = Path(_check([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")   # vLLM, torch, pytest
    where = _check([python, "-P", "-c", "import cast_vllm; print(cast_vllm.__file__)"], cwd=tree).stdout.strip()
    assert where.startswith(str(site)), where
    proc = _check([python, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_spec.py",
                   "tests/test_cli.py::test_top_level_help_is_whole_sentences_and_lists_every_command"], cwd=tree)
    assert " passed" in proc.stdout and "failed" not in proc.stdout
