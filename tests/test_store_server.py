"""KVStore against a real Chroma server (``chroma run``) through ``HttpClient``: no mocks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from kvemb_rag import KVEmbedder
from kvemb_rag.store import Document, KVStore
from tests.conftest import SIDED_TEMPLATES

_TOPICS = ("cat", "dog", "boat", "rain", "cake", "frog", "king", "moon")


def small_docs(prefix: str, n: int) -> list[Document]:
    return [
        Document(
            f"{prefix}-{i:02d}",
            f"The {_TOPICS[i % len(_TOPICS)]} of {prefix} number {i} went to the park. " * (1 + i % 3),
            {"writer": prefix},
        )
        for i in range(n)
    ]


def test_http_round_trip(chroma_server: str, tiny_embedder: KVEmbedder) -> None:
    docs = small_docs("http", 6)
    with KVStore(url=chroma_server, collection="round-trip", embedder=tiny_embedder) as store:
        summary = store.add_documents(docs)
        assert summary.added == len(docs)
        assert store.add_documents(docs).unchanged == len(docs)
        expected = store.query("the cat in the park", k=3)
    with KVStore(url=chroma_server, collection="round-trip") as reopened:
        reopened.load_embedder()
        info = reopened.info()
        assert (info.records, info.documents, info.space) == (summary.chunks, len(docs), "cosine")
        hits = reopened.query("the cat in the park", k=3)
        grouped = reopened.query("the cat in the park", k=4, per_document=True)
    assert [h.id for h in hits] == [h.id for h in expected]
    np.testing.assert_allclose([h.score for h in hits], [h.score for h in expected], atol=1e-5)
    assert len({h.doc_id for h in grouped}) == 4
    assert hits[0].metadata == {"writer": "http"}


def test_concurrent_writers_lose_nothing(
    chroma_server: str,
    tiny_embedder: KVEmbedder,
    store_worker: Path,
    subprocess_env: dict[str, str],
    tmp_path: Path,
) -> None:
    writers = {"alpha": small_docs("alpha", 24), "beta": small_docs("beta", 24)}
    procs: dict[str, subprocess.Popen[str]] = {}
    for name, docs in writers.items():
        spec: dict[str, Any] = {
            "mode": "index",
            "url": chroma_server,
            "collection": "concurrent",
            "model": str(tiny_embedder.config.model),
            **SIDED_TEMPLATES,
            "batch": 3,  # many small writes, interleaved between the two processes
            "docs": [{"id": d.id, "text": d.text, "metadata": dict(d.metadata)} for d in docs],
        }
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(spec), encoding="utf-8")
        procs[name] = subprocess.Popen(
            [sys.executable, str(store_worker), str(path)],
            env=subprocess_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    chunks = 0
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {err[-3000:]}"
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["added"] == len(writers[name])
        chunks += summary["chunks"]
    with KVStore(url=chroma_server, collection="concurrent", embedder=tiny_embedder) as store:
        assert store.count() == chunks
        assert store.document_ids() == sorted(d.id for docs in writers.values() for d in docs)
        assert store.add_documents(writers["alpha"] + writers["beta"]).chunks_embedded == 0
