"""The command line as a user meets it: --help and --version, one model resolver for every
command, benchmarks from outside the checkout, friendly errors, and quiet engines."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cast_vllm
from cast_vllm.cli import DESCRIPTION, main
from cast_vllm.model_zoo import DEFAULT_MODEL, ModelNotFoundError, resolve

CLI = [sys.executable, "-m", "cast_vllm.cli"]
OUTSIDE = "/tmp"   # no checkout here: the package must bring everything itself


def _run(args, cwd=OUTSIDE, timeout=300, **env):
    return subprocess.run(CLI + list(args), cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)


# ---- --help, --version ------------------------------------------------------------------------

def test_top_level_help_is_whole_sentences_and_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())   # argparse wraps lines
    assert " ".join(DESCRIPTION.split()) in out and DESCRIPTION.endswith(".")
    from cast_vllm.cli import COMMANDS

    for name in COMMANDS:
        assert name in out


def test_version_is_single_sourced():
    from importlib.metadata import version

    proc = _run(["--version"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"cast-vllm {cast_vllm.__version__}"
    assert version("cast-vllm") == cast_vllm.__version__   # the installed metadata reads the same attribute


# ---- one model resolver -------------------------------------------------------------------------

def test_resolver_embedded_names_folders_and_hub_ids(default_model_dir, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve(DEFAULT_MODEL) == resolve(None) == str(default_model_dir)
    tiny = tiny_model_dir("llama")
    assert resolve(str(tiny)) == str(tiny.resolve())
    monkeypatch.chdir(tiny.parent)
    assert resolve(f"./{tiny.name}") == str(tiny.resolve())           # relative folders become absolute
    assert resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"  # no network
    assert resolve("gpt2") == "gpt2"                                    # bare legacy hub id
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        resolve(str(tmp_path / "missing"))
    with pytest.raises(ModelNotFoundError, match="is a file"):
        resolve(str(tiny / "config.json"))
    with pytest.raises(ModelNotFoundError, match="did you mean the embedded model 'smollm2-135m'"):
        resolve("smollm2-135")
    assert isinstance(ModelNotFoundError("x"), ValueError)   # every command reports it as a bad input


def test_activations_has_no_resolver_of_its_own():
    from cast_vllm.method import activations

    assert not hasattr(activations, "resolve_model")


def test_extract_accepts_an_embedded_name(shared_data, tmp_path, default_model_dir):
    """What serve accepts, extract accepts: the embedded default model by name (HF backend, tiny run)."""
    out = tmp_path / "v.safetensors"
    rc = main(["extract", "--model", DEFAULT_MODEL, "--source", str(shared_data / "sentiment" / "movies.jsonl"),
               "--task", "sentiment", "--out", str(out), "--layers", "3", "--num-selected", "4", "--num-demos", "1",
               "--pool-size", "8", "--selection", "random", "--backend", "hf", "--shard-size", "8"])
    assert rc == 0
    from cast_vllm.vectors import SteeringVector

    vector = SteeringVector.load(out)
    assert vector.layers == [3] and vector.metadata["model_path"] == str(default_model_dir)


@pytest.mark.parametrize("command", ["extract", "eval"])
def test_extract_and_eval_read_model_values_like_serve(command, shared_data, tmp_path, monkeypatch, capsys):
    """A hub id passes the resolver (and fails only at loading, offline, naming the model); bad
    folders and near-misses of embedded names get the resolver's own messages."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    movies = str(shared_data / "sentiment" / "movies.jsonl")
    tweets = str(shared_data / "sentiment" / "tweets.jsonl")
    rest = (["--source", movies, "--task", "sentiment", "--out", str(tmp_path / "v.safetensors"), "--backend", "hf"]
            if command == "extract" else ["--source", movies, "--target", tweets, "--task", "sentiment"])
    (tmp_path / "empty").mkdir()
    assert main([command, "--model", str(tmp_path / "empty"), *rest]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main([command, "--model", "smollm2-135", *rest]) == 2
    assert "did you mean the embedded model 'smollm2-135m'" in capsys.readouterr().err
    assert main([command, "--model", "no-such-org/no-such-model", *rest]) == 1
    err = capsys.readouterr().err
    assert "no-such-org/no-such-model" in err and "neither a folder" not in err


# ---- benchmarks from an installed package -------------------------------------------------------

@pytest.mark.parametrize("name", ["throughput", "serving", "latency", "extraction", "kernel", "scales"])
def test_bench_help_works_outside_the_checkout(name):
    proc = _run(["bench", name, "--help"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"usage: cast-vllm bench {name}" in proc.stdout
    assert "--out" in proc.stdout


def test_bench_scripts_in_the_checkout_are_thin_and_keep_their_cli():
    bench = Path(__file__).resolve().parents[1] / "bench"
    for name in ("throughput", "serving", "extraction", "kernel", "scales", "latency"):
        script = bench / f"{name}.py"
        assert len(script.read_text().splitlines()) < 20, f"{script} should only call cast_vllm.benchmarks.{name}"
    proc = subprocess.run([sys.executable, str(bench / "throughput.py"), "--help"], capture_output=True, text=True,
                          cwd=OUTSIDE, timeout=120)
    assert proc.returncode == 0 and "usage: bench/throughput.py" in proc.stdout
    unwrapped = "".join(proc.stdout.split())
    assert str(bench / "results" / "throughput_cpu.json") in unwrapped   # the same result files as before


def test_bench_scales_quick_writes_its_json(tiny_model_dir, tmp_path):
    """The CI-sized run of the alpha-sweep benchmark: the two layouts agree token for token and
    the per-token layout loads one row where folding loads one per alpha (no timing asserted)."""
    out = tmp_path / "scales.json"
    proc = _run(["bench", "scales", "--model", str(tiny_model_dir("llama")), "--quick", "--alphas", "0.5", "1", "2",
                 "4", "--slots", "2", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tokens_identical"] is True and out.with_suffix(".png").is_file()
    per_token, folded = result["results"]["per_token"], result["results"]["folded"]
    assert max(per_token["slot_loads"]) <= 1 and min(folded["slot_loads"]) >= 2
    assert per_token["slot_waits"] == [0] and min(folded["slot_waits"]) >= 1


def test_bench_throughput_quick_sweep_writes_its_json(tiny_model_dir, tmp_path):
    """The CI-sized grid: one row per (K, layers, mode), K=0 once, each with its paired ratio."""
    out = tmp_path / "throughput.json"
    proc = _run(["bench", "throughput", "--model", str(tiny_model_dir("llama")), "--quick", "--layers", "one", "all",
                 "--modes", "add", "norm_preserving", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 1 + 2 * 2 * 2 and "float32 batch=2 K=0" in rows
    assert "float32 batch=2 K=all layers=one mode=norm_preserving" in rows
    assert all(len(r["pair_ratios"]) == 1 and r["ratio_vs_unsteered"] > 0 for r in rows.values())


def test_bench_latency_quick_writes_its_json(tiny_model_dir, tmp_path):
    """The CI-sized latency run: every method timed, ICL prompts longer than CAST's (no timing asserted)."""
    from tiny_models import write_sentiment_jsonl

    out = tmp_path / "latency.json"
    source, target = write_sentiment_jsonl(tmp_path / "source.jsonl", 12), write_sentiment_jsonl(tmp_path / "t.jsonl", 6)
    proc = _run(["bench", "latency", "--model", str(tiny_model_dir("llama")), "--quick", "--source", str(source),
                 "--target", str(target), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert set(rows) == {"zero_shot", "cast", "icl_1", "icl_fixed_1", "icl_2", "icl_fixed_2"}
    assert rows["cast"]["prompt_tokens_mean"] == rows["zero_shot"]["prompt_tokens_mean"] < rows["icl_1"]["prompt_tokens_mean"]
    assert all(r["ms_per_query"] > 0 for r in rows.values()) and out.with_suffix(".png").is_file()


def test_unknown_benchmark_is_refused(capsys):
    assert main(["bench", "nope"]) == 2
    assert "choose from throughput" in capsys.readouterr().err


# ---- quiet engines -------------------------------------------------------------------------------

ENGINE_VARS = ("VLLM_LOGGING_LEVEL", "VLLM_LOGGING_STREAM", "VLLM_LOGGING_CONFIG_PATH", "VLLM_CONFIGURE_LOGGING",
               "TORCH_CPP_LOG_LEVEL", "PYTHONWARNINGS", "RAY_DEDUP_LOGS")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ENGINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CAST_VLLM_HOME", str(tmp_path / "home"))
    yield monkeypatch
    logging.getLogger("vllm").setLevel(logging.NOTSET)


def test_quiet_engines_configures_vllm_for_every_process(clean_env):
    from logging.config import dictConfig

    from cast_vllm.logging_setup import quiet_engines

    quiet_engines(verbose=False)
    assert os.environ["VLLM_LOGGING_LEVEL"] == "WARNING"
    assert os.environ["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"
    config = json.loads(Path(os.environ["VLLM_LOGGING_CONFIG_PATH"]).read_text())
    assert config["loggers"]["vllm"]["level"] == "WARNING"
    assert config["handlers"]["vllm"]["stream"] == "ext://sys.stderr"
    dictConfig(config)              # what each vLLM process does with it: valid, and it collapses repeats
    handler = logging.getLogger("vllm").handlers[0]
    records = [logging.LogRecord("vllm.x", logging.WARNING, "w.py", 7, "weight %d", (i,), None) for i in range(10)]
    passed = [r for r in records if handler.filter(r)]
    assert len(passed) == 3 and "further messages like this one are not shown" in passed[-1].getMessage()
    other = logging.LogRecord("vllm.x", logging.WARNING, "w.py", 8, "another site", None, None)
    assert handler.filter(other)
    logging.getLogger("vllm").handlers.clear()


def test_verbose_and_user_settings_are_left_alone(clean_env):
    from cast_vllm.logging_setup import quiet_engines

    quiet_engines(verbose=True)
    assert "VLLM_LOGGING_LEVEL" not in os.environ and "VLLM_LOGGING_CONFIG_PATH" not in os.environ
    clean_env.setenv("VLLM_LOGGING_LEVEL", "DEBUG")
    quiet_engines(verbose=False)
    assert os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG" and "VLLM_LOGGING_CONFIG_PATH" not in os.environ


def test_generate_shows_no_vllm_info_lines(tiny_model_dir, tmp_path):
    """One real run: stdout is the answer only; stderr has no INFO line from vLLM."""
    env = {k: v for k, v in os.environ.items() if k not in ENGINE_VARS}
    env["CAST_VLLM_HOME"] = str(tmp_path / "home")
    proc = subprocess.run(CLI + ["generate", "--model", str(tiny_model_dir("llama")), "--prompt", "Hello",
                                 "--max-tokens", "4", "--enforce-eager", "--dtype", "float32"],
                          cwd=OUTSIDE, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.fullmatch(r"\[output\] 'Hello' -> '.*'\n", proc.stdout, re.S), proc.stdout[-3000:]
    info = [line for line in proc.stderr.splitlines() if re.search(r"\bINFO\b", line) and "cast_vllm" not in line]
    assert info == [], info[:10]
    assert "Loading safetensors checkpoint shards" not in proc.stderr   # vLLM's weight-loading bar is off


@pytest.mark.slow
def test_demo_prints_its_table_on_a_clean_stdout(default_model_dir, tmp_path):
    """The demo, made small (about a minute on 2 cores): its steps and table are all of stdout,
    and vLLM adds no INFO line anywhere."""
    env = {k: v for k, v in os.environ.items() if k not in ENGINE_VARS}
    env["CAST_VLLM_HOME"] = str(default_model_dir.parents[1])   # the prepared default model
    proc = subprocess.run(CLI + ["demo", "--n-test", "16", "--n-dev", "8", "--max-tokens", "4", "--no-progress"],
                          cwd=OUTSIDE, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    assert any(re.match(r"\s+method\s+accuracy\s+vs zero-shot", line) for line in out), proc.stdout
    for method in ("zero-shot", "cross-task ICL", "CAST", "random vector"):
        assert any(re.match(rf"\s+{re.escape(method)}\s+\d+\.\d%", line) for line in out), method
    assert out[-1].startswith("demo finished in")
    assert not [line for line in out if re.search(r"\b(INFO|WARNING|DEBUG)\b", line)], proc.stdout
    info = [line for line in proc.stderr.splitlines() if re.search(r"\bINFO\b", line) and "cast_vllm" not in line]
    assert info == [], info[:10]


def test_report_only_finds_results_of_a_model_name_with_dots(tmp_path, capsys):
    """transfer_qwen2.5-coder-1.5b.json: the report must not take ".5b" for a file suffix."""
    (tmp_path / "transfer_qwen2.5-coder-1.5b.json").write_text(json.dumps({"model": "qwen2.5-coder-1.5b", "pairs": []}))
    assert main(["eval", "--suite", "default", "--model", "qwen2.5-coder-1.5b", "--report-only",
                 "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "transfer_qwen2.5-coder-1.5b.md").read_text().startswith("# CAST cross-task transfer")
