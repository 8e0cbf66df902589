"""KVStore on a real embedded Chroma (PersistentClient) and the real tiny model: no mocks."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
import pytest
from chromadb.config import Settings

from kvemb_rag import KVEmbedder
from kvemb_rag.store import (
    CollectionNotFoundError,
    Document,
    EmbedderMismatchError,
    IncompatibleCollectionError,
    IndexSummary,
    KVStore,
    identity_differences,
)
from tests.conftest import SIDED_TEMPLATES

_VOCABULARY = """
cat dog bird fish tree sun moon rain snow ball cake park boat star king queen frog bear girl boy
garden house river hill forest shop school friend mother father happy sad big small red blue
"""
WORDS = tuple(_VOCABULARY.split())


def story(seed: int, sentences: int) -> str:
    """Deterministic small-vocabulary text; paragraphs every 5 sentences."""
    rng = np.random.default_rng(seed)
    parts = []
    for i in range(sentences):
        words = rng.choice(WORDS, size=int(rng.integers(5, 12)))
        parts.append(" ".join(words).capitalize() + ".")
        if i % 5 == 4:
            parts.append("\n\n")
    return " ".join(parts).replace(" \n\n ", "\n\n").strip()


def corpus(version: str = "a", n: int = 12) -> list[Document]:
    """``n`` documents; version "b" edits 3, drops 2 and adds 3 (for change / resume tests)."""
    # Mostly one-chunk documents (cheap), and every sixth long enough for 2-3 chunks at 512 tokens.
    docs = [
        Document(
            f"doc-{i:02d}.txt",
            story(i, 50 if i % 6 == 0 else 3 + (i % 4) * 3),
            {"topic": WORDS[i % len(WORDS)], "n": i},
        )
        for i in range(n)
    ]
    if version == "b":
        docs = [
            dataclasses.replace(d, text=d.text + "\n\nThe end of the changed story.") if i in (1, 6, 7) else d
            for i, d in enumerate(docs)
            if i not in (2, 9)
        ]
        docs += [Document(f"new-{i}.md", story(100 + i, 8), {"topic": "new"}) for i in range(3)]
    return docs


def records(path: Path, collection: str = "kvemb") -> dict[str, tuple[str, dict[str, Any], np.ndarray]]:
    """Every record of a collection: id -> (document, metadata, embedding), through a fresh client."""
    client = chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))
    try:
        got = client.get_collection(collection, embedding_function=None).get(
            include=["documents", "metadatas", "embeddings"]
        )
        return {
            i: (d, dict(m or {}), np.asarray(e))
            for i, d, m, e in zip(
                got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True
            )
        }
    finally:
        client.close()


def run_worker(worker: Path, spec: dict[str, Any], env: dict[str, str], tmp: Path, name: str) -> Any:
    spec_path = tmp / f"{name}.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(worker), str(spec_path)], env=env, capture_output=True, text=True, timeout=300
    )


def docs_spec(docs: list[Document]) -> list[dict[str, Any]]:
    return [{"id": d.id, "text": d.text, "metadata": dict(d.metadata), "source": d.source} for d in docs]


@pytest.fixture
def store(tmp_path: Path, tiny_embedder: KVEmbedder) -> Iterator[KVStore]:
    s = KVStore(tmp_path / "db", embedder=tiny_embedder, write_batch_size=8)
    yield s
    s.close()


def test_index_close_reopen_in_new_process(
    tmp_path: Path, tiny_embedder: KVEmbedder, store_worker: Path, subprocess_env: dict[str, str]
) -> None:
    db = tmp_path / "db"
    docs = corpus()
    with KVStore(db, embedder=tiny_embedder) as store:
        summary = store.add_documents(docs)
        expected = store.query(docs[3].text[:200], k=4)
    assert summary.documents == summary.added == len(docs)
    assert summary.chunks > len(docs)  # the long documents were split

    proc = run_worker(
        store_worker,
        {"mode": "query", "db": str(db), "text": docs[3].text[:200], "k": 4},
        subprocess_env,
        tmp_path,
        "q",
    )
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [h["id"] for h in hits] == [h.id for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in expected], atol=1e-5)
    scores = [h["score"] for h in hits]
    # Hybrid by default: fused scores (cosine bounds hold in dense mode, tests/test_store_lexical.py).
    assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores))


def test_records_carry_spans_tokens_and_metadata(
    store: KVStore, tiny_embedder: KVEmbedder, tmp_path: Path
) -> None:
    long = Document("long", story(7, 120), {"tags": ["x", 1], "nested": {"a": None}, "lang": "en"}, "src")
    store.add_documents([long, Document("short", "A cat sat in the sun.", {"lang": "fr"})])
    recs = records(tmp_path / "db")
    mine = sorted((m for _, m, _ in recs.values() if m["doc_id"] == "long"), key=lambda m: m["chunk_index"])
    assert len(mine) == mine[0]["n_chunks"] > 1
    assert mine[0]["start"] == 0 and mine[-1]["end"] == len(long.text)
    for a, b in itertools.pairwise(mine):
        assert a["end"] == b["start"]  # overlap=0: contiguous, nothing dropped
    for rid, (text, meta, vector) in recs.items():
        assert rid.startswith(f"{meta['doc_id']}::{meta['chunk_index']}::")
        assert meta["content_hash"][:16] in rid
        assert meta["n_tokens"] <= 512
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
        if meta["doc_id"] == "long":
            assert text == long.text[meta["start"] : meta["end"]]
            assert meta["source"] == "src" and meta["lang"] == "en"
            assert json.loads(meta["tags"]) == ["x", 1]
    # Hits decode JSON-encoded metadata; `where` filters on user metadata.
    hits = store.query("cat", k=10, where={"lang": "en"})
    assert hits and {h.doc_id for h in hits} == {"long"}
    assert hits[0].metadata == {"tags": ["x", 1], "nested": {"a": None}, "lang": "en"}
    assert hits[0].source == "src"
    assert hits[0].text == long.text[hits[0].start : hits[0].end]


def test_overlap_is_recorded_and_changes_the_chunks(store: KVStore, tmp_path: Path) -> None:
    long = Document("long", story(11, 60))
    store.add_documents([long])
    assert store.recorded_overlap == 0
    summary = store.add_documents([long], overlap=32)
    assert summary.replaced == 1 and store.recorded_overlap == 32
    spans = sorted((m["start"], m["end"]) for _, m, _ in records(tmp_path / "db").values())
    assert len(spans) > 1 and all(b[0] < a[1] for a, b in itertools.pairwise(spans))  # overlapping


def test_reindex_is_idempotent_and_cheap(store: KVStore, tmp_path: Path) -> None:
    docs = corpus()
    first = store.add_documents(docs)
    before = records(tmp_path / "db")
    second = store.add_documents(docs)
    assert (second.added, second.unchanged, second.replaced, second.chunks_embedded) == (0, len(docs), 0, 0)
    assert second.records_written == 0 and second.chunks == first.chunks
    after = records(tmp_path / "db")
    assert after.keys() == before.keys()
    assert store.count() == first.chunks


def test_changed_and_deleted_documents(store: KVStore, tmp_path: Path) -> None:
    store.sync_documents(corpus("a"), source="corpus")
    summary = store.sync_documents(corpus("b"), source="corpus")
    assert (summary.added, summary.replaced, summary.removed) == (3, 3, 2)
    assert summary.unchanged == len(corpus("b")) - 6
    # Unchanged chunks of the edited documents reuse their vectors: far fewer chunks embedded than written.
    assert summary.chunks_embedded < summary.records_written
    recs = records(tmp_path / "db")
    expected = {d.id: d for d in corpus("b")}
    assert {m["doc_id"] for _, m, _ in recs.values()} == set(expected)
    for text, meta, _ in recs.values():  # no chunk of an old version is left behind
        doc = expected[meta["doc_id"]]
        assert text == doc.text[meta["start"] : meta["end"]]
    for doc_id, doc in expected.items():
        mine = [m for _, m, _ in recs.values() if m["doc_id"] == doc_id]
        assert sorted(m["chunk_index"] for m in mine) == list(range(mine[0]["n_chunks"]))
        assert len({m["content_hash"] for m in mine}) == 1, doc
    # Document-level delete.
    assert store.delete_document("doc-00.txt") == 1
    assert store.delete_documents(["doc-01.txt", "missing"]) == 1
    assert "doc-00.txt" not in store.document_ids() and "doc-01.txt" not in store.document_ids()
    assert store.document_ids(source="corpus") == sorted(set(expected) - {"doc-00.txt", "doc-01.txt"})


def test_metadata_change_updates_records_without_reembedding(store: KVStore) -> None:
    doc = Document("d", story(3, 40), {"rev": 1})
    store.add_documents([doc])
    summary = store.add_documents([dataclasses.replace(doc, metadata={"rev": 2})])
    assert summary.replaced == 1 and summary.chunks_embedded == 0
    assert {h.metadata["rev"] for h in store.query("cat", k=20)} == {2}


def test_interrupted_run_converges_to_the_clean_result(
    tmp_path: Path, tiny_embedder: KVEmbedder, store_worker: Path, subprocess_env: dict[str, str]
) -> None:
    killed_db, clean_db = tmp_path / "killed", tmp_path / "clean"
    with KVStore(killed_db, embedder=tiny_embedder, write_batch_size=4) as store:
        store.sync_documents(corpus("a"), source="corpus")
    version_a = set(records(killed_db))
    spec = {
        "mode": "index",
        "db": str(killed_db),
        "model": str(tiny_embedder.config.model),
        **SIDED_TEMPLATES,
        "batch": 2,
        "source": "corpus",
        "docs": docs_spec(corpus("b")),
        "kill_after_batches": 2,
    }
    proc = run_worker(store_worker, spec, subprocess_env, tmp_path, "kill")
    assert proc.returncode == -9, (proc.returncode, proc.stderr[-2000:])  # SIGKILL
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"killed_after_batches": 2}
    partial = set(records(killed_db))

    with KVStore(killed_db, embedder=tiny_embedder, write_batch_size=4) as store:
        store.sync_documents(corpus("b"), source="corpus")
    with KVStore(clean_db, embedder=tiny_embedder, write_batch_size=4) as store:
        store.sync_documents(corpus("b"), source="corpus")
    resumed, clean = records(killed_db), records(clean_db)
    # The kill left a mix: some of version b written, not all of it, version a not yet cleaned up.
    assert partial & (set(clean) - version_a) and set(clean) - partial and partial - set(clean)
    assert resumed.keys() == clean.keys()
    for rid, (text, meta, vector) in clean.items():
        assert resumed[rid][0] == text and resumed[rid][1] == meta
        np.testing.assert_allclose(resumed[rid][2], vector, atol=1e-5)


def test_per_document_grouping(store: KVStore) -> None:
    docs = corpus()
    store.add_documents(docs)
    chunk_hits = store.query(docs[5].text[:300], k=30)
    assert len({h.doc_id for h in chunk_hits}) < len(chunk_hits)  # some documents have several chunks
    grouped = store.query(docs[5].text[:300], k=len(docs), per_document=True)
    assert len(grouped) == len(docs) == len({h.doc_id for h in grouped})
    assert [h.score for h in grouped] == sorted((h.score for h in grouped), reverse=True)
    best = {}
    for h in store.query(docs[5].text[:300], k=store.count()):
        best.setdefault(h.doc_id, h)
    assert [h.id for h in grouped] == [h.id for h in best.values()]
    assert len(store.query("cat", k=3, per_document=True)) == 3


def test_embedder_mismatch_is_refused(store: KVStore, tiny_embedder: KVEmbedder, tmp_path: Path) -> None:
    store.add_documents(corpus(n=3))
    for other, key in (
        (tiny_embedder.with_options(max_length=256), "max_length"),
        (tiny_embedder.with_options(strategy="mean"), "strategy"),
    ):
        # The message names the differing setting, the collection's value and the given embedder's.
        stored, given = repr(tiny_embedder.identity[key]), repr(other.identity[key])
        names = rf"{key}: collection has {re.escape(stored)}, embedder has {re.escape(given)}"
        with KVStore(tmp_path / "db", embedder=other) as wrong:
            with pytest.raises(EmbedderMismatchError, match=names) as info:
                wrong.add_documents([Document("x", "A new story.")])
            assert key in info.value.differences
            with pytest.raises(EmbedderMismatchError, match=names):
                wrong.query("cat")
    assert store.count() == sum(1 for _ in records(tmp_path / "db"))
    assert "x" not in store.document_ids()


def test_load_embedder_rebuilds_the_collection_identity(store: KVStore, tmp_path: Path) -> None:
    store.add_documents(corpus(n=2))
    with KVStore(tmp_path / "db") as reopened:
        embedder = reopened.load_embedder()
        assert identity_differences(reopened.identity or {}, embedder.identity) == {}
        assert reopened.query("cat", k=1)


def test_unknown_and_foreign_collections(tmp_path: Path, tiny_embedder: KVEmbedder) -> None:
    with KVStore(tmp_path / "db", collection="nothing-here", embedder=tiny_embedder) as store:
        with pytest.raises(CollectionNotFoundError, match="nothing-here"):
            store.query("cat")
        assert not store.exists() and store.count() == 0 and store.document_ids() == []
        client = store.client
        col = client.create_collection("foreign", embedding_function=None)
        col.add(ids=["a"], embeddings=[[0.0] * tiny_embedder.dim], documents=["x"])
    with (
        KVStore(tmp_path / "db", collection="foreign", embedder=tiny_embedder) as store,
        pytest.raises(IncompatibleCollectionError, match="'foreign' .* records no kvemb-rag embedder identity"),
    ):
        store.add_documents([Document("d", "A cat.")])
    with KVStore(tmp_path / "db", collection="l2-space", embedder=tiny_embedder) as store:
        store.client.create_collection("l2-space", metadata={"hnsw:space": "l2"}, embedding_function=None)
        with pytest.raises(IncompatibleCollectionError, match="cosine"):
            store.add_documents([Document("d", "A cat.")])
    # An empty collection created elsewhere with the cosine space is adopted; its other metadata is kept.
    with KVStore(tmp_path / "db", collection="adopt-me", embedder=tiny_embedder) as store:
        store.client.create_collection(
            "adopt-me", metadata={"hnsw:space": "cosine", "owner": "ops"}, embedding_function=None
        )
        assert store.add_documents([Document("d", "A cat.")]).added == 1
        assert store.identity == tiny_embedder.identity
        assert store.client.get_collection("adopt-me").metadata["owner"] == "ops"


def test_input_validation(store: KVStore) -> None:
    with pytest.raises(ValueError, match="Duplicate"):
        store.add_documents([Document("a", "x y"), Document("a", "z")])
    with pytest.raises(ValueError, match="reserved"):
        Document("a", "text", {"doc_id": 1})
    with pytest.raises(ValueError, match="empty"):
        Document("a", "   ")
    with pytest.raises(ValueError, match="source"):
        store.sync_documents([Document("a", "x", source="other")], source="mine")
    with pytest.raises(ValueError, match="at most one"):
        KVStore("p", url="http://localhost:1")
    with pytest.raises(ValueError, match="http"):
        KVStore(url="localhost:8000")
    with pytest.raises(ValueError, match="k must be"):
        store.query("cat", k=0)
    with pytest.raises(ValueError, match="no embedder"):
        KVStore(client=store.client).add_documents([Document("a", "x")])
    with pytest.raises(ValueError, match=r"added \(2\) \+ unchanged \(0\) \+ replaced \(0\) exceeds documents \(1\)"):
        IndexSummary(documents=1, added=2)
    summary = IndexSummary(documents=2, added=1) + IndexSummary(documents=1, unchanged=1)
    assert (summary.documents, summary.added, summary.unchanged) == (3, 1, 1)


def _two_sources(root: Path) -> tuple[Path, Path]:
    """Two folders whose files share relative paths, at the top and nested, with different texts."""
    for name, seed in (("A", 0), ("B", 50)):
        folder = root / name
        (folder / "guide" / "deep").mkdir(parents=True)
        (folder / "README.md").write_text(f"# {name}\n\n{story(seed, 4)}", encoding="utf-8")
        (folder / "guide" / "deep" / "notes.txt").write_text(story(seed + 1, 3), encoding="utf-8")
        (folder / f"only-{name}.txt").write_text(story(seed + 2, 3), encoding="utf-8")
    return root / "A", root / "B"


def test_sources_with_colliding_ids_never_touch_each_other(store: KVStore, tmp_path: Path) -> None:
    """Index A, B, A: every document of both stays; re-indexing either source changes nothing."""
    from kvemb_rag.sources import read_path

    a, b = (read_path(p) for p in _two_sources(tmp_path / "src"))
    assert {d.id for d in a.documents} & {d.id for d in b.documents} == {"README.md", "guide/deep/notes.txt"}
    first_a = store.sync_documents(a.documents, source=a.source)
    first_b = store.sync_documents(b.documents, source=b.source)
    assert (first_a.added, first_b.added, first_b.removed, first_b.replaced) == (3, 3, 0, 0)
    expected = {(r.source, d.id): d.text for r in (a, b) for d in r.documents}
    snapshot = records(tmp_path / "db")
    stored = {(m["source"], m["doc_id"]): m for _, m, _ in snapshot.values()}
    assert set(stored) == set(expected) and store.document_keys() == sorted(expected)
    for text, meta, _ in snapshot.values():  # each record holds its own source's text
        assert text == expected[(meta["source"], meta["doc_id"])][meta["start"] : meta["end"]]
    assert store.info().documents == 6

    again_a = store.sync_documents(a.documents, source=a.source)
    again_b = store.sync_documents(b.documents, source=b.source)
    for again in (again_a, again_b):
        assert (again.unchanged, again.added, again.replaced, again.removed, again.records_written) == (3, 0, 0, 0, 0)
    assert records(tmp_path / "db").keys() == snapshot.keys()

    # Searching finds both READMEs, told apart by their sources.
    readmes = {h.source for h in store.query("cat", k=20) if h.doc_id == "README.md"}
    assert readmes == {a.source, b.source}
    grouped = [(h.source, h.doc_id) for h in store.query("cat", k=6, per_document=True)]
    assert sorted(grouped, key=str) == sorted(expected, key=str)

    # Deleting with a source touches only that source; a README.md added without a source is a third document.
    store.add_documents([Document("README.md", "A loose note about the garden.")])
    assert store.info().documents == 7 and store.document_ids(source=a.source).count("README.md") == 1
    assert store.delete_document("README.md", source=b.source) == 1
    assert (b.source, "README.md") not in store.document_keys()
    assert {(a.source, "README.md"), (None, "README.md")} <= set(store.document_keys())
    # Vanished documents of one source are removed from that source only.
    store.sync_documents([d for d in a.documents if d.id != "guide/deep/notes.txt"], source=a.source)
    assert (a.source, "guide/deep/notes.txt") not in store.document_keys()
    assert (b.source, "guide/deep/notes.txt") in store.document_keys()


def test_chunk_size_is_a_store_setting(tmp_path: Path, tiny_embedder: KVEmbedder) -> None:
    """Chunks follow the store's chunk size (default DEFAULT_CHUNK_SIZE), recorded for later runs."""
    from kvemb_rag.store import DEFAULT_CHUNK_SIZE

    assert tiny_embedder.max_length == 512 > DEFAULT_CHUNK_SIZE
    doc = Document("long", story(7, 60))

    def n_tokens(path: Path) -> list[int]:
        return [int(m["n_tokens"]) for _, m, _ in records(path).values()]

    with KVStore(tmp_path / "db", embedder=tiny_embedder) as store:
        store.add_documents([doc])
        assert store.recorded_chunk_size == DEFAULT_CHUNK_SIZE
    default = n_tokens(tmp_path / "db")
    assert len(default) > 1 and max(default) <= DEFAULT_CHUNK_SIZE
    with KVStore(tmp_path / "db", embedder=tiny_embedder, chunk_size=DEFAULT_CHUNK_SIZE // 2) as store:
        assert store.add_documents([doc]).replaced == 1  # re-chunked at the new size
        assert store.recorded_chunk_size == DEFAULT_CHUNK_SIZE // 2
    smaller = n_tokens(tmp_path / "db")
    assert len(smaller) > len(default) and max(smaller) <= DEFAULT_CHUNK_SIZE // 2
    with KVStore(tmp_path / "db", embedder=tiny_embedder) as store:  # no setting: the collection's size
        assert store.add_documents([doc]).unchanged == 1
    with pytest.raises(ValueError, match="chunk_size=1024 exceeds the embedder's max_length=512"):
        KVStore(tmp_path / "db2", embedder=tiny_embedder, chunk_size=1024).add_documents([doc])
    with pytest.raises(ValueError, match=r"chunk_size must be None .* or an int >= 16.*got 4"):
        KVStore(tmp_path / "db3", chunk_size=4)
