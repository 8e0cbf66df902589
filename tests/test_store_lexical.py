"""The store's lexical index and search modes, on a real embedded Chroma and the real tiny model: no mocks.

The central check: after every store operation (add, replace, delete by document and by source, vanished
files, two folders with the same file names, a kill mid-run and its re-run) the lexical index *saved on disk*
equals one built from scratch from the collection's records, and is stamped with the collection's current
records version -- or, after a kill, is recognised as older and rebuilt from the records with a log line.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import chromadb
import pytest
from chromadb.config import Settings

from kvemb_rag import KVEmbedder
from kvemb_rag.errors import ConfigError, InputError
from kvemb_rag.store import SEARCH_MODES, Document, Fusion, KVStore
from kvemb_rag.store.lexical import LexicalIndex, records_version
from kvemb_rag.store.search import fuse
from tests.conftest import SIDED_TEMPLATES
from tests.test_store import WORDS, corpus, docs_spec, run_worker, story

# Words that no story uses: each marks one document for lexical search.
_RARE = ("zeppelin", "quasar", "marmalade", "obsidian")


def scratch_index(db: Path, collection: str = "kvemb") -> tuple[LexicalIndex, str | None]:
    """A lexical index built from scratch from the collection's records (fresh client), and its version."""
    client = chromadb.PersistentClient(path=str(db), settings=Settings(anonymized_telemetry=False))
    try:
        col = client.get_collection(collection, embedding_function=None)
        got = col.get(include=["documents", "metadatas"])
        documents = [((m.get("source"), m["doc_id"]), m["chunk_index"]) for m in got["metadatas"] or []]
        texts = [t or "" for t in got["documents"] or []]
        return LexicalIndex.build(got["ids"], texts, None, documents), records_version(col)
    finally:
        client.close()


def saved_index(db: Path, collection: str = "kvemb") -> LexicalIndex | None:
    """The lexical index saved on disk for the collection (``None`` when there is none)."""
    client = chromadb.PersistentClient(path=str(db), settings=Settings(anonymized_telemetry=False))
    try:
        collection_id = str(client.get_collection(collection, embedding_function=None).id)
    finally:
        client.close()
    return LexicalIndex.load(db / "kvemb-lexical" / collection_id)[0]


def same_index(a: LexicalIndex, b: LexicalIndex) -> bool:
    """Same records and, for a probe query of every word, the same BM25 score of every record."""
    if sorted(a.ids) != sorted(b.ids):
        return False
    for word in (*WORDS, *_RARE, "changed story"):
        sa, sb = a.scores(word), b.scores(word)
        if (sa is None) != (sb is None):
            return False
        if sa is not None and sb is not None:
            by_a = {i: round(float(sa[n]), 4) for n, i in enumerate(a.ids)}
            by_b = {i: round(float(sb[n]), 4) for n, i in enumerate(b.ids)}
            if by_a != by_b:
                return False
    return True


def assert_saved_index_is_fresh(db: Path) -> None:
    saved = saved_index(db)
    scratch, version = scratch_index(db)
    assert saved is not None, "no lexical index was saved"
    assert saved.version == version, "the saved index is not stamped with the collection's records version"
    assert same_index(saved, scratch), "the saved index differs from one built from the records"


@pytest.fixture
def store(tmp_path: Path, tiny_embedder: KVEmbedder) -> Iterator[KVStore]:
    s = KVStore(tmp_path / "db", embedder=tiny_embedder, write_batch_size=4)
    yield s
    s.close()


def test_lexical_index_follows_every_store_operation(
    tmp_path: Path, tiny_embedder: KVEmbedder, store_worker: Path, subprocess_env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = tmp_path / "db"
    with KVStore(db, embedder=tiny_embedder, write_batch_size=4) as store:
        # Two folders holding the same file names.
        store.sync_documents(corpus("a", 8), source="folder-1")
        assert_saved_index_is_fresh(db)
        store.sync_documents(corpus("a", 6), source="folder-2")
        assert_saved_index_is_fresh(db)
        # Replace (3 edited, 2 vanished, 3 new) in one source: the other keeps its documents.
        store.sync_documents(corpus("b", 8), source="folder-1")
        assert_saved_index_is_fresh(db)
        assert store.document_ids(source="folder-2") == sorted(d.id for d in corpus("a", 6))
        # Add without a source, delete by document, delete by document within one source.
        store.add_documents([Document("extra", f"A {_RARE[0]} over the hill.")])
        assert_saved_index_is_fresh(db)
        assert store.delete_document("extra") == 1
        assert_saved_index_is_fresh(db)
        assert store.delete_documents(["doc-03.txt"], source="folder-2") == 1
        assert_saved_index_is_fresh(db)
        # A whole source emptied of documents (all vanished but one).
        store.sync_documents(corpus("a", 1), source="folder-2")
        assert_saved_index_is_fresh(db)
        before_kill = saved_index(db)
    # A run killed after two write batches: its records are half written and its index never rebuilt.
    changed = [dataclasses.replace(d, text=d.text + f" The {_RARE[1]}.") for d in corpus("a", 8)]
    spec = {
        "mode": "index", "db": str(db), "model": str(tiny_embedder.config.model), **SIDED_TEMPLATES,
        "batch": 2, "source": "folder-1", "docs": docs_spec(changed), "kill_after_batches": 2,
    }
    proc = run_worker(store_worker, spec, subprocess_env, tmp_path, "kill")
    assert proc.returncode == -9, proc.stderr[-2000:]
    stale = saved_index(db)
    scratch, version = scratch_index(db)
    assert stale is not None and before_kill is not None and same_index(stale, before_kill)
    assert stale.version != version and not same_index(stale, scratch)  # older than its collection
    # Searching detects it, rebuilds from the records and says so.
    with KVStore(db, embedder=tiny_embedder) as store, caplog.at_level(logging.WARNING, "kvemb_rag.store"):
        hits = store.query("cat", k=3, mode="lexical")
    assert hits and all("cat" in h.text.lower() for h in hits)
    assert any("Rebuilding the lexical index" in r.getMessage() and "older" in r.getMessage() for r in caplog.records)
    assert_saved_index_is_fresh(db)
    # The re-run completes the collection and its index.
    with KVStore(db, embedder=tiny_embedder, write_batch_size=4) as store:
        store.sync_documents(changed, source="folder-1")
    assert_saved_index_is_fresh(db)


def test_a_missing_index_is_rebuilt_with_a_log_line(
    store: KVStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.add_documents(corpus("a", 4))
    shutil.rmtree(next((tmp_path / "db" / "kvemb-lexical").iterdir()))
    with KVStore(tmp_path / "db", embedder=store.embedder) as reopened, caplog.at_level(logging.INFO):
        reopened.query("cat", k=2)
    assert any("Rebuilding the lexical index" in r.getMessage() and "missing" in r.getMessage() for r in caplog.records)
    assert_saved_index_is_fresh(tmp_path / "db")


def test_deleting_the_collection_deletes_its_lexical_index(store: KVStore, tmp_path: Path) -> None:
    store.add_documents(corpus("a", 3))
    assert list((tmp_path / "db" / "kvemb-lexical").iterdir())
    store.delete_collection()
    assert not list((tmp_path / "db" / "kvemb-lexical").iterdir())


def test_modes_rank_as_documented(store: KVStore) -> None:
    docs = [Document(f"rare-{i}", story(i, 4) + f" A {word} appears.") for i, word in enumerate(_RARE)]
    store.add_documents(docs + corpus("a", 6))
    lexical = store.query(_RARE[2], k=3, mode="lexical")
    # Only the document holding the word scores, and its chunk holding the word first.
    assert {h.doc_id for h in lexical} == {"rare-2"} and _RARE[2] in lexical[0].text
    assert lexical[0].score > 0
    hybrid = store.query(f"{_RARE[2]} cat", k=3)  # hybrid by default
    assert hybrid[0].doc_id == "rare-2"
    dense = store.query(f"{_RARE[2]} cat", k=3, mode="dense")
    assert all(-1.0 <= h.score <= 1.0 for h in dense)
    for mode in SEARCH_MODES:
        hits = store.query(f"{_RARE[2]} cat", k=4, mode=mode)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_a_query_without_lexical_match_falls_back_to_dense(store: KVStore) -> None:
    store.add_documents(corpus("a", 6))
    dense = store.query("the of and", k=4, mode="dense")
    for mode in ("hybrid", "lexical"):  # only stopwords
        assert [h.id for h in store.query("the of and", k=4, mode=mode)] == [h.id for h in dense]
    oov = store.query("xylophone", k=4, mode="dense")  # in no record
    assert [h.id for h in store.query("xylophone", k=4)] == [h.id for h in oov]
    with pytest.raises(InputError, match="The query must be a non-empty string; got ' '"):
        store.query(" ", mode="lexical")


def test_lexical_search_needs_no_embedder(store: KVStore, tmp_path: Path) -> None:
    store.add_documents([Document("a", f"The {_RARE[3]} stone."), Document("b", "A red ball.")])
    with KVStore(tmp_path / "db") as reopened:
        assert [h.doc_id for h in reopened.query(_RARE[3], mode="lexical")] == ["a"]
        with pytest.raises(ConfigError, match="This KVStore has no embedder"):
            reopened.query(_RARE[3], mode="hybrid")


def test_filters_and_grouping_apply_to_every_mode(store: KVStore) -> None:
    docs = [Document(f"d{i}", story(i, 30) + f" The {_RARE[0]}.", {"part": i % 2}) for i in range(6)]
    store.add_documents(docs)
    for mode in SEARCH_MODES:
        hits = store.query(_RARE[0], k=10, mode=mode, where={"part": 1})
        assert hits and {h.metadata["part"] for h in hits} == {1}
        grouped = store.query(f"{_RARE[0]} cat", k=3, mode=mode, per_document=True)
        assert len(grouped) == len({h.doc_id for h in grouped}) == 3


def test_bad_modes_and_fusions_are_refused(store: KVStore) -> None:
    store.add_documents(corpus("a", 2))
    with pytest.raises(ConfigError, match="Search mode 'bm25' is not valid; choose one of hybrid, dense, lexical"):
        store.query("cat", mode="bm25")
    with pytest.raises(ConfigError, match="Fusion method 'max' is not valid; choose one of minmax, zscore, rrf"):
        Fusion("max")
    with pytest.raises(ConfigError, match=r"Fusion weight must be a number in \[0, 1\].*got 1.5"):
        Fusion(weight=1.5)
    with pytest.raises(ConfigError, match="Fusion depth must be an int >= 1.*got 0"):
        Fusion(depth=0)
    with pytest.raises(ConfigError, match="fusion must be a kvemb_rag.store.Fusion"):
        store.query("cat", fusion="rrf")  # type: ignore[arg-type]


def test_fuse_weights_the_two_legs() -> None:
    candidates = {"a": (0.9, 0.0), "b": (0.5, 8.0), "c": (0.1, 4.0)}
    dense_order, lexical_order = ["a", "b", "c"], ["b", "c"]
    for method in ("minmax", "zscore", "rrf"):
        assert [i for i, _ in fuse(candidates, dense_order, lexical_order, Fusion(method, 1.0))] == ["a", "b", "c"]
        assert [i for i, _ in fuse(candidates, dense_order, lexical_order, Fusion(method, 0.0))][:2] == ["b", "c"]
    # min-max: a = 0.5 * 1 + 0.5 * 0, b = 0.5 * 0.5 + 0.5 * 1, c = 0.5 * 0 + 0.5 * 0.5
    assert fuse(candidates, dense_order, lexical_order, Fusion("minmax", 0.5)) == [
        ("b", pytest.approx(0.75)), ("a", pytest.approx(0.5)), ("c", pytest.approx(0.25))
    ]
    assert fuse({}, [], [], Fusion()) == []
