"""Indexing: plan each document against its stored records, embed what is missing, write, clean up.

An upsert per document (its source and id): an unchanged document is recognised from its stored records
without re-chunking or re-embedding; a changed one gets its new chunks written first and its old ones
deleted after, so an interrupted run that is run again ends with exactly the records of an uninterrupted one.

The record format is defined here. Record ids are deterministic: ``"<doc id>::<chunk index>::<content
hash>"``, where the content hash covers the document text, the chunking, the user metadata and the source (so
records of same-id documents of different sources never collide). User metadata is stored as Chroma values by
:func:`encode_metadata` (scalars as they are, anything else JSON-encoded, those keys listed in the record's
``json_keys``) and read back by :func:`decode_metadata`. Everything read or written goes through the
:class:`~kvemb_rag.store.collection.KVCollection` the indexer is handed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from kvemb_rag.errors import InputError
from kvemb_rag.store.collection import DOCUMENTS_PER_LOOKUP, KVCollection, batches
from kvemb_rag.store.documents import RESERVED_METADATA_KEYS, Document
from kvemb_rag.store.records import (
    DocKey,
    IndexProgress,
    IndexSummary,
    ProgressCallback,
    document_key,
)

if TYPE_CHECKING:
    from kvemb_rag.engine.chunking import Chunk
    from kvemb_rag.engine.embedder import KVEmbedder

__all__ = ["BulkEmbed", "PendingRecord", "check_documents", "decode_metadata", "encode_metadata", "index_documents"]

logger = logging.getLogger(__name__)

# Characters of the content hash in a record id.
_HASH_CHARS_IN_ID = 16


@dataclass
class _Plan:
    """Pending work for one document whose records are being written."""

    stale: list[str]
    remaining: int


@dataclass
class _Counters:
    documents_done: int = 0
    chunks: int = 0
    added: int = 0
    unchanged: int = 0
    replaced: int = 0
    chunks_embedded: int = 0
    chunks_to_embed: int = 0
    records_written: int = 0
    records_deleted: int = 0
    write_batches: int = 0


@dataclass
class PendingRecord:
    """A planned record not written yet.

    Attributes:
        plan: The work left for its document (shared by the document's records).
        id: The record id.
        text: The chunk text.
        metadata: The record's metadata.
        embedding: Its vector: reused from an older version of the document, or set once embedded.
    """

    plan: _Plan
    id: str
    text: str
    metadata: dict[str, Any]
    embedding: list[float] | None = None


#: Bulk embedding for :func:`index_documents`: given the embedder and every planned record that still needs a
#: vector, yield them back in groups (any order, each record once) with ``embedding`` set. Used by the Ray
#: path (:mod:`kvemb_rag.store.distributed`); ``None`` embeds in this process, one write batch at a time.
BulkEmbed = Callable[["KVEmbedder", list[PendingRecord]], Iterator[list[PendingRecord]]]


def check_documents(docs: Sequence[Document]) -> None:
    """Refuse what is not a :class:`Document`, and document ids repeated within a source.

    Raises:
        TypeError: An item is not a :class:`Document`.
        InputError: Two documents share a source and an id.
    """
    not_documents = [i for i, d in enumerate(docs) if not isinstance(d, Document)]
    if not_documents:
        raise TypeError(
            f"documents[{not_documents[0]}] is a {type(docs[not_documents[0]]).__name__}; pass "
            "kvemb_rag.store.Document objects."
        )
    counts: dict[DocKey, int] = {}
    for doc in docs:
        counts[document_key(doc)] = counts.get(document_key(doc), 0) + 1
    dupes = sorted((key for key, n in counts.items() if n > 1), key=lambda k: (k[0] or "", k[1]))
    if dupes:
        shown = [doc_id if source is None else f"{doc_id} (source {source})" for source, doc_id in dupes[:10]]
        raise InputError(f"Duplicate document ids in one call: {shown}; ids must be unique within a source.")


def index_documents(
    col: KVCollection,
    embedder: KVEmbedder,
    docs: Sequence[Document],
    *,
    chunking: tuple[int, int],
    progress: ProgressCallback | None,
    sync_source: str | None,
    bulk_embed: BulkEmbed | None = None,
) -> IndexSummary:
    """Index ``docs`` into ``col`` (see :meth:`KVStore.add_documents <kvemb_rag.store.KVStore.add_documents>`).

    Args:
        col: The collection, its embedder identity checked against ``embedder``.
        embedder: Chunks every document and, without ``bulk_embed``, embeds the chunks.
        docs: The documents, checked by :func:`check_documents`.
        chunking: ``(chunk size, overlap)`` in tokens; recorded in the collection.
        progress: Called after each planned document and each write.
        sync_source: Remove the stored documents of this source that are not in ``docs``.
        bulk_embed: Embed all planned records elsewhere (e.g. a Ray actor pool) instead of batch by batch
            here; the plans, record ids, metadata, writes and deletions are the same either way.

    Returns:
        The run's summary (``seconds`` is left for the caller to time).
    """
    col.record_chunking(*chunking)
    indexer = _Indexer(col, embedder, chunking, len(docs), progress)
    if bulk_embed is None:
        indexer.embed_here(docs)
    else:
        indexer.embed_elsewhere(docs, bulk_embed)
    removed = 0 if sync_source is None else indexer.remove_vanished(sync_source, docs)
    counters = indexer.counters
    return IndexSummary(
        documents=len(docs),
        chunks=counters.chunks,
        added=counters.added,
        unchanged=counters.unchanged,
        replaced=counters.replaced,
        removed=removed,
        chunks_embedded=counters.chunks_embedded,
        records_written=counters.records_written,
        records_deleted=counters.records_deleted,
    )


def encode_metadata(metadata: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """User metadata as Chroma values: scalars kept, everything else JSON-encoded.

    Args:
        metadata: A document's user metadata.

    Returns:
        The values to store, by key (sorted), and the keys whose values were JSON-encoded.

    Raises:
        TypeError: A value is neither a ``str``/``int``/``float``/``bool`` nor JSON-serialisable.
    """
    encoded: dict[str, Any] = {}
    json_keys: list[str] = []
    for key in sorted(metadata):
        value = metadata[key]
        if isinstance(value, (str, bool, int, float)):
            encoded[key] = value
        else:
            try:
                encoded[key] = json.dumps(value, sort_keys=True, ensure_ascii=False)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"metadata[{key!r}] = {value!r:.80} ({type(value).__name__}) is neither a "
                    "str/int/float/bool nor JSON-serialisable; convert it to one of those."
                ) from exc
            json_keys.append(key)
    return encoded, json_keys


def decode_metadata(stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """The user metadata of a stored record: the store's own keys left out, JSON-encoded values decoded."""
    if not stored:
        return {}
    json_keys = set(json.loads(stored["json_keys"])) if "json_keys" in stored else set()
    user: dict[str, Any] = {}
    for key, value in stored.items():
        if key in RESERVED_METADATA_KEYS:
            continue
        user[key] = json.loads(value) if key in json_keys and isinstance(value, str) else value
    return user


def _content_key(document: Document, chunking: tuple[int, int], encoded: Mapping[str, Any]) -> str:
    """What a document's records are written from: its text, the chunking, its metadata and its source."""
    chunk_size, overlap = chunking
    payload = json.dumps(
        {
            "text": document.text,
            "chunk_size": chunk_size,
            "overlap": overlap,
            "metadata": encoded,
            "source": document.source,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _record_id(doc_id: str, index: int, key: str) -> str:
    return f"{doc_id}::{index}::{key[:_HASH_CHARS_IN_ID]}"


class _Indexer:
    """One indexing call: plans each document, embeds what is missing, writes, deletes old versions, reports.

    Args:
        col: The collection read and written (its batch is the records per write and per forward pass).
        embedder: Chunks every document and, in :meth:`embed_here`, embeds the chunks.
        chunking: ``(chunk size, overlap)`` in tokens.
        documents: How many documents the call indexes (for progress).
        progress: Called after each planned document and each write.
    """

    def __init__(
        self,
        col: KVCollection,
        embedder: KVEmbedder,
        chunking: tuple[int, int],
        documents: int,
        progress: ProgressCallback | None,
    ) -> None:
        self.col = col
        self.embedder = embedder
        self.chunking = chunking
        self.batch = col.batch
        self.documents = documents
        self.progress = progress
        self.counters = _Counters()
        self.queue: list[PendingRecord] = []  # planned records not written yet
        self.chunks: dict[str, Chunk] | None = None  # embed_here: record id -> its chunk, with its token ids

    # ------------------------------------------------------------------------------------ embedding
    def embed_here(self, docs: Sequence[Document]) -> None:
        """Plan documents one by one, embedding and writing a batch whenever one is full."""
        self.chunks = {}
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
            assert self.chunks is not None  # set by embed_here, the only caller
            vectors = self.embedder.encode_tokenized(
                [self.chunks.pop(p.id) for p in todo], show_progress_bar=False, overflow="error"
            )  # (n, dim), unit rows, from the ids each chunk was cut with
            for pending, vector in zip(todo, vectors, strict=True):
                pending.embedding = vector.tolist()
        self._write(items, embedded=len(todo))

    def embed_elsewhere(self, docs: Sequence[Document], bulk_embed: BulkEmbed) -> None:
        """Plan every document, then have ``bulk_embed`` embed all missing vectors, writing as they come."""
        for _ in self._plan(docs):
            pass
        ready = [p for p in self.queue if p.embedding is not None]  # vectors reused from an older version
        for part in batches(ready, self.batch):
            self._write(part, embedded=0)
        todo = [p for p in self.queue if p.embedding is None]
        self.queue.clear()
        for embedded in bulk_embed(self.embedder, todo):
            for part in batches(embedded, self.batch):
                self._write(part, embedded=len(part))
        if self.counters.records_written != len(ready) + len(todo):
            raise RuntimeError(
                f"The bulk embedder returned {self.counters.records_written - len(ready)} of {len(todo)} "
                "records; re-run the same command to complete the collection."
            )

    # ------------------------------------------------------------------------------------- planning
    def _plan(self, docs: Sequence[Document]) -> Iterator[None]:
        """Plan each document in turn (queueing what it needs), yielding after each one."""
        for part in batches(docs, DOCUMENTS_PER_LOOKUP):
            # Only the records of these very documents (same source and id): a same-id document of another
            # source is a different document and is never read as this one's old version.
            keys = {document_key(d) for d in part}
            by_doc = self.col.records_of([d.id for d in part], keys.__contains__)
            for doc in part:
                self._plan_document(doc, by_doc.get(document_key(doc), {}))
                self._report()
                yield

    def _plan_document(self, doc: Document, existing: Mapping[str, Mapping[str, Any]]) -> None:
        """Classify one document against its stored records and queue the records it still needs."""
        counters = self.counters
        chunk_size, overlap = self.chunking
        encoded, json_keys = encode_metadata(doc.metadata)
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
        # Chunks whose text did not change keep their vectors: same embedder, same text, same vector.
        reusable = self.col.vectors_by_text(stale) if stale and missing else {}
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
                if self.chunks is not None:
                    self.chunks[record_id] = chunk
            self.queue.append(PendingRecord(plan, record_id, chunk.text, metadata, vector))
        if plan.remaining == 0:
            self._delete_ids(stale)
            counters.documents_done += 1

    # -------------------------------------------------------------------------------------- writing
    def _write(self, items: Sequence[PendingRecord], *, embedded: int) -> None:
        """Upsert records whose vectors are set (``embedded`` of them computed in this run)."""
        if not items:
            return
        self.col.write(
            [p.id for p in items],
            [cast("list[float]", p.embedding) for p in items],  # all set by now
            [p.text for p in items],
            [p.metadata for p in items],
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
        self.col.delete(ids)
        self.counters.records_deleted += len(ids)

    def remove_vanished(self, source: str, docs: Sequence[Document]) -> int:
        """Delete the stored documents of ``source`` that are not in ``docs``; returns how many."""
        current = {document_key(d) for d in docs}
        vanished = {k for k in self.col.document_keys(source) if k not in current}
        if not vanished:
            return 0
        stored = self.col.records_of([doc_id for _, doc_id in vanished], vanished.__contains__)
        removed, deleted = self.col.delete_documents(stored)
        self.counters.records_deleted += deleted
        logger.info("Removed %d document(s) no longer in %s", removed, source)
        return removed

    def _report(self) -> None:
        if self.progress is not None:
            c = self.counters
            self.progress(
                IndexProgress(
                    c.documents_done,
                    self.documents,
                    c.chunks_embedded,
                    c.chunks_to_embed,
                    c.records_written,
                    c.write_batches,
                )
            )
