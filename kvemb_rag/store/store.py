"""A Chroma-backed document store whose vectors come from :class:`kvemb_rag.KVEmbedder`.

:class:`KVStore` chunks documents with the engine (each chunk fits ``max_length`` with its prompt template),
embeds every chunk with the engine's document side and writes them to a Chroma collection, embedded on disk
(``chromadb.PersistentClient``) or on a Chroma server (``chromadb.HttpClient``).

Vector-store hygiene:

* collections use the **cosine** space, set at creation, and carry no Chroma embedding function: vectors
  are always computed here and passed explicitly (:mod:`kvemb_rag.store.collection`);
* the embedder's :attr:`~kvemb_rag.KVEmbedder.identity` is stored (JSON) in the collection metadata; adding
  to or querying a collection with a different embedder raises :class:`EmbedderMismatchError`;
* writes are batched within ``client.get_max_batch_size()``;
* a document is identified by its **source and id** together (:data:`DocKey`): two folders that both hold
  ``README.md`` are two documents, and indexing one source never updates or deletes another source's
  documents;
* record ids are deterministic (:mod:`kvemb_rag.store.indexing`). Indexing is an upsert per document: an
  unchanged document is recognised from its stored records without re-chunking or re-embedding; a changed
  one gets its new chunks written first and its old ones deleted after, so an interrupted run that is run
  again ends with exactly the records of an uninterrupted one.

Each record's metadata holds ``doc_id``, ``chunk_index``, ``start`` / ``end`` (character span in the
document), ``n_tokens`` (with the template), ``n_chunks``, ``content_hash``, ``source`` (when the document
has one) and the user metadata (values that are not ``str``/``int``/``float``/``bool`` JSON-encoded, their
keys listed in ``json_keys``).

See :class:`KVStore` for an example; search modes are in :mod:`kvemb_rag.store.search`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from kvemb_rag.errors import ConfigError, InputError
from kvemb_rag.store.collection import KVCollection
from kvemb_rag.store.documents import Document
from kvemb_rag.store.errors import CollectionNotFoundError
from kvemb_rag.store.indexing import BulkEmbed, check_documents, index_documents
from kvemb_rag.store.lexical import LexicalIndex, LexicalIndexFolder, lexical_root
from kvemb_rag.store.records import CollectionInfo, DocKey, Hit, IndexSummary, ProgressCallback
from kvemb_rag.store.search import DEFAULT_FUSION, Fusion, best_per_document, check_mode, search_chunks

if TYPE_CHECKING:
    import numpy as np
    from chromadb.api import ClientAPI

    from kvemb_rag.engine.embedder import KVEmbedder

__all__ = ["DEFAULT_CHUNK_SIZE", "DEFAULT_COLLECTION", "DEFAULT_PATH", "KVStore"]

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

# Records written per upsert unless the caller asks for fewer; always capped by the client's maximum.
_DEFAULT_WRITE_BATCH = 256


def _client_settings() -> Any:
    from chromadb.config import Settings

    # No usage reporting from a local tool, and the store never needs Chroma's reset().
    return Settings(anonymized_telemetry=False)


def _parse_url(url: str) -> tuple[str, int, bool]:
    """``(host, port, ssl)`` of a Chroma server address."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(
            f"url={url!r} is not a Chroma server address; use http://HOST:PORT (e.g. http://localhost:8000)."
        )
    try:
        port = parsed.port
    except ValueError as exc:
        raise ConfigError(f"url={url!r} has an invalid port; use http://HOST:PORT.") from exc
    ssl = parsed.scheme == "https"
    return parsed.hostname, port if port is not None else (443 if ssl else 8000), ssl


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
        lexical_dir: Folder of the lexical (BM25) indexes. Default: ``kvemb-lexical`` inside an on-disk
            database; for a server (or a client passed in), ``$KVEMB_CACHE_DIR/lexical/<server>`` on this
            machine (see :mod:`kvemb_rag.store.lexical`).

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
        lexical_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        given = [name for name, value in (("path", path), ("url", url), ("client", client)) if value is not None]
        if len(given) > 1:
            raise ConfigError(f"Give at most one of path, url or client; got {' and '.join(given)}.")
        if headers is not None and url is None:
            raise ConfigError("headers= only applies to a Chroma server; give url='http://host:port' too.")
        self._check_overlap(overlap)
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < _MIN_CHUNK_SIZE
        ):
            raise ConfigError(
                f"chunk_size must be None (the collection's, else {DEFAULT_CHUNK_SIZE}) or an int >= "
                f"{_MIN_CHUNK_SIZE} (tokens per chunk, template included); got {chunk_size!r}."
            )
        if isinstance(write_batch_size, bool) or not isinstance(write_batch_size, int) or write_batch_size < 1:
            raise ConfigError(f"write_batch_size must be an int >= 1; got {write_batch_size!r}.")
        if not isinstance(collection, str) or not collection:
            raise ConfigError(f"collection must be a non-empty str; got {collection!r}.")
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
                host=host, port=port, ssl=ssl, headers=dict(headers or {}), settings=_client_settings()
            )
        else:
            self.path = Path(path if path is not None else DEFAULT_PATH)
            self._client = chromadb.PersistentClient(path=str(self.path), settings=_client_settings())
        self.collection_name = collection
        self.embedder = embedder
        self.overlap = overlap
        self.chunk_size = chunk_size
        self.write_batch_size = write_batch_size
        self._collection: KVCollection | None = None
        root = Path(lexical_dir) if lexical_dir is not None else lexical_root(self.path, self.url, self._client)
        self._lexical = LexicalIndexFolder(root)

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
            raise ConfigError(f"overlap must be an int >= 0 (tokens); got {overlap!r}. Use 0 for contiguous chunks.")

    def list_collections(self) -> list[str]:
        """Names of all collections in the database, sorted."""
        return sorted(c.name for c in self._client.list_collections())

    def exists(self) -> bool:
        """Whether the collection exists."""
        return self._find_collection() is not None

    def _find_collection(self) -> KVCollection | None:
        """The collection, or ``None`` when it does not exist."""
        if self._collection is None:
            self._collection = KVCollection.find(
                self._client, self.collection_name, batch=self._batch_size(), where=self._where()
            )
        return self._collection

    def _require_collection(self) -> KVCollection:
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

    def _batch_size(self) -> int:
        return max(1, min(self.write_batch_size, int(self._client.get_max_batch_size())))

    @property
    def identity(self) -> dict[str, Any] | None:
        """The embedder identity recorded in the collection (``None`` if none or no collection)."""
        col = self._find_collection()
        return None if col is None else col.identity

    @property
    def recorded_overlap(self) -> int | None:
        """The chunk overlap of the collection's last indexing run (``None`` if none or no collection)."""
        col = self._find_collection()
        return None if col is None else col.recorded_overlap

    @property
    def recorded_chunk_size(self) -> int | None:
        """The chunk size of the collection's last indexing run (``None`` if none or no collection)."""
        col = self._find_collection()
        return None if col is None else col.recorded_chunk_size

    def count(self) -> int:
        """Stored records (chunks); 0 when the collection does not exist."""
        col = self._find_collection()
        return 0 if col is None else col.count()

    def document_ids(self, source: str | None = None) -> list[str]:
        """Ids of the stored documents (of one ``source`` when given), sorted."""
        return sorted({doc_id for _, doc_id in self.document_keys(source)})

    def document_keys(self, source: str | None = None) -> list[DocKey]:
        """``(source, doc_id)`` of every stored document (of one ``source`` when given), sorted.

        Documents are identified by source and id together: ids alone repeat across sources (every folder
        may hold a ``README.md``).
        """
        col = self._find_collection()
        return [] if col is None else col.document_keys(source)

    def info(self, name: str | None = None) -> CollectionInfo:
        """Size and embedder identity of this collection (or of collection ``name``).

        Counting the distinct documents reads every record's metadata; :meth:`count` and :attr:`identity`
        read only the collection's own.

        Raises:
            CollectionNotFoundError: The collection does not exist.
        """
        if name is not None and name != self.collection_name:
            other = KVStore(client=self._client, collection=name)
            return other.info()
        col = self._require_collection()
        return CollectionInfo(col.name, col.count(), len(col.document_keys()), col.identity, col.space)

    def delete_collection(self) -> None:
        """Delete the whole collection (all records and its identity); a no-op when it does not exist."""
        col = self._find_collection()
        if col is not None:
            self._client.delete_collection(self.collection_name)
            self._lexical.drop(col.id)
        self._collection = None

    # ---------------------------------------------------------------------------------- embedder
    def load_embedder(self, **overrides: Any) -> KVEmbedder:
        """Build the embedder recorded in the collection, set it as :attr:`embedder` and return it.

        Args:
            **overrides: :class:`KVEmbedder` keyword arguments such as ``device`` or ``cache_dir``.

        Raises:
            CollectionNotFoundError: The collection does not exist.
            IncompatibleCollectionError: It records no embedder identity.
            EmbedderMismatchError: The rebuilt embedder differs (e.g. the weights at that path changed).
        """
        from kvemb_rag.engine.embedder import KVEmbedder

        col = self._require_collection()
        self.embedder = KVEmbedder.from_identity(col.require_identity(), **overrides)
        col.check_embedder(self.embedder.identity)
        return self.embedder

    def _require_embedder(self) -> KVEmbedder:
        if self.embedder is None:
            raise ConfigError(
                "This KVStore has no embedder. Pass KVStore(..., embedder=KVEmbedder(model)) or call "
                "store.load_embedder() to rebuild the one recorded in the collection."
            )
        return self.embedder

    def _writable_collection(self) -> KVCollection:
        """The collection, created with this embedder's identity when missing; identity checked."""
        embedder = self._require_embedder()
        col = self._find_collection()
        if col is None:
            col = KVCollection.create(
                self._client, self.collection_name, embedder.identity, batch=self._batch_size(), where=self._where()
            )
            self._collection = col
            logger.info("Collection %r ready in %s", self.collection_name, self._where())
        col.adopt(embedder.identity)  # an empty collection made elsewhere
        col.check_embedder(embedder.identity)
        return col

    def _resolve_chunk_size(self, col: KVCollection, embedder: KVEmbedder) -> int:
        """This run's chunk size: the store's, else the collection's, else the default (within max_length)."""
        if self.chunk_size is not None:
            if self.chunk_size > embedder.max_length:
                raise ConfigError(
                    f"chunk_size={self.chunk_size} exceeds the embedder's max_length={embedder.max_length}; use a "
                    "chunk_size <= max_length, or an embedder with a larger max_length."
                )
            return self.chunk_size
        return min(col.recorded_chunk_size or DEFAULT_CHUNK_SIZE, embedder.max_length)

    # ---------------------------------------------------------------------------------- indexing
    def add_documents(
        self,
        documents: Iterable[Document],
        *,
        overlap: int | None = None,
        progress: ProgressCallback | None = None,
        bulk_embed: BulkEmbed | None = None,
    ) -> IndexSummary:
        """Add or update documents (an upsert per document: source and id).

        New documents are chunked, embedded and written; documents stored with the same content (text,
        metadata, source and chunking) are left alone without re-embedding; changed ones get their new chunks
        written and then their old chunks deleted (chunks whose text did not change reuse their stored
        vectors).

        Args:
            documents: The documents; ids must be unique within a source in one call.
            overlap: Token overlap between consecutive chunks; default :attr:`overlap`.
            progress: Called with an :class:`IndexProgress` after each document is planned and each write.
            bulk_embed: Embed the planned chunks elsewhere instead of batch by batch in this process, e.g. on
                Ray actors (:func:`kvemb_rag.store.distributed.ray_add_documents`); the records are the same.

        Returns:
            The run's :class:`IndexSummary` (``removed`` is 0).

        Raises:
            EmbedderMismatchError: The collection was built with another embedder.
            IncompatibleCollectionError: The collection was not made by kvemb-rag.
            ValueError: Duplicate document ids, no embedder, or a bad ``overlap``.
        """
        return self._index(list(documents), overlap, progress, sync_source=None, bulk_embed=bulk_embed)

    def sync_documents(
        self,
        documents: Iterable[Document],
        *,
        source: str,
        overlap: int | None = None,
        progress: ProgressCallback | None = None,
        bulk_embed: BulkEmbed | None = None,
    ) -> IndexSummary:
        """Make the stored documents of ``source`` exactly ``documents``: add, update, remove vanished ones.

        Args:
            documents: The full current set of documents of the source; their ``source`` must be ``source``
                or ``None`` (then set to ``source``).
            source: The source label (e.g. an indexed folder).
            overlap: Token overlap between consecutive chunks; default :attr:`overlap`.
            progress: As in :meth:`add_documents`.
            bulk_embed: As in :meth:`add_documents`.

        Returns:
            The run's :class:`IndexSummary`, ``removed`` counting the vanished documents.

        Raises:
            ValueError: A document belongs to another source, or as in :meth:`add_documents`.
        """
        docs = self._of_source(documents, source)
        return self._index(docs, overlap, progress, sync_source=source, bulk_embed=bulk_embed)

    @staticmethod
    def _of_source(documents: Iterable[Document], source: str) -> list[Document]:
        """``documents`` with ``source`` set (refusing documents of another source)."""
        if not isinstance(source, str) or not source:
            raise ConfigError(f"source must be a non-empty str; got {source!r}.")
        docs: list[Document] = []
        for doc in documents:
            if doc.source not in (None, source):
                raise InputError(
                    f"Document {doc.id!r} belongs to source {doc.source!r}, not {source!r}; sync each source "
                    "separately."
                )
            docs.append(doc if doc.source == source else replace(doc, source=source))
        return docs

    def _index(
        self,
        docs: list[Document],
        overlap: int | None,
        progress: ProgressCallback | None,
        *,
        sync_source: str | None,
        bulk_embed: BulkEmbed | None,
    ) -> IndexSummary:
        """Check the call, open the collection for writing, index (:mod:`kvemb_rag.store.indexing`), refresh."""
        started = time.perf_counter()
        overlap = self.overlap if overlap is None else overlap
        self._check_overlap(overlap)
        check_documents(docs)
        embedder = self._require_embedder()
        col = self._writable_collection()
        chunking = (self._resolve_chunk_size(col, embedder), overlap)
        summary = index_documents(
            col, embedder, docs, chunking=chunking, progress=progress, sync_source=sync_source, bulk_embed=bulk_embed
        )
        if summary.records_written or summary.records_deleted:
            self._refresh_lexical("the records changed")
        summary = replace(summary, seconds=time.perf_counter() - started)
        logger.info("Indexed into %r: %s", self.collection_name, summary)
        return summary

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
        stored = col.records_of(ids, lambda key: source is None or key[0] == source)
        deleted = col.delete_documents(stored)[0]
        if deleted:
            self._refresh_lexical("documents were deleted")
        return deleted

    # ---------------------------------------------------------------------------------- search
    def query(
        self,
        text: str,
        k: int = 5,
        *,
        per_document: bool = False,
        where: Mapping[str, Any] | None = None,
        mode: str | None = None,
        fusion: Fusion | None = None,
    ) -> list[Hit]:
        """Search the collection.

        Args:
            text: The query (embedded with :meth:`KVEmbedder.encode_query` for the dense leg).
            k: Number of hits (chunks; documents with ``per_document``).
            per_document: Return the best chunk of each of the ``k`` best documents instead of the ``k`` best
                chunks (more chunks are fetched until ``k`` documents are found or the collection is
                exhausted).
            where: A Chroma metadata filter, e.g. ``{"lang": "en"}`` or ``{"doc_id": {"$in": [...]}}``.
            mode: ``"hybrid"`` (default: KV-Embedding and BM25 fused), ``"dense"`` or ``"lexical"`` (see
                :mod:`kvemb_rag.store.search`). Lexical search needs no embedder unless the query has no
                term in the index, which falls back to dense ranking.
            fusion: How hybrid search fuses its legs; default :data:`~kvemb_rag.store.search.DEFAULT_FUSION`.

        Returns:
            Hits, best first (score: cosine similarity in dense mode, BM25 in lexical mode, the fused score in
            hybrid mode).

        Raises:
            CollectionNotFoundError: Nothing was indexed into the collection.
            EmbedderMismatchError: The store's embedder is not the collection's.
            ValueError: ``k`` < 1, an empty query, an unknown mode, or no embedder where one is needed.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be an int >= 1; got {k!r}.")
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"The query must be a non-empty string; got {text!r}.")
        mode = check_mode(mode)
        if fusion is not None and not isinstance(fusion, Fusion):
            raise ConfigError(f"fusion must be a kvemb_rag.store.Fusion; got {fusion!r}.")
        col = self._require_collection()
        if mode != "lexical":
            col.check_embedder(self._require_embedder().identity)
        total = col.count()
        if total == 0:
            return []
        vector: list[np.ndarray] = []

        def query_vector() -> np.ndarray:
            if not vector:
                embedder = self._require_embedder()
                col.check_embedder(embedder.identity)
                vector.append(embedder.encode_query(text, show_progress_bar=False))  # (dim,)
            return vector[0]

        def search(n: int) -> list[Hit]:
            return search_chunks(
                col.chroma,
                text,
                n,
                mode=mode,
                fusion=fusion or DEFAULT_FUSION,
                where=where,
                query_vector=query_vector,
                lexical_index=self._refresh_lexical,
            )

        return best_per_document(search, k, total) if per_document else search(min(k, total))

    # ---------------------------------------------------------------------------------- lexical index
    def _refresh_lexical(self, reason: str | None = None) -> LexicalIndex:
        """The collection's lexical index as of its current records (rebuilt from them when stale)."""
        return self._lexical.fresh(self._require_collection().reread(), reason=reason)

    def lexical_index(self) -> LexicalIndex:
        """The collection's BM25 index as of its current records (rebuilt when missing or older)."""
        return self._refresh_lexical()
