"""What the store returns and reports (hits, progress, summaries), and document identity."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from kvemb_rag.errors import ConfigError
from kvemb_rag.store.documents import Document, SkippedFile

__all__ = [
    "CollectionInfo",
    "DocKey",
    "Hit",
    "IndexProgress",
    "IndexSummary",
    "ProgressCallback",
    "document_key",
    "record_document_key",
]


#: A stored document's identity: ``(source, doc_id)``; ``source`` is ``None`` for documents added without one.
DocKey = tuple[str | None, str]


def document_key(document: Document) -> DocKey:
    """The identity of a document: its source and id."""
    return (document.source, document.id)


def record_document_key(meta: Mapping[str, Any]) -> DocKey:
    """The identity of the document a stored record belongs to (records without ``source`` have none)."""
    source = meta.get("source")
    return (None if source is None else str(source), str(meta["doc_id"]))


@dataclass(frozen=True)
class Hit:
    """One search result.

    Attributes:
        score: Higher is better: the cosine similarity of the query and the chunk in dense mode, the BM25 score in
            lexical mode, the fused score in hybrid mode (see :mod:`kvemb_rag.store.search`).
        doc_id: The document id.
        chunk_index: Index of the chunk in its document (0-based).
        start: Start of the chunk in the document text (characters).
        end: End of the chunk (exclusive).
        text: The chunk text.
        metadata: The document's user metadata (JSON-encoded values decoded).
        source: The document's source, when it has one.
        id: The record id in the collection.
    """

    score: float
    doc_id: str
    chunk_index: int
    start: int
    end: int
    text: str
    metadata: dict[str, Any]
    source: str | None
    id: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the hit."""
        return asdict(self)


@dataclass(frozen=True)
class IndexProgress:
    """Progress of an indexing call, passed to its ``progress`` callback.

    Attributes:
        documents_done: Documents whose records are all written (or that were unchanged).
        documents_total: Documents in the call.
        chunks_embedded: Chunks embedded and written so far.
        chunks_to_embed: Chunks known to need embedding so far (grows as documents are chunked).
        records_written: Records upserted so far (embedded, or reused from an older version).
        write_batches: Upsert batches committed so far.
    """

    documents_done: int
    documents_total: int
    chunks_embedded: int
    chunks_to_embed: int
    records_written: int
    write_batches: int


ProgressCallback = Callable[[IndexProgress], None]


@dataclass(frozen=True)
class IndexSummary:
    """What an indexing run did.

    Attributes:
        documents: Documents given.
        chunks: Chunks of those documents (stored or written).
        added: Documents that were not stored before (or were resumed after an interruption).
        unchanged: Documents already stored with the same content (nothing written).
        replaced: Documents whose stored version changed (new chunks written, old ones deleted).
        removed: Documents deleted (vanished from a synchronised source).
        chunks_embedded: Chunks run through the model.
        records_written: Records upserted (embedded or reused).
        records_deleted: Records deleted (old versions and removed documents).
        skipped_files: Files or lines that were not indexed (filled in by file readers such as the CLI).
        seconds: Wall time.
    """

    documents: int = 0
    chunks: int = 0
    added: int = 0
    unchanged: int = 0
    replaced: int = 0
    removed: int = 0
    chunks_embedded: int = 0
    records_written: int = 0
    records_deleted: int = 0
    skipped_files: tuple[SkippedFile, ...] = ()
    seconds: float = 0.0

    def __post_init__(self) -> None:
        counts = {k: v for k, v in asdict(self).items() if k not in ("skipped_files", "seconds")}
        bad = {k: v for k, v in counts.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0}
        if bad:
            raise ConfigError(f"IndexSummary counts must be ints >= 0; got {bad}.")
        if not self.seconds >= 0:
            raise ConfigError(f"IndexSummary seconds must be >= 0; got {self.seconds!r}.")
        if self.added + self.unchanged + self.replaced > self.documents:
            raise ConfigError(
                f"IndexSummary: added ({self.added}) + unchanged ({self.unchanged}) + replaced "
                f"({self.replaced}) exceeds documents ({self.documents})."
            )
        object.__setattr__(self, "skipped_files", tuple(self.skipped_files))

    def __add__(self, other: IndexSummary) -> IndexSummary:
        if not isinstance(other, IndexSummary):
            return NotImplemented
        merged = {
            k: getattr(self, k) + getattr(other, k)
            for k in (
                "documents",
                "chunks",
                "added",
                "unchanged",
                "replaced",
                "removed",
                "chunks_embedded",
                "records_written",
                "records_deleted",
                "skipped_files",
                "seconds",
            )
        }
        return IndexSummary(**merged)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the summary."""
        out = asdict(self)
        out["skipped_files"] = [asdict(s) for s in self.skipped_files]
        return out


@dataclass(frozen=True)
class CollectionInfo:
    """A collection's size and embedder.

    Attributes:
        name: Collection name.
        records: Stored chunks.
        documents: Distinct documents (source and id).
        identity: The embedder identity recorded in the collection (``None`` if not made by kvemb-rag).
        space: The distance space of its index (``"cosine"`` for kvemb-rag collections).
    """

    name: str
    records: int
    documents: int
    identity: dict[str, Any] | None
    space: str | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the info."""
        return asdict(self)
