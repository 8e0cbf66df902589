"""The indexing rules of ``kvemb index`` as library calls: read_paths, sync_reads, sync_sources, indexing_embedder.

Real files, the real tiny model and a real embedded Chroma database: no mocks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from kvemb_rag import KVEmbedder
from kvemb_rag.sources import SourceError, read_paths, sync_reads
from kvemb_rag.store import (
    Document,
    EmbedderMismatchError,
    IndexProgress,
    KVStore,
    indexing_embedder,
    resolve_model,
    sync_sources,
)


def _folders(root: Path) -> tuple[Path, Path]:
    """Two folders sharing a file name, one with an unreadable (binary) file."""
    for name in ("A", "B"):
        (root / name).mkdir(parents=True)
        (root / name / "README.md").write_text(f"The {name} project keeps a cat in the garden.\n", encoding="utf-8")
        (root / name / f"only-{name}.txt").write_text(f"Notes of {name}: the dog ran in the park.\n", encoding="utf-8")
    (root / "B" / "blob.txt").write_bytes(b"\x00binary")
    return root / "A", root / "B"


def test_read_paths_checks_all_paths_together(tmp_path: Path) -> None:
    a, b = _folders(tmp_path)
    reads = read_paths([a, b])  # the same file names in two folders are two sources' documents
    assert [r.source for r in reads] == [str(a.resolve()), str(b.resolve())]
    assert [len(r.documents) for r in reads] == [2, 2] and [len(r.skipped) for r in reads] == [0, 1]
    with pytest.raises(SourceError, match=r"Path\(s\) not found: 'nope', 'gone'\. Give existing"):
        read_paths([a, "nope", "gone"])
    with pytest.raises(SourceError, match=r"README.md' comes from both .* overlapping paths once"):
        read_paths([a, a / "README.md"])
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(SourceError, match="Unsupported file type '.png'"):
        read_paths([a, tmp_path / "x.png"])


def test_sync_sources_rules(tmp_path: Path, tiny_embedder: KVEmbedder, caplog: pytest.LogCaptureFixture) -> None:
    """Overlap from the collection, progress over all sources, empty sources kept, skipped files reported."""
    a, b = _folders(tmp_path / "src")
    reads = read_paths([a, b])
    events: list[IndexProgress] = []
    with KVStore(tmp_path / "db", embedder=tiny_embedder) as store:
        first = sync_reads(store, reads, overlap=8, progress=events.append)
        assert (first.documents, first.added, first.removed) == (4, 4, 0)
        assert [s.path for s in first.skipped_files] == [str(b.resolve() / "blob.txt")]
        assert store.recorded_overlap == 8
    # Progress counts over both sources: monotonic, ending at every document and chunk.
    assert {e.documents_total for e in events} == {4}
    done = [e.documents_done for e in events]
    assert done == sorted(done) and done[-1] == 4 and events[-1].chunks_embedded == first.chunks_embedded
    assert events[-1].chunks_to_embed == first.chunks_embedded

    with KVStore(tmp_path / "db", embedder=tiny_embedder) as store:
        # No overlap given: the collection's (8), so nothing is re-chunked; an empty source keeps its documents.
        with caplog.at_level(logging.WARNING, logger="kvemb_rag.store.sync"):
            again = sync_sources(store, [(reads[0].source, []), (reads[1].source, reads[1].documents)])
        assert (again.documents, again.unchanged, again.removed, again.chunks_embedded) == (2, 2, 0, 0)
        assert "its stored documents are left as they are" in caplog.text and reads[0].source in caplog.text
        assert store.info().documents == 4
        # A source given explicitly empty through sync_documents is still emptied (the store's own API).
        assert store.sync_documents([], source=reads[0].source).removed == 2
        with pytest.raises(ValueError, match="Duplicate document ids"):
            sync_sources(store, [("s", [Document("x", "one"), Document("x", "two")])])


def test_indexing_embedder_choice(
    tmp_path: Path, tiny_model_path: Path, kvemb_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No model: the collection's embedder (flags applied), else $KVEMB_MODEL; local paths made absolute."""
    cache = {"cache_dir": str(kvemb_cache_dir)}
    relative = os.path.relpath(tiny_model_path)
    assert resolve_model(relative) == str(tiny_model_path.resolve()) and resolve_model("org/name") == "org/name"
    monkeypatch.setenv("KVEMB_MODEL", relative)
    with KVStore(tmp_path / "db") as store:
        fresh = indexing_embedder(store, max_length=256, **cache)  # no collection yet: the default model
        assert fresh.identity["model"] == str(tiny_model_path.resolve()) and fresh.max_length == 256
        store.embedder = fresh
        store.add_documents([Document("a", "The cat sat on the mat.")])
    monkeypatch.delenv("KVEMB_MODEL")
    with KVStore(tmp_path / "db") as store:
        again = indexing_embedder(store, **cache)  # the collection's embedder, max_length included
        assert again.identity == fresh.identity
        other = indexing_embedder(store, strategy="mean", **cache)  # a flag over the recorded identity
        assert other.identity["strategy"] == "mean" and other.max_length == 256
        store.embedder = indexing_embedder(store, str(tiny_model_path), **cache)  # a model named: its defaults
        with pytest.raises(EmbedderMismatchError, match="max_length"):
            store.add_documents([Document("b", "The dog ran.")])
