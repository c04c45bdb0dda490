"""The VADER human-rated sentiment sets (Hutto & Gilbert, ICWSM 2014; MIT) as task files.

Read from the shared data folder when it is there (``sentiment/<name>.jsonl``); otherwise
obtained from the ``vaderSentiment==3.3.2`` sdist on PyPI (download only, nothing installed):
``additional_resources/hutto_ICWSM_2014.tar.gz`` holds ``<Name>_GroundTruth.txt`` files with
``ID<TAB>RATING<TAB>TEXT`` lines, converted here to the shared folder's JSONL schema
(``{"id", "text", "rating"}``) under ``$CAST_VLLM_HOME/data/vader/``. Both archives are checked
against the sha256 the shared data README records.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from cast_vllm.atomic import atomic_write_bytes
from cast_vllm.errors import CastVllmError
from cast_vllm.home import cast_home

logger = logging.getLogger(__name__)

SDIST = "vaderSentiment==3.3.2"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
INNER_SHA256 = "d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa"
FILES = {"movies": "movieReviewSnippets_GroundTruth.txt", "tweets": "tweets_GroundTruth.txt",
         "amazon": "amazonReviewSnippets_GroundTruth.txt"}


class VaderDataError(CastVllmError, RuntimeError):
    """The VADER data could not be found or obtained."""


def vader_file(name: str, shared_dir: str | Path | None = None) -> Path:
    """Path of the ``name`` set (movies, tweets, amazon) as JSONL."""
    if name not in FILES:
        raise VaderDataError(f"unknown VADER set {name!r}; use one of {', '.join(FILES)}")
    if shared_dir is not None:
        shared = Path(shared_dir) / "sentiment" / f"{name}.jsonl"
        if shared.is_file():
            return shared
    cache = cast_home() / "data" / "vader"
    path = cache / f"{name}.jsonl"
    if not path.is_file():
        _fetch(cache)
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fetch(cache: Path) -> None:
    logger.info("downloading %s from PyPI for the VADER sentiment sets", SDIST)
    with tempfile.TemporaryDirectory(prefix="cast-vllm-vader-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
               "-q", "-d", tmp, SDIST]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(Path(tmp).glob("vaderSentiment-3.3.2*.tar.gz"))
        if proc.returncode != 0 or not found:
            raise VaderDataError(f"pip could not download {SDIST} (is the package index reachable?): "
                                 f"{proc.stderr.strip()[-500:]}")
        sdist = found[0].read_bytes()
    if _sha256(sdist) != SDIST_SHA256:
        raise VaderDataError(f"{SDIST} sdist has sha256 {_sha256(sdist)}, expected {SDIST_SHA256}")
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as outer:
        inner = outer.extractfile(INNER)
        if inner is None:
            raise VaderDataError(f"{SDIST} sdist lacks {INNER}")
        inner_bytes = inner.read()
    if _sha256(inner_bytes) != INNER_SHA256:
        raise VaderDataError(f"{INNER} has sha256 {_sha256(inner_bytes)}, expected {INNER_SHA256}")
    cache.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        for name, fname in FILES.items():
            if fname not in members:
                raise VaderDataError(f"{INNER} lacks {fname}")
            text = tar.extractfile(members[fname]).read().decode("utf-8")
            rows = []
            for lineno, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
                if not line.strip():
                    continue
                parts = line.split("\t", 2)
                if len(parts) != 3:
                    raise VaderDataError(f"{fname}:{lineno}: expected ID<TAB>RATING<TAB>TEXT")
                rows.append({"id": parts[0], "text": parts[2], "rating": float(parts[1])})
            out = cache / f"{name}.jsonl"
            atomic_write_bytes(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
            logger.info("wrote %s (%d rows)", out, len(rows))
