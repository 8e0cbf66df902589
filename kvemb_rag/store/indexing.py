"""Indexing: plan each document against its stored records, embed what is missing, write, clean up.

An upsert per document (its source and id): an unchanged document is recognised from its stored records
without re-chunking or re-embedding; a changed one gets its new chunks written first and its old ones
deleted after, so an interrupted run that is run again ends with exactly the records of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from kvemb_rag.errors import InputError
from kvemb_rag.store.collection_io import (
    _CHUNK_SIZE_KEY,
    _OVERLAP_KEY,
    _content_key,
    _encode_metadata,
    _record_id,
    _recorded_int,
    _slices,
    _update_metadata,
)
from kvemb_rag.store.documents import Document
from kvemb_rag.store.lexical import mark_records_changed
from kvemb_rag.store.records import (
    DocKey,
    IndexProgress,
    IndexSummary,
    ProgressCallback,
    _Counters,
    _doc_key,
    _Pending,
    _Plan,
)

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

    from kvemb_rag.engine.embedder import KVEmbedder
    from kvemb_rag.store import KVStore

__all__ = ["BulkEmbed", "index_documents"]

logger = logging.getLogger(__name__)

# Documents whose stored records are looked up in one `get`.
_LOOKUP_DOCS = 128


#: Bulk embedding for :func:`index_documents`: given every planned record that still needs a vector, yield
#: them back in groups (any order, each record once) with ``embedding`` set. Used by the Ray path
#: (:mod:`kvemb_rag.store.distributed`); ``None`` embeds in this process, one write batch at a time.
BulkEmbed = Callable[[list[_Pending]], Iterator[list[_Pending]]]


def index_documents(
    store: KVStore,
    docs: list[Document],
    *,
    overlap: int | None,
    progress: ProgressCallback | None,
    sync_source: str | None,
    bulk_embed: BulkEmbed | None = None,
) -> IndexSummary:
    """Index ``docs`` into ``store``'s collection (see :meth:`KVStore.add_documents` / ``sync_documents``).

    Args:
        store: The store (its embedder plans the chunks and, without ``bulk_embed``, embeds them).
        docs: The documents.
        overlap: Token overlap of consecutive chunks; default the store's.
        progress: Called after each planned document and each write.
        sync_source: Remove the stored documents of this source that are not in ``docs``.
        bulk_embed: Embed all planned records elsewhere (e.g. a Ray actor pool) instead of batch by batch
            here; the plans, record ids, metadata, writes and deletions are the same either way.

    Returns:
        The run's summary.
    """
    started = time.perf_counter()
    overlap = store.overlap if overlap is None else overlap
    store._check_overlap(overlap)
    not_documents = [i for i, d in enumerate(docs) if not isinstance(d, Document)]
    if not_documents:
        raise TypeError(
            f"documents[{not_documents[0]}] is a {type(docs[not_documents[0]]).__name__}; pass "
            "kvemb_rag.store.Document objects."
        )
    counts: dict[DocKey, int] = {}
    for doc in docs:
        counts[_doc_key(doc)] = counts.get(_doc_key(doc), 0) + 1
    dupes = sorted((key for key, n in counts.items() if n > 1), key=lambda k: (k[0] or "", k[1]))
    if dupes:
        shown = [doc_id if source is None else f"{doc_id} (source {source})" for source, doc_id in dupes[:10]]
        raise InputError(
            f"Duplicate document ids in one call: {shown}; ids must be unique within a source."
        )
    embedder = store._require_embedder()
    col = store._writable_collection()
    chunk_size = store._resolve_chunk_size(col, embedder)
    if _recorded_int(col, _OVERLAP_KEY) != overlap or _recorded_int(col, _CHUNK_SIZE_KEY) != chunk_size:
        # Remembered so that a later run without explicit settings chunks the same way.
        _update_metadata(col, {_OVERLAP_KEY: overlap, _CHUNK_SIZE_KEY: chunk_size})
    indexer = _Indexer(store, col, embedder, (chunk_size, overlap), store._batch_size(), len(docs), progress)
    if bulk_embed is None:
        indexer.embed_here(docs)
    else:
        indexer.embed_elsewhere(docs, bulk_embed)
    removed = 0 if sync_source is None else indexer.remove_vanished(sync_source, docs)
    counters = indexer.counters
    if counters.records_written or counters.records_deleted:
        store._refresh_lexical("the records changed")
    summary = IndexSummary(
        documents=len(docs),
        chunks=counters.chunks,
        added=counters.added,
        unchanged=counters.unchanged,
        replaced=counters.replaced,
        removed=removed,
        chunks_embedded=counters.chunks_embedded,
        records_written=counters.records_written,
        records_deleted=counters.records_deleted,
        seconds=time.perf_counter() - started,
    )
    logger.info("Indexed into %r: %s", store.collection_name, summary)
    return summary


class _Indexer:
    """One indexing call: plans each document, embeds what is missing, writes, deletes old versions, reports.

    Args:
        store: The store (for reading stored records by document).
        col: The collection written to.
        embedder: Chunks every document and, in :meth:`embed_here`, embeds the chunks.
        chunking: ``(chunk size, overlap)`` in tokens.
        batch: Records per write (and per forward pass in :meth:`embed_here`).
        documents: How many documents the call indexes (for progress).
        progress: Called after each planned document and each write.
    """

    def __init__(
        self,
        store: KVStore,
        col: Collection,
        embedder: KVEmbedder,
        chunking: tuple[int, int],
        batch: int,
        documents: int,
        progress: ProgressCallback | None,
    ) -> None:
        self.store = store
        self.col = col
        self.embedder = embedder
        self.chunking = chunking
        self.batch = batch
        self.documents = documents
        self.progress = progress
        self.counters = _Counters()
        self.queue: list[_Pending] = []  # planned records not written yet

    # ------------------------------------------------------------------------------------ embedding
    def embed_here(self, docs: Sequence[Document]) -> None:
        """Plan documents one by one, embedding and writing a batch whenever one is full."""
        for _ in self._plan(docs):
            while len(self.queue) >= self.batch:
                self._flush()
        while self.queue:
            self._flush()

    def _flush(self) -> None:
        items = self.queue[: self.batch]
        del self.queue[: len(items)]
        todo = [p for p in items if p.embedding is None]
        if todo:
            vectors = self.embedder.encode_document(
                [p.text for p in todo], show_progress_bar=False, overflow="error"
            )  # (n, dim), unit rows
            for pending, vector in zip(todo, vectors, strict=True):
                pending.embedding = vector.tolist()
        self._write(items, embedded=len(todo))

    def embed_elsewhere(self, docs: Sequence[Document], bulk_embed: BulkEmbed) -> None:
        """Plan every document, then have ``bulk_embed`` embed all missing vectors, writing as they come."""
        for _ in self._plan(docs):
            pass
        ready = [p for p in self.queue if p.embedding is not None]  # vectors reused from an older version
        for part in _slices(ready, self.batch):
            self._write(list(part), embedded=0)
        todo = [p for p in self.queue if p.embedding is None]
        self.queue.clear()
        for embedded in bulk_embed(todo):
            for part in _slices(embedded, self.batch):
                self._write(list(part), embedded=len(part))
        if self.counters.records_written != len(ready) + len(todo):
            raise RuntimeError(
                f"The bulk embedder returned {self.counters.records_written - len(ready)} of {len(todo)} "
                "records; re-run the same command to complete the collection."
            )

    # ------------------------------------------------------------------------------------- planning
    def _plan(self, docs: Sequence[Document]) -> Iterator[None]:
        """Plan each document in turn (queueing what it needs), yielding after each one."""
        for part in _slices(docs, _LOOKUP_DOCS):
            # Only the records of these very documents (same source and id): a same-id document of another
            # source is a different document and is never read as this one's old version.
            keys = {_doc_key(d) for d in part}
            by_doc = self.store._stored_records(self.col, [d.id for d in part], keys.__contains__)
            for doc in part:
                self._plan_document(doc, by_doc.get(_doc_key(doc), {}))
                self._report()
                yield

    def _plan_document(self, doc: Document, existing: Mapping[str, Mapping[str, Any]]) -> None:
        """Classify one document against its stored records and queue the records it still needs."""
        counters = self.counters
        chunk_size, overlap = self.chunking
        encoded, json_keys = _encode_metadata(doc.metadata)
        key = _content_key(doc, self.chunking, encoded)
        same = [m for m in existing.values() if m.get("content_hash") == key]
        if existing and len(same) == len(existing):
            n_chunks = int(same[0].get("n_chunks", -1))
            if sorted(int(m.get("chunk_index", -1)) for m in same) == list(range(n_chunks)):
                counters.unchanged += 1
                counters.chunks += n_chunks
                counters.documents_done += 1
                return
        chunks = self.embedder.chunk(doc.text, "document", overlap, max_tokens=chunk_size)
        ids = [_record_id(doc.id, c.index, key) for c in chunks]
        stale = sorted(set(existing) - set(ids))
        counters.chunks += len(chunks)
        if not existing or len(same) == len(existing):
            counters.added += 1  # new, or resuming an interrupted write of this same version
        else:
            counters.replaced += 1
        missing = [c for c, i in zip(chunks, ids, strict=True) if i not in existing]
        reusable = self._reusable_vectors(stale) if stale and missing else {}
        plan = _Plan(stale=stale, remaining=len(missing))
        base: dict[str, Any] = dict(encoded)
        if json_keys:
            base["json_keys"] = json.dumps(json_keys)
        if doc.source is not None:
            base["source"] = doc.source
        for chunk, record_id in zip(chunks, ids, strict=True):
            if record_id in existing:
                continue
            metadata = {
                **base,
                "doc_id": doc.id,
                "chunk_index": chunk.index,
                "start": chunk.start,
                "end": chunk.end,
                "n_tokens": chunk.n_tokens,
                "n_chunks": len(chunks),
                "content_hash": key,
            }
            vector = reusable.get(chunk.text)
            if vector is None:
                counters.chunks_to_embed += 1
            self.queue.append(_Pending(plan, record_id, chunk.text, metadata, vector))
        if plan.remaining == 0:
            self._delete_ids(stale)
            counters.documents_done += 1

    def _reusable_vectors(self, stale: Sequence[str]) -> dict[str, list[float]]:
        """Chunks whose text did not change keep their vectors: same embedder, same text, same vector."""
        old = self.col.get(ids=list(stale), include=["documents", "embeddings"])
        old_embeddings = old["embeddings"] if old["embeddings"] is not None else []
        reusable: dict[str, list[float]] = {}
        for text, vector in zip(old["documents"] or [], old_embeddings, strict=True):
            if text is not None and vector is not None:
                reusable[text] = [float(x) for x in vector]
        return reusable

    # -------------------------------------------------------------------------------------- writing
    def _write(self, items: Sequence[_Pending], *, embedded: int) -> None:
        """Upsert records whose vectors are set (``embedded`` of them computed in this run)."""
        if not items:
            return
        mark_records_changed(self.col)
        self.col.upsert(
            ids=[p.id for p in items],
            embeddings=cast(Any, [p.embedding for p in items]),
            documents=[p.text for p in items],
            metadatas=[p.metadata for p in items],
        )
        counters = self.counters
        counters.chunks_embedded += embedded
        counters.records_written += len(items)
        counters.write_batches += 1
        for pending in items:
            pending.plan.remaining -= 1
            if pending.plan.remaining == 0:
                # The new version is complete: only now drop the old one (a killed run loses no document).
                self._delete_ids(pending.plan.stale)
                counters.documents_done += 1
        self._report()

    def _delete_ids(self, ids: Sequence[str]) -> None:
        if ids:
            mark_records_changed(self.col)
        for part in _slices(ids, self.batch):
            self.col.delete(ids=list(part))
        self.counters.records_deleted += len(ids)

    def remove_vanished(self, source: str, docs: Sequence[Document]) -> int:
        """Delete the stored documents of ``source`` that are not in ``docs``; returns how many."""
        current = {_doc_key(d) for d in docs}
        vanished = {k for k in self.store.document_keys(source) if k not in current}
        if not vanished:
            return 0
        stored = self.store._stored_records(self.col, [doc_id for _, doc_id in vanished], vanished.__contains__)
        removed, deleted = self.store._delete_records(self.col, stored)
        self.counters.records_deleted += deleted
        logger.info("Removed %d document(s) no longer in %s", removed, source)
        return int(removed)

    def _report(self) -> None:
        if self.progress is not None:
            c = self.counters
            self.progress(
                IndexProgress(
                    c.documents_done, self.documents, c.chunks_embedded, c.chunks_to_embed, c.records_written,
                    c.write_batches,
                )
            )
