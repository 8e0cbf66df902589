"""Shared fixtures: the tiny trained model, a session embedder, offline subprocess env, a Chroma server.

Everything runs offline: ``HF_HUB_OFFLINE=1`` and Chroma telemetry off, here and in every subprocess.
The tiny model and the data sets live in ``../shared`` beside the repository; a test that needs them reaches
them through :func:`shared_path` (or the ``tiny_model_path`` fixture), so without ``../shared`` it is
skipped, with the missing path as the reason, instead of failing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kvemb_rag import KVEmbedder

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
TINY_MODEL_DIR = "data/models/stories260K/hf"
TINY_MODEL = SHARED / TINY_MODEL_DIR  # for places that only need the name (never loaded through it)

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["ANONYMIZED_TELEMETRY"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Different templates per side, for tests that check which side a text went through.
SIDED_TEMPLATES = {
    "query_template": "Question: {text}\nAnswer in one word:",
    "document_template": "Passage: {text}\nSummary in one word:",
}


def shared_path(relative: str) -> Path:
    """``../shared/<relative>`` beside the repository; skips the calling test or fixture when it is missing."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"test data missing: {path} does not exist (the tests expect ../shared beside the repository)")
    return path


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The real tiny trained model (Llama, 5 layers, context 512) beside the repository."""
    return shared_path(f"{TINY_MODEL_DIR}/config.json").parent


@pytest.fixture(scope="session")
def kvemb_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Layer-selection cache shared by in-process embedders and subprocesses (calibrate once)."""
    return tmp_path_factory.mktemp("kvemb-cache")


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model_path: Path, kvemb_cache_dir: Path) -> KVEmbedder:
    """One loaded ``KVEmbedder`` on the tiny model at max_length 512, shared by the session.

    Its two sides have different templates (the default kv templates are the same on both sides), so tests
    can tell which side a vector went through.
    """
    from kvemb_rag import KVEmbedder

    return KVEmbedder(str(tiny_model_path), max_length=512, cache_dir=str(kvemb_cache_dir), **SIDED_TEMPLATES)


@pytest.fixture(scope="session")
def subprocess_env(kvemb_cache_dir: Path) -> dict[str, str]:
    """Environment for subprocesses: offline, no telemetry, the shared layer cache, no colour codes."""
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "ANONYMIZED_TELEMETRY": "False",
            "KVEMB_CACHE_DIR": str(kvemb_cache_dir),
            "TOKENIZERS_PARALLELISM": "false",
            "NO_COLOR": "1",
            "COLUMNS": "200",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("KVEMB_MODEL", None)
    return env


# A store client for subprocess tests: reads a JSON spec (argv[1]) and indexes or queries, printing JSON.
# A real separate process: it exercises reopening a database, SIGKILL part-way and concurrent writers.
_STORE_WORKER = r"""
import json, os, signal, sys
from kvemb_rag import KVEmbedder
from kvemb_rag.store import Document
from kvemb_rag.store import KVStore

spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
where = {"url": spec["url"]} if spec.get("url") else {"path": spec["db"]}
store = KVStore(**where, collection=spec.get("collection", "kvemb"), write_batch_size=spec.get("batch", 256))
if spec["mode"] == "query":
    store.load_embedder()
    hits = store.query(spec["text"], spec.get("k", 5), per_document=spec.get("per_document", False))
    print(json.dumps([h.to_dict() for h in hits]))
else:
    store.embedder = KVEmbedder(
        spec["model"],
        max_length=spec.get("max_length", 512),
        query_template=spec.get("query_template"),
        document_template=spec.get("document_template"),
    )
    docs = [Document(**d) for d in spec["docs"]]
    kill_after = spec.get("kill_after_batches")

    def progress(event):
        if kill_after and event.write_batches >= kill_after:
            print(json.dumps({"killed_after_batches": event.write_batches}), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    if spec.get("source"):
        summary = store.sync_documents(docs, source=spec["source"], progress=progress)
    else:
        summary = store.add_documents(docs, progress=progress)
    print(json.dumps(summary.to_dict()))
store.close()
"""


@pytest.fixture(scope="session")
def store_worker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a Python script that runs one store job from a JSON spec file (see ``_STORE_WORKER``)."""
    path = tmp_path_factory.mktemp("worker") / "store_worker.py"
    path.write_text(_STORE_WORKER, encoding="utf-8")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _heartbeat(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory, subprocess_env: dict[str, str]) -> Iterator[str]:
    """A real Chroma server (``chroma run``) on a free local port; yields its URL, stops it at the end."""
    exe = Path(sys.executable).with_name("chroma")
    command = str(exe) if exe.is_file() else shutil.which("chroma")
    if command is None:
        pytest.skip("the `chroma` console script (chromadb) is not installed")
    data = tmp_path_factory.mktemp("chroma-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = data / "server.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [command, "run", "--path", str(data / "db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=subprocess_env,
    )
    try:
        deadline = time.monotonic() + 60
        while not _heartbeat(url):
            if proc.poll() is not None:
                log.flush()
                pytest.fail(f"chroma run exited with {proc.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"chroma run did not answer its heartbeat within 60 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()
