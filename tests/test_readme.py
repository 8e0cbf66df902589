"""The README's examples, and those moved from it into docs/, run as written, in order, offline, on the tiny model."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL, TINY_MODEL_DIR, shared_path
from tests.tiny_models import REPO

# Pages whose ```python blocks are runnable examples: the README first, then the docs pages its longer examples
# moved to. (docs/engine-api.md's block is a signature listing, not an example.)
EXAMPLE_PAGES = ("README.md", "docs/integrations.md")
# Pages whose ```bash blocks hold `kvemb` lines: the README and every docs page (the README's lines come first).
SHELL_PAGES = ("README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")))


def _blocks(page: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (REPO / page).read_text(), flags=re.S)


BLOCKS = [block for page in EXAMPLE_PAGES for block in _blocks(page, "python")]
README_BLOCKS = _blocks("README.md", "python")


def test_readme_has_examples_for_every_entry_point() -> None:
    text = "\n".join(README_BLOCKS)
    for needle in ("KVEmbedder", "KVStore", "langchain_kvemb", "llama_index.embeddings.kvemb", "from openai import"):
        assert needle in text
    assert "KVEmbeddingFunction" in "\n".join(BLOCKS)  # the Chroma embedding function: docs/integrations.md


def _env(workdir: Path) -> dict[str, str]:
    """Offline, the tiny model as the default, a cache of the test's own (skips the test without the model)."""
    return {
        **os.environ,
        "KVEMB_MODEL": str(shared_path(TINY_MODEL_DIR)),
        "KVEMB_CACHE_DIR": str(workdir / "cache"),
        "HF_HUB_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "OMP_NUM_THREADS": "1",
        "NO_COLOR": "1",
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readme")


# The README's `kvemb serve` client example talks to this address; its test serves the tiny model there.
SERVE_URL = "http://localhost:8000/v1"


@pytest.fixture(scope="module")
def served(workdir: Path) -> Iterator[str]:
    """A real `kvemb serve` (the tiny model under the README's model name) on a free port; yields its /v1 URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = _env(workdir)
    command = [sys.executable, "-m", "kvemb_rag.cli", "serve", "--model", env["KVEMB_MODEL"], "--port", str(port),
               "--served-model-name", "gemma-3-270m"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, "kvemb serve exited"
            assert time.monotonic() < deadline, "kvemb serve did not start"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.3)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index: int, workdir: Path, request: pytest.FixtureRequest) -> None:
    """Blocks share one working directory and run in order (a later block may reopen an earlier store)."""
    block = BLOCKS[index]
    if SERVE_URL in block:  # the server client example: against a real server started for it
        block = block.replace(SERVE_URL, request.getfixturevalue("served"))
    command = [sys.executable, "-c", block]
    result = subprocess.run(command, cwd=workdir, env=_env(workdir), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"Example block {index} failed:\n{BLOCKS[index]}\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), "every example prints its result"


# ---------------------------------------------------------------- the `kvemb` lines of the README and docs/
def _shell_commands() -> list[str]:
    """Every command of the ``bash`` blocks of SHELL_PAGES, continuation lines joined, comments dropped."""
    commands = []
    for block in (block for page in SHELL_PAGES for block in _blocks(page, "bash")):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


KVEMB_LINES = [c for c in _shell_commands() if c.startswith("kvemb ")]
# Placeholders the README uses for values; optional parts are written [--option VALUE]. Parsing a line needs
# no model; the lines that run get the model's existence checked by _env.
_PLACEHOLDERS = {"M": str(TINY_MODEL), "NAME": "kvemb", "DIR": "store", "KEY": "secret", "N": "2"}


def _argv(line: str) -> list[str]:
    words = shlex.split(line.replace("[", " ").replace("]", " "))[1:]
    return [_PLACEHOLDERS.get(w, w) for w in words]


def test_readme_documents_the_cli() -> None:
    documented = {_argv(line)[0] for line in KVEMB_LINES}
    assert {"index", "search", "info", "layers", "eval"} <= documented


@pytest.mark.parametrize("line", KVEMB_LINES)
def test_readme_kvemb_line_parses(line: str) -> None:
    """Each documented command line is accepted by the CLI's parser: command, option names and value types."""
    import typer

    from kvemb_rag.cli import app

    argv = _argv(line)
    group = typer.main.get_command(app)  # the click group typer builds (typer vendors its own click)
    with group.make_context("kvemb", list(argv), resilient_parsing=True) as parent:
        command = group.get_command(parent, argv[0])  # type: ignore[attr-defined]
        assert command is not None, f"README documents an unknown command: {line}"
        try:  # parses every option (names, counts, int values) without running the command
            command.make_context(argv[0], argv[1:], parent=parent)
        except Exception as exc:  # click's UsageError family
            pytest.fail(f"README line rejected by the CLI: {line}\n{exc}")


def test_readme_cheap_kvemb_lines_run(tmp_path: Path) -> None:
    """The index / search / info / layers lines run as written on the tiny model (placeholders filled)."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\nLong documents are cut into chunks.\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("The cat sat on the mat.\n", encoding="utf-8")
    record = '{"id": "x", "text": "A boat on the river.", "lang": "en"}\n'
    (tmp_path / "data.jsonl").write_text(record, encoding="utf-8")
    env = _env(tmp_path)
    # Lines with --url need a running Chroma server (and `serve` would block): those are only parsed above.
    cheap = [
        line for line in KVEMB_LINES if _argv(line)[0] in {"index", "search", "info", "layers"} and "--url" not in line
    ]
    assert [_argv(line)[0] for line in cheap][:3] == ["index", "search", "info"]  # index first: the others read it
    kvemb = Path(sys.executable).with_name("kvemb")
    for line in cheap:
        result = subprocess.run(
            [str(kvemb), *_argv(line)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"README line failed: {line}\n{result.stderr[-3000:]}"
        assert result.stdout.strip(), line
