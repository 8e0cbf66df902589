"""The README's Python examples run as written, in order, offline, on the tiny trained model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_models import REPO, STORIES

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_has_examples_for_every_integration() -> None:
    text = "\n".join(BLOCKS)
    for needle in ("KVEmbedder", "langchain_kvemb", "llama_index.embeddings.kvemb", "KVEmbeddingFunction"):
        assert needle in text


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index: int, workdir: Path) -> None:
    """Blocks share one working directory and run in order (a later block may reopen an earlier store)."""
    env = {
        **os.environ,
        "KVEMB_MODEL": str(STORIES),
        "KVEMB_CACHE_DIR": str(workdir / "cache"),
        "HF_HUB_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"README block {index} failed:\n{BLOCKS[index]}\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), "every example prints its result"
