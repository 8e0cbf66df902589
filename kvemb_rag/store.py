"""A Chroma-backed document store whose vectors come from :class:`kvemb_rag.KVEmbedder`.

:class:`KVStore` chunks documents with the engine (each chunk fits ``max_length`` with its prompt template),
embeds every chunk with :meth:`~kvemb_rag.KVEmbedder.encode_document` and writes them to a Chroma
collection, embedded on disk (``chromadb.PersistentClient``) or on a Chroma server (``chromadb.HttpClient``).

Vector-store hygiene (house style, item 12):

* collections use the **cosine** space, set at creation (``configuration={"hnsw": {"space": "cosine"}}``),
  and carry no Chroma embedding function: vectors are always computed here and passed explicitly;
* the embedder's :attr:`~kvemb_rag.KVEmbedder.identity` is stored (JSON) in the collection metadata; adding
  to or querying a collection with a different embedder raises :class:`EmbedderMismatchError`;
* writes are batched within ``client.get_max_batch_size()``;
* a document is identified by its **source and id** together (:data:`DocKey`): two folders that both hold
  ``README.md`` are two documents, and indexing one source never updates or deletes another source's
  documents;
* record ids are deterministic: ``"<doc id>::<chunk index>::<content hash>"``, where the content hash covers
  the document text, the chunk overlap, the user metadata and the source (so records of same-id documents
  of different sources never collide). Indexing is an upsert per document: an unchanged document is
  recognised from its stored records without re-chunking or re-embedding; a changed one gets its new chunks
  written first and its old ones deleted after, so an interrupted run that is run again ends with exactly
  the records of an uninterrupted one.

Each record's metadata holds ``doc_id``, ``chunk_index``, ``start`` / ``end`` (character span in the
document), ``n_tokens`` (with the template), ``n_chunks``, ``content_hash``, ``source`` (when the document
has one) and the user metadata (values that are not ``str``/``int``/``float``/``bool`` JSON-encoded, their
keys listed in ``json_keys``).

Example:
    >>> from kvemb_rag import KVEmbedder
    >>> from kvemb_rag.store import KVStore
    >>> from kvemb_rag.sources import Document
    >>> store = KVStore("index-dir", embedder=KVEmbedder("Qwen/Qwen3-0.6B"))  # doctest: +SKIP
    >>> store.add_documents([Document("a", "Cats purr."), Document("b", "Rust is fast.")])  # doctest: +SKIP
    >>> store.query("Which animal purrs?", k=1)[0].doc_id  # doctest: +SKIP
    'a'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlparse

from kvemb_rag.sources import RESERVED_METADATA_KEYS, Document, SkippedFile

if TYPE_CHECKING:
    import numpy as np
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

    from kvemb_rag.embedder import KVEmbedder

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_COLLECTION",
    "DEFAULT_PATH",
    "CollectionInfo",
    "CollectionNotFoundError",
    "DocKey",
    "Document",
    "EmbedderMismatchError",
    "Hit",
    "IncompatibleCollectionError",
    "IndexProgress",
    "IndexSummary",
    "KVStore",
    "KVStoreError",
    "embedder_from_identity",
    "identity_differences",
]

logger = logging.getLogger(__name__)

#: Collection name used when none is given.
DEFAULT_COLLECTION = "kvemb"
#: On-disk location used when neither a path nor a URL is given (relative to the working directory).
DEFAULT_PATH = ".kvemb/store"
#: Tokens per stored chunk (template included) when neither the store nor the collection says otherwise. A
#: retrieval decision, separate from the longest text the engine can embed (its ``max_length``): measured
#: on QMSum passage retrieval (``benchmarks/chunk_size.py``, ``docs/chunk-size.md``).
DEFAULT_CHUNK_SIZE = 128
_MIN_CHUNK_SIZE = 16

# Collection-metadata keys written by this module.
_IDENTITY_KEY = "kvemb_identity"
_FORMAT_KEY = "kvemb_format"
_OVERLAP_KEY = "kvemb_overlap"
_CHUNK_SIZE_KEY = "kvemb_chunk_size"
_FORMAT_VERSION = 1
_SPACE = "cosine"
# Records written per upsert unless the caller asks for fewer; always capped by the client's maximum.
_DEFAULT_WRITE_BATCH = 256
# Documents whose stored records are looked up in one `get`.
_LOOKUP_DOCS = 128
# Grouped search: chunks fetched per wanted document at first, and the growth factor of re-fetches.
_GROUP_FETCH_FACTOR = 4
_HASH_CHARS_IN_ID = 16

#: A stored document's identity: ``(source, doc_id)``; ``source`` is ``None`` for documents added without one.
DocKey = tuple[str | None, str]


def _doc_key(document: Document) -> DocKey:
    return (document.source, document.id)


def _meta_key(meta: Mapping[str, Any]) -> DocKey:
    """The identity of the document a stored record belongs to (records without ``source`` have none)."""
    source = meta.get("source")
    return (None if source is None else str(source), str(meta["doc_id"]))


class KVStoreError(Exception):
    """Base class of the store's user-facing errors."""


class CollectionNotFoundError(KVStoreError, LookupError):
    """The collection does not exist (nothing was indexed into it yet)."""


class IncompatibleCollectionError(KVStoreError, ValueError):
    """The collection was not made by kvemb-rag (no embedder identity) or does not use the cosine space."""


class EmbedderMismatchError(KVStoreError, ValueError):
    """The embedder differs from the one that built the collection, so its vectors are not comparable.

    Attributes:
        stored: The identity recorded in the collection.
        current: The identity of the embedder that was given.
        differences: ``{key: (stored value, current value)}`` for every differing key.
    """

    def __init__(self, collection: str, stored: Mapping[str, Any], current: Mapping[str, Any]) -> None:
        self.collection = collection
        self.stored = dict(stored)
        self.current = dict(current)
        self.differences = identity_differences(stored, current)
        lines = "\n".join(
            f"  {key}: collection has {old!r}, embedder has {new!r}"
            for key, (old, new) in self.differences.items()
        )
        super().__init__(
            f"Collection {collection!r} was built with a different embedder; its vectors are not comparable "
            f"with this one's:\n{lines}\nUse the same settings as the collection (e.g. "
            f"KVStore(...).load_embedder() or `kvemb index` without overriding them), or index into a new "
            "collection."
        )


def identity_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The keys on which two embedder identities differ.

    ``model`` (a name or a path as typed) is ignored when both sides carry the same ``weights`` fingerprint:
    the same weights reached through another path give comparable vectors.

    Args:
        stored: One identity (e.g. the collection's).
        current: The other (e.g. :attr:`KVEmbedder.identity`).

    Returns:
        ``{key: (stored value, current value)}``, empty when the identities are equivalent.
    """
    skip = (
        {"model"}
        if stored.get("weights") is not None and stored.get("weights") == current.get("weights")
        else set()
    )
    diffs: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(stored) | set(current)):
        if key in skip:
            continue
        old, new = stored.get(key), current.get(key)
        if _canonical(old) != _canonical(new):
            diffs[key] = (old, new)
    return diffs


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def embedder_from_identity(identity: Mapping[str, Any], **overrides: Any) -> KVEmbedder:
    """Build the embedder a collection was indexed with, from its stored identity.

    The recorded layers are passed explicitly, so no layer selection runs.

    Args:
        identity: An embedder identity (:attr:`KVEmbedder.identity`, e.g. :attr:`KVStore.identity`).
        **overrides: Other :class:`KVEmbedder` keyword arguments (``device``, ``cache_dir``, ``model`` to load
            the same weights from another location...).

    Returns:
        The embedder; its identity equals ``identity`` unless an override changes it.

    Raises:
        ValueError: ``identity`` lacks the ``model`` entry.
    """
    from kvemb_rag.embedder import KVEmbedder

    if not identity.get("model"):
        raise ValueError(f"The identity {dict(identity)!r} names no model; it cannot be rebuilt.")
    kwargs: dict[str, Any] = {
        "strategy": identity.get("strategy", "kv"),
        "max_length": identity.get("max_length"),
        "dtype": identity.get("dtype"),
        "query_template": identity.get("query_template"),
        "document_template": identity.get("document_template"),
    }
    if identity.get("layers"):
        kwargs["layers"] = list(identity["layers"])
    if identity.get("bias") is not None:
        kwargs["bias"] = float(identity["bias"])
    kwargs.update(overrides)
    model = str(kwargs.pop("model", identity["model"]))
    return KVEmbedder(model, **kwargs)


@dataclass(frozen=True)
class Hit:
    """One search result.

    Attributes:
        score: Cosine similarity of the query and the chunk (``1 - cosine distance``), higher is better.
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
            raise ValueError(f"IndexSummary counts must be ints >= 0; got {bad}.")
        if not self.seconds >= 0:
            raise ValueError(f"IndexSummary seconds must be >= 0; got {self.seconds!r}.")
        if self.added + self.unchanged + self.replaced > self.documents:
            raise ValueError(
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
class _Pending:
    plan: _Plan
    id: str
    text: str
    metadata: dict[str, Any]
    embedding: list[float] | None = None


def _make_settings() -> Any:
    from chromadb.config import Settings

    # No usage reporting from a local tool, and the store never needs Chroma's reset().
    return Settings(anonymized_telemetry=False)


def _parse_url(url: str) -> tuple[str, int, bool]:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(
            f"url={url!r} is not a Chroma server address; use http://HOST:PORT (e.g. http://localhost:8000)."
        )
    try:
        port = parsed.port
    except ValueError as exc:
        raise ValueError(f"url={url!r} has an invalid port; use http://HOST:PORT.") from exc
    ssl = parsed.scheme == "https"
    return parsed.hostname, port if port is not None else (443 if ssl else 8000), ssl


def _encode_metadata(metadata: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """User metadata as Chroma values: scalars kept, everything else JSON-encoded (keys returned)."""
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


def _decode_metadata(stored: Mapping[str, Any] | None) -> dict[str, Any]:
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


def _slices(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class KVStore:
    """Documents chunked, embedded with a :class:`KVEmbedder` and stored in a Chroma collection.

    Args:
        path: Folder of an embedded (on-disk) Chroma database; default :data:`DEFAULT_PATH` when no ``url``
            and no ``client`` is given.
        url: Address of a Chroma server (``http://host:port``), used instead of ``path``.
        collection: Collection name (3-512 characters of ``[a-zA-Z0-9._-]``).
        embedder: The engine; needed to add documents and to query (see :meth:`load_embedder`).
        client: An existing ``chromadb`` client, used instead of ``path`` / ``url`` (not closed by
            :meth:`close`).
        overlap: Default token overlap between consecutive chunks of a document.
        chunk_size: Tokens per chunk, template included: how much text one search hit returns. Default: the
            collection's recorded chunk size, else :data:`DEFAULT_CHUNK_SIZE` (or the embedder's
            ``max_length`` when that is smaller). At most the embedder's ``max_length``.
        write_batch_size: Records per upsert (capped by ``client.get_max_batch_size()``).
        headers: HTTP headers for the server (e.g. authentication), with ``url`` only.

    Raises:
        ValueError: More than one of ``path`` / ``url`` / ``client`` given, a malformed ``url``, or a bad
            ``overlap`` / ``chunk_size`` / ``write_batch_size``.

    Example:
        >>> store = KVStore(".kvemb/store", embedder=KVEmbedder("Qwen/Qwen3-0.6B"))  # doctest: +SKIP
        >>> summary = store.add_documents([Document("notes.md", open("notes.md").read())])  # doctest: +SKIP
        >>> hits = store.query("what did I note about caching?", k=3, per_document=True)  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        url: str | None = None,
        collection: str = DEFAULT_COLLECTION,
        embedder: KVEmbedder | None = None,
        client: ClientAPI | None = None,
        overlap: int = 0,
        chunk_size: int | None = None,
        write_batch_size: int = _DEFAULT_WRITE_BATCH,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        given = [
            name for name, value in (("path", path), ("url", url), ("client", client)) if value is not None
        ]
        if len(given) > 1:
            raise ValueError(f"Give at most one of path, url or client; got {' and '.join(given)}.")
        if headers is not None and url is None:
            raise ValueError("headers= only applies to a Chroma server; give url='http://host:port' too.")
        self._check_overlap(overlap)
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < _MIN_CHUNK_SIZE
        ):
            raise ValueError(
                f"chunk_size must be None (the collection's, else {DEFAULT_CHUNK_SIZE}) or an int >= "
                f"{_MIN_CHUNK_SIZE} (tokens per chunk, template included); got {chunk_size!r}."
            )
        if (
            isinstance(write_batch_size, bool)
            or not isinstance(write_batch_size, int)
            or write_batch_size < 1
        ):
            raise ValueError(f"write_batch_size must be an int >= 1; got {write_batch_size!r}.")
        if not isinstance(collection, str) or not collection:
            raise ValueError(f"collection must be a non-empty str; got {collection!r}.")
        import chromadb

        self._owns_client = client is None
        self.path: Path | None = None
        self.url: str | None = None
        if client is not None:
            self._client: ClientAPI = client
        elif url is not None:
            host, port, ssl = _parse_url(url)
            self.url = url
            self._client = chromadb.HttpClient(
                host=host, port=port, ssl=ssl, headers=dict(headers or {}), settings=_make_settings()
            )
        else:
            self.path = Path(path if path is not None else DEFAULT_PATH)
            self._client = chromadb.PersistentClient(path=str(self.path), settings=_make_settings())
        self.collection_name = collection
        self.embedder = embedder
        self.overlap = overlap
        self.chunk_size = chunk_size
        self.write_batch_size = write_batch_size
        self._collection: Collection | None = None
        self._checked_identity: str | None = None

    # ------------------------------------------------------------------------------------- basics
    def __repr__(self) -> str:
        where = f"url={self.url!r}" if self.url else f"path={str(self.path)!r}" if self.path else "client=..."
        return f"KVStore({where}, collection={self.collection_name!r})"

    def __enter__(self) -> KVStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the Chroma client (database files, connections) when this store created it."""
        self._collection = None
        if self._owns_client:
            close = getattr(self._client, "close", None)
            if callable(close):
                close()

    @property
    def client(self) -> ClientAPI:
        """The underlying ``chromadb`` client."""
        return self._client

    @staticmethod
    def _check_overlap(overlap: int) -> None:
        if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
            raise ValueError(
                f"overlap must be an int >= 0 (tokens); got {overlap!r}. Use 0 for contiguous chunks."
            )

    def list_collections(self) -> list[str]:
        """Names of all collections in the database, sorted."""
        return sorted(c.name for c in self._client.list_collections())

    def exists(self) -> bool:
        """Whether the collection exists."""
        return self._find_collection() is not None

    def _find_collection(self) -> Collection | None:
        """The collection, or ``None`` when it does not exist."""
        if self._collection is None:
            from chromadb.errors import NotFoundError

            try:
                self._collection = self._client.get_collection(self.collection_name, embedding_function=None)
            except (NotFoundError, ValueError):
                return None
        return self._collection

    def _require_collection(self) -> Collection:
        """The collection; raises :class:`CollectionNotFoundError` when it does not exist."""
        col = self._find_collection()
        if col is None:
            known = self.list_collections()
            raise CollectionNotFoundError(
                f"Collection {self.collection_name!r} does not exist in {self._where()}; existing "
                f"collections: {', '.join(map(repr, known)) or 'none'}. Index documents into it first, or "
                "pick one of those."
            )
        return col

    def _where(self) -> str:
        return f"the Chroma server {self.url}" if self.url else f"{self.path}" if self.path else "this client"

    @property
    def identity(self) -> dict[str, Any] | None:
        """The embedder identity recorded in the collection (``None`` if none or no collection)."""
        col = self._find_collection()
        return None if col is None else self._stored_identity(col)

    @staticmethod
    def _stored_identity(col: Collection) -> dict[str, Any] | None:
        raw = (col.metadata or {}).get(_IDENTITY_KEY)
        if not isinstance(raw, str):
            return None
        loaded = json.loads(raw)
        return loaded if isinstance(loaded, dict) else None

    @property
    def recorded_overlap(self) -> int | None:
        """The chunk overlap of the collection's last indexing run (``None`` if none or no collection)."""
        col = self._find_collection()
        return None if col is None else self._recorded_overlap(col)

    @staticmethod
    def _recorded_overlap(col: Collection) -> int | None:
        value = (col.metadata or {}).get(_OVERLAP_KEY)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def recorded_chunk_size(self) -> int | None:
        """The chunk size of the collection's last indexing run (``None`` if none or no collection)."""
        col = self._find_collection()
        return None if col is None else self._recorded_chunk_size(col)

    @staticmethod
    def _recorded_chunk_size(col: Collection) -> int | None:
        value = (col.metadata or {}).get(_CHUNK_SIZE_KEY)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def _resolve_chunk_size(self, col: Collection, embedder: KVEmbedder) -> int:
        """This run's chunk size: the store's, else the collection's, else the default (within max_length)."""
        if self.chunk_size is not None:
            if self.chunk_size > embedder.max_length:
                raise ValueError(
                    f"chunk_size={self.chunk_size} exceeds the embedder's max_length={embedder.max_length}; use a "
                    "chunk_size <= max_length, or an embedder with a larger max_length."
                )
            return self.chunk_size
        recorded = self._recorded_chunk_size(col)
        return min(recorded or DEFAULT_CHUNK_SIZE, embedder.max_length)

    @staticmethod
    def _space(col: Collection) -> str | None:
        config: Any = getattr(col, "configuration", None) or {}
        for index in ("hnsw", "spann"):
            section = config.get(index) if isinstance(config, Mapping) else None
            if isinstance(section, Mapping) and section.get("space"):
                return str(section["space"])
        space = (col.metadata or {}).get("hnsw:space")
        return str(space) if space else None

    def count(self) -> int:
        """Stored records (chunks); 0 when the collection does not exist."""
        col = self._find_collection()
        return 0 if col is None else col.count()

    def _all_metadata(
        self, col: Collection, where: dict[str, Any] | None = None
    ) -> Iterator[tuple[str, Any]]:
        """(id, metadata) of every record (matching ``where``), read in pages."""
        page = self._batch_size()
        offset = 0
        while True:
            got = col.get(where=where, include=["metadatas"], limit=page, offset=offset)
            ids = got["ids"]
            metadatas: list[Any] = list(got["metadatas"] or [])
            metadatas += [None] * (len(ids) - len(metadatas))
            yield from zip(ids, metadatas, strict=True)
            if len(ids) < page:
                return
            offset += page

    def document_ids(self, source: str | None = None) -> list[str]:
        """Ids of the stored documents (of one ``source`` when given), sorted."""
        return sorted({doc_id for _, doc_id in self.document_keys(source)})

    def document_keys(self, source: str | None = None) -> list[DocKey]:
        """``(source, doc_id)`` of every stored document (of one ``source`` when given), sorted.

        Documents are identified by source and id together: ids alone repeat across sources (every folder
        may hold a ``README.md``).
        """
        col = self._find_collection()
        if col is None:
            return []
        where = {"source": source} if source is not None else None
        keys = {_meta_key(m) for _, m in self._all_metadata(col, where) if m and "doc_id" in m}
        return sorted(keys, key=lambda k: (k[0] or "", k[1]))

    def info(self, name: str | None = None) -> CollectionInfo:
        """Size and embedder identity of this collection (or of collection ``name``).

        Raises:
            CollectionNotFoundError: The collection does not exist.
        """
        if name is not None and name != self.collection_name:
            other = KVStore(client=self._client, collection=name)
            return other.info()
        col = self._require_collection()
        documents = {_meta_key(m) for _, m in self._all_metadata(col) if m and "doc_id" in m}
        return CollectionInfo(
            col.name, col.count(), len(documents), self._stored_identity(col), self._space(col)
        )

    def delete_collection(self) -> None:
        """Delete the whole collection (all records and its identity); a no-op when it does not exist."""
        if self._find_collection() is not None:
            self._client.delete_collection(self.collection_name)
        self._collection = None
        self._checked_identity = None

    def load_embedder(self, **overrides: Any) -> KVEmbedder:
        """Build the embedder recorded in the collection, set it as :attr:`embedder` and return it.

        Args:
            **overrides: :class:`KVEmbedder` keyword arguments such as ``device`` or ``cache_dir``.

        Raises:
            CollectionNotFoundError: The collection does not exist.
            IncompatibleCollectionError: It records no embedder identity.
            EmbedderMismatchError: The rebuilt embedder differs (e.g. the weights at that path changed).
        """
        col = self._require_collection()
        stored = self._stored_identity(col)
        if stored is None:
            raise self._foreign(col)
        self.embedder = embedder_from_identity(stored, **overrides)
        self._check_embedder(col)
        return self.embedder

    # ---------------------------------------------------------------------------------- identity
    def _foreign(self, col: Collection) -> IncompatibleCollectionError:
        return IncompatibleCollectionError(
            f"Collection {col.name!r} in {self._where()} records no kvemb-rag embedder identity (it was not "
            "created by kvemb-rag), so its vectors cannot be trusted to match an embedder. Use another "
            "collection name."
        )

    def _require_embedder(self) -> KVEmbedder:
        if self.embedder is None:
            raise ValueError(
                "This KVStore has no embedder. Pass KVStore(..., embedder=KVEmbedder(model)) or call "
                "store.load_embedder() to rebuild the one recorded in the collection."
            )
        return self.embedder

    def _check_embedder(self, col: Collection) -> None:
        embedder = self._require_embedder()
        current = embedder.identity
        fingerprint = _canonical(current)
        if self._checked_identity == fingerprint:
            return
        stored = self._stored_identity(col)
        if stored is None:
            raise self._foreign(col)
        if identity_differences(stored, current):
            raise EmbedderMismatchError(col.name, stored, current)
        space = self._space(col)
        if space is not None and space != _SPACE:
            raise IncompatibleCollectionError(
                f"Collection {col.name!r} uses the {space!r} distance space; kvemb-rag scores need 'cosine'. "
                "Use a new collection."
            )
        self._checked_identity = fingerprint

    def _writable_collection(self) -> Collection:
        """The collection, created with this embedder's identity when missing; identity checked."""
        embedder = self._require_embedder()
        col = self._find_collection()
        if col is None:
            from kvemb_rag import __version__

            metadata = {
                _IDENTITY_KEY: json.dumps(embedder.identity, sort_keys=True),
                _FORMAT_KEY: _FORMAT_VERSION,
                "created_by": f"kvemb-rag {__version__}",
            }
            # get_or_create: two processes creating the same collection at once both succeed; an existing
            # collection keeps its metadata, and its identity is checked below like any other.
            configuration: Any = {"hnsw": {"space": _SPACE}}
            col = self._client.get_or_create_collection(
                self.collection_name,
                configuration=configuration,
                metadata=metadata,
                embedding_function=None,
            )
            self._collection = col
            logger.info("Collection %r ready in %s", self.collection_name, self._where())
        if self._stored_identity(col) is None and col.count() == 0:
            # An empty collection made elsewhere: adopt it if its space fits.
            if self._space(col) not in (None, _SPACE):
                raise IncompatibleCollectionError(
                    f"Collection {col.name!r} uses the {self._space(col)!r} space; kvemb-rag needs 'cosine'. "
                    "Delete it or use another collection name."
                )
            # Chroma refuses to modify hnsw:* settings after creation; keep only the other keys.
            meta = {k: v for k, v in (col.metadata or {}).items() if not k.startswith("hnsw:")}
            meta[_IDENTITY_KEY] = json.dumps(embedder.identity, sort_keys=True)
            meta[_FORMAT_KEY] = _FORMAT_VERSION
            col.modify(metadata=meta)
            self._collection = None
            col = self._require_collection()
        self._check_embedder(col)
        return col

    def _batch_size(self) -> int:
        return max(1, min(self.write_batch_size, int(self._client.get_max_batch_size())))

    # ---------------------------------------------------------------------------------- indexing
    def add_documents(
        self,
        documents: Iterable[Document],
        *,
        overlap: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> IndexSummary:
        """Add or update documents (an upsert per document: source and id).

        New documents are chunked, embedded and written; documents stored with the same content (text,
        metadata, source and overlap) are left alone without re-embedding; changed ones get their new chunks
        written and then their old chunks deleted (chunks whose text did not change reuse their stored
        vectors).

        Args:
            documents: The documents; ids must be unique within a source in one call.
            overlap: Token overlap between consecutive chunks; default :attr:`overlap`.
            progress: Called with an :class:`IndexProgress` after each document is planned and each write.

        Returns:
            The run's :class:`IndexSummary` (``removed`` is 0).

        Raises:
            EmbedderMismatchError: The collection was built with another embedder.
            IncompatibleCollectionError: The collection was not made by kvemb-rag.
            ValueError: Duplicate document ids, no embedder, or a bad ``overlap``.
        """
        return self._index(list(documents), overlap=overlap, progress=progress, sync_source=None)

    def sync_documents(
        self,
        documents: Iterable[Document],
        *,
        source: str,
        overlap: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> IndexSummary:
        """Make the stored documents of ``source`` exactly ``documents``: add, update, remove vanished ones.

        Args:
            documents: The full current set of documents of the source; their ``source`` must be ``source``
                or ``None`` (then set to ``source``).
            source: The source label (e.g. an indexed folder).
            overlap: Token overlap between consecutive chunks; default :attr:`overlap`.
            progress: As in :meth:`add_documents`.

        Returns:
            The run's :class:`IndexSummary`, ``removed`` counting the vanished documents.

        Raises:
            ValueError: A document belongs to another source, or as in :meth:`add_documents`.
        """
        if not isinstance(source, str) or not source:
            raise ValueError(f"source must be a non-empty str; got {source!r}.")
        docs: list[Document] = []
        for doc in documents:
            if doc.source not in (None, source):
                raise ValueError(
                    f"Document {doc.id!r} belongs to source {doc.source!r}, not {source!r}; sync each source "
                    "separately."
                )
            docs.append(doc if doc.source == source else replace(doc, source=source))
        return self._index(docs, overlap=overlap, progress=progress, sync_source=source)

    def delete_document(self, doc_id: str, *, source: str | None = None) -> int:
        """Delete one document's records; returns the number of documents deleted (see :meth:`delete_documents`)."""
        return self.delete_documents([doc_id], source=source)

    def delete_documents(self, doc_ids: Iterable[str], *, source: str | None = None) -> int:
        """Delete documents' records.

        Args:
            doc_ids: Document ids; unknown ones are ignored.
            source: Only the documents of this source. ``None`` deletes the documents with these ids of
                every source (see :meth:`document_keys` for which sources hold an id).

        Returns:
            The number of documents (distinct source and id) that were stored and are now deleted.
        """
        ids = list(dict.fromkeys(doc_ids))
        col = self._find_collection()
        if col is None or not ids:
            return 0
        stored = self._stored_records(col, ids, lambda key: source is None or key[0] == source)
        return self._delete_records(col, stored)[0]

    def _stored_records(
        self, col: Collection, doc_ids: Sequence[str], wanted: Callable[[DocKey], bool]
    ) -> dict[DocKey, dict[str, Mapping[str, Any]]]:
        """The stored records of the documents with these ids whose identity is ``wanted``, by document."""
        by_doc: dict[DocKey, dict[str, Mapping[str, Any]]] = {}
        for part in _slices(list(dict.fromkeys(doc_ids)), _LOOKUP_DOCS):
            where: Any = {"doc_id": {"$in": list(part)}}
            stored = col.get(where=where, include=["metadatas"])
            for record_id, meta in zip(stored["ids"], stored["metadatas"] or [], strict=True):
                if meta and "doc_id" in meta and wanted(key := _meta_key(meta)):
                    by_doc.setdefault(key, {})[record_id] = meta
        return by_doc

    def _delete_records(
        self, col: Collection, by_doc: Mapping[DocKey, Mapping[str, Any]]
    ) -> tuple[int, int]:
        """Delete the given documents' records; returns (documents, records deleted)."""
        ids = [record_id for records in by_doc.values() for record_id in records]
        for batch in _slices(ids, self._batch_size()):
            col.delete(ids=list(batch))
        return len(by_doc), len(ids)

    def _index(
        self,
        docs: list[Document],
        *,
        overlap: int | None,
        progress: ProgressCallback | None,
        sync_source: str | None,
    ) -> IndexSummary:
        started = time.perf_counter()
        overlap = self.overlap if overlap is None else overlap
        self._check_overlap(overlap)
        not_documents = [i for i, d in enumerate(docs) if not isinstance(d, Document)]
        if not_documents:
            raise TypeError(
                f"documents[{not_documents[0]}] is a {type(docs[not_documents[0]]).__name__}; pass "
                "kvemb_rag.sources.Document objects."
            )
        counts: dict[DocKey, int] = {}
        for doc in docs:
            counts[_doc_key(doc)] = counts.get(_doc_key(doc), 0) + 1
        dupes = sorted((key for key, n in counts.items() if n > 1), key=lambda k: (k[0] or "", k[1]))
        if dupes:
            shown = [doc_id if source is None else f"{doc_id} (source {source})" for source, doc_id in dupes[:10]]
            raise ValueError(
                f"Duplicate document ids in one call: {shown}; ids must be unique within a source."
            )
        embedder = self._require_embedder()
        col = self._writable_collection()
        chunk_size = self._resolve_chunk_size(col, embedder)
        if self._recorded_overlap(col) != overlap or self._recorded_chunk_size(col) != chunk_size:
            # Remembered so that a later run without explicit settings chunks the same way.
            kept = {k: v for k, v in (col.metadata or {}).items() if not k.startswith("hnsw:")}
            col.modify(metadata={**kept, _OVERLAP_KEY: overlap, _CHUNK_SIZE_KEY: chunk_size})
        batch = self._batch_size()
        counters = _Counters()
        queue: list[_Pending] = []

        def report() -> None:
            if progress is not None:
                progress(
                    IndexProgress(
                        counters.documents_done,
                        len(docs),
                        counters.chunks_embedded,
                        counters.chunks_to_embed,
                        counters.records_written,
                        counters.write_batches,
                    )
                )

        def delete_ids(ids: Sequence[str]) -> None:
            for part in _slices(ids, batch):
                col.delete(ids=list(part))
            counters.records_deleted += len(ids)

        def flush() -> None:
            items = queue[:batch]
            del queue[: len(items)]
            if not items:
                return
            todo = [p for p in items if p.embedding is None]
            if todo:
                vectors = embedder.encode_document(
                    [p.text for p in todo], show_progress_bar=False, overflow="error"
                )  # (n, dim), unit rows
                for pending, vector in zip(todo, vectors, strict=True):
                    pending.embedding = vector.tolist()
            col.upsert(
                ids=[p.id for p in items],
                embeddings=cast(Any, [p.embedding for p in items]),
                documents=[p.text for p in items],
                metadatas=[p.metadata for p in items],
            )
            counters.chunks_embedded += len(todo)
            counters.records_written += len(items)
            counters.write_batches += 1
            for pending in items:
                pending.plan.remaining -= 1
                if pending.plan.remaining == 0:
                    # The new version is complete: only now drop the old one (a killed run loses no document).
                    delete_ids(pending.plan.stale)
                    counters.documents_done += 1
            report()

        for part in _slices(docs, _LOOKUP_DOCS):
            # Only the records of these very documents (same source and id): a same-id document of another
            # source is a different document and is never read as this one's old version.
            keys = {_doc_key(d) for d in part}
            by_doc = self._stored_records(col, [d.id for d in part], keys.__contains__)
            for doc in part:
                existing = by_doc.get(_doc_key(doc), {})
                self._plan_document(doc, (chunk_size, overlap), existing, col, queue, counters, delete_ids)
                report()
                while len(queue) >= batch:
                    flush()
        while queue:
            flush()

        removed = 0
        if sync_source is not None:
            current = {_doc_key(d) for d in docs}
            vanished = {k for k in self.document_keys(sync_source) if k not in current}
            if vanished:
                stored = self._stored_records(col, [doc_id for _, doc_id in vanished], vanished.__contains__)
                removed, deleted = self._delete_records(col, stored)
                counters.records_deleted += deleted
                logger.info("Removed %d document(s) no longer in %s", removed, sync_source)
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
        logger.info("Indexed into %r: %s", self.collection_name, summary)
        return summary

    def _plan_document(
        self,
        doc: Document,
        chunking: tuple[int, int],
        existing: Mapping[str, Mapping[str, Any]],
        col: Collection,
        queue: list[_Pending],
        counters: _Counters,
        delete_ids: Callable[[Sequence[str]], None],
    ) -> None:
        """Classify one document and queue the records it still needs."""
        encoded, json_keys = _encode_metadata(doc.metadata)
        key = _content_key(doc, chunking, encoded)
        same = [m for m in existing.values() if m.get("content_hash") == key]
        if existing and len(same) == len(existing):
            n_chunks = int(same[0].get("n_chunks", -1))
            if sorted(int(m.get("chunk_index", -1)) for m in same) == list(range(n_chunks)):
                counters.unchanged += 1
                counters.chunks += n_chunks
                counters.documents_done += 1
                return
        embedder = self._require_embedder()
        chunks = embedder.chunk(doc.text, "document", chunking[1], max_tokens=chunking[0])
        ids = [_record_id(doc.id, c.index, key) for c in chunks]
        wanted = set(ids)
        stale = sorted(set(existing) - wanted)
        counters.chunks += len(chunks)
        if not existing or len(same) == len(existing):
            counters.added += 1  # new, or resuming an interrupted write of this same version
        else:
            counters.replaced += 1
        reusable: dict[str, list[float]] = {}
        missing = [c for c, i in zip(chunks, ids, strict=True) if i not in existing]
        if stale and missing:
            # Chunks whose text did not change keep their vectors: same embedder, same text, same vector.
            old = col.get(ids=stale, include=["documents", "embeddings"])
            old_embeddings = old["embeddings"] if old["embeddings"] is not None else []
            for text, vector in zip(old["documents"] or [], old_embeddings, strict=True):
                if text is not None and vector is not None:
                    reusable[text] = [float(x) for x in vector]
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
            queue.append(_Pending(plan, record_id, chunk.text, metadata, vector))
        if plan.remaining == 0:
            delete_ids(stale)
            counters.documents_done += 1

    # ------------------------------------------------------------------------------------ search
    def query(
        self,
        text: str,
        k: int = 5,
        *,
        per_document: bool = False,
        where: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        """Search the collection.

        Args:
            text: The query (embedded with :meth:`KVEmbedder.encode_query`).
            k: Number of hits (chunks; documents with ``per_document``).
            per_document: Return the best chunk of each of the ``k`` best documents instead of the ``k`` best
                chunks (more chunks are fetched until ``k`` documents are found or the collection is
                exhausted).
            where: A Chroma metadata filter, e.g. ``{"lang": "en"}`` or ``{"doc_id": {"$in": [...]}}``.

        Returns:
            Hits, best first (score = cosine similarity).

        Raises:
            CollectionNotFoundError: Nothing was indexed into the collection.
            EmbedderMismatchError: The store's embedder is not the collection's.
            ValueError: ``k`` < 1, an empty query, or no embedder.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1; got {k!r}.")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"The query must be a non-empty string; got {text!r}.")
        col = self._require_collection()
        self._check_embedder(col)
        total = col.count()
        if total == 0:
            return []
        vector = self._require_embedder().encode_query(text, show_progress_bar=False)  # (dim,)
        if not per_document:
            return self._query_chunks(col, vector, min(k, total), where)
        fetch = min(total, k * _GROUP_FETCH_FACTOR)
        while True:
            hits = self._query_chunks(col, vector, fetch, where)
            best: dict[DocKey, Hit] = {}
            for hit in hits:
                best.setdefault((hit.source, hit.doc_id), hit)
            if len(best) >= k or fetch >= total or len(hits) < fetch:
                return list(best.values())[:k]
            fetch = min(total, fetch * _GROUP_FETCH_FACTOR)

    def _query_chunks(
        self, col: Collection, vector: np.ndarray, n: int, where: Mapping[str, Any] | None
    ) -> list[Hit]:
        result = col.query(
            query_embeddings=[vector.tolist()],
            n_results=n,
            where=dict(where) if where else None,
            include=["documents", "metadatas", "distances"],
        )
        ids = result["ids"][0]
        documents = (result["documents"] or [[]])[0]
        metadatas = (result["metadatas"] or [[]])[0]
        distances = (result["distances"] or [[]])[0]
        hits = []
        for record_id, text, stored, distance in zip(ids, documents, metadatas, distances, strict=True):
            meta: dict[str, Any] = dict(stored or {})
            hits.append(
                Hit(
                    score=1.0 - float(distance),
                    doc_id=str(meta.get("doc_id", record_id)),
                    chunk_index=int(meta.get("chunk_index", 0)),
                    start=int(meta.get("start", 0)),
                    end=int(meta.get("end", len(text or ""))),
                    text=text or "",
                    metadata=_decode_metadata(meta),
                    source=str(meta["source"]) if "source" in meta else None,
                    id=record_id,
                )
            )
        return hits
