"""A kvemb-rag collection: one Chroma collection with the records, settings and stamps the store keeps in it.

:class:`KVCollection` is the one place where the store reads and writes a collection: the embedder identity
and format recorded at creation (and checked before any vector is written or compared), the chunking of the
last indexing run, the *records version* stamped before every write or delete (what the lexical index is
checked against, :mod:`kvemb_rag.store.lexical`), and the records themselves, by document, in batches within
the client's maximum. Searches query :attr:`KVCollection.chroma` directly (:mod:`kvemb_rag.store.search`).

Collections use the **cosine** space, set at creation, and carry no Chroma embedding function: vectors are
always computed by the store and passed explicitly.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from kvemb_rag.engine.identity import canonical_json
from kvemb_rag.store.errors import IncompatibleCollectionError, check_same_vectors
from kvemb_rag.store.records import DocKey, record_document_key

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

__all__ = [
    "DOCUMENTS_PER_LOOKUP",
    "SPACE",
    "KVCollection",
    "batches",
    "mark_records_changed",
    "records_version",
]

#: The distance space of every kvemb-rag collection (set at creation; scores are cosine similarities).
SPACE = "cosine"
#: Documents whose stored records are looked up in one ``get`` (:meth:`KVCollection.records_of`).
DOCUMENTS_PER_LOOKUP = 128

# Collection-metadata keys written by the store.
_IDENTITY_KEY = "kvemb_identity"
_FORMAT_KEY = "kvemb_format"
_OVERLAP_KEY = "kvemb_overlap"
_CHUNK_SIZE_KEY = "kvemb_chunk_size"
# A new random value before every write or delete of records: what the lexical index is checked against.
_RECORDS_VERSION_KEY = "kvemb_records_version"
_FORMAT_VERSION = 1

T = TypeVar("T")


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _update_metadata(col: Collection, changes: Mapping[str, Any]) -> None:
    """Set keys of ``col``'s metadata and keep the others.

    Chroma replaces the whole mapping and refuses to modify the ``hnsw:*`` creation settings, so those are
    left out.
    """
    kept = {k: v for k, v in (col.metadata or {}).items() if not k.startswith("hnsw:")}
    col.modify(metadata={**kept, **changes})


def mark_records_changed(col: Collection) -> None:
    """Stamp a Chroma collection with a new records version (before every write or delete of its records)."""
    _update_metadata(col, {_RECORDS_VERSION_KEY: uuid.uuid4().hex})


def records_version(col: Collection) -> str | None:
    """A Chroma collection's records version (``None`` for a collection never written by this release)."""
    value = (col.metadata or {}).get(_RECORDS_VERSION_KEY)
    return value if isinstance(value, str) else None


class KVCollection:
    """A Chroma collection as the store keeps it: its records by document, its recorded settings, its stamps.

    Open one with :meth:`find` or :meth:`create`.

    Args:
        chroma: The Chroma collection.
        client: Its client (to re-read metadata that another process may have changed).
        batch: Records per write, delete and page of a full read.
        where: Where the database is, for messages (a folder, or ``"the Chroma server URL"``).
    """

    def __init__(self, chroma: Collection, client: ClientAPI, *, batch: int, where: str) -> None:
        self.chroma = chroma
        self.client = client
        self.batch = batch
        self.where = where
        self._checked: str | None = None  # the last embedder identity accepted by check_embedder (canonical)

    @classmethod
    def find(cls, client: ClientAPI, name: str, *, batch: int, where: str) -> KVCollection | None:
        """The collection ``name``, or ``None`` when it does not exist."""
        from chromadb.errors import NotFoundError

        try:
            chroma = client.get_collection(name, embedding_function=None)
        except (NotFoundError, ValueError):
            return None
        return cls(chroma, client, batch=batch, where=where)

    @classmethod
    def create(
        cls, client: ClientAPI, name: str, identity: Mapping[str, Any], *, batch: int, where: str
    ) -> KVCollection:
        """The collection ``name``, created in the cosine space with ``identity`` recorded when it is missing.

        Two processes creating the same collection at once both succeed; an existing collection keeps its
        metadata (check it with :meth:`check_embedder`).
        """
        from kvemb_rag import __version__

        metadata = {
            _IDENTITY_KEY: json.dumps(dict(identity), sort_keys=True),
            _FORMAT_KEY: _FORMAT_VERSION,
            "created_by": f"kvemb-rag {__version__}",
        }
        configuration: Any = {"hnsw": {"space": SPACE}}
        chroma = client.get_or_create_collection(
            name, configuration=configuration, metadata=metadata, embedding_function=None
        )
        return cls(chroma, client, batch=batch, where=where)

    def reread(self) -> KVCollection:
        """This collection with its metadata read again from the database (another process may have written)."""
        chroma = self.client.get_collection(self.name, embedding_function=None)
        return KVCollection(chroma, self.client, batch=self.batch, where=self.where)

    # ------------------------------------------------------------------------------ what it records
    @property
    def name(self) -> str:
        """The collection's name."""
        return str(self.chroma.name)

    @property
    def id(self) -> str:
        """The collection's id (unique in its database; a re-created collection gets a new one)."""
        return str(self.chroma.id)

    def count(self) -> int:
        """Stored records (chunks)."""
        return int(self.chroma.count())

    @property
    def identity(self) -> dict[str, Any] | None:
        """The embedder identity recorded in the collection (``None`` when it was not made by kvemb-rag)."""
        raw = (self.chroma.metadata or {}).get(_IDENTITY_KEY)
        if not isinstance(raw, str):
            return None
        loaded = json.loads(raw)
        return loaded if isinstance(loaded, dict) else None

    @property
    def space(self) -> str | None:
        """The distance space of the collection's index (``None`` when Chroma does not say)."""
        config: Any = getattr(self.chroma, "configuration", None) or {}
        for index in ("hnsw", "spann"):
            section = config.get(index) if isinstance(config, Mapping) else None
            if isinstance(section, Mapping) and section.get("space"):
                return str(section["space"])
        space = (self.chroma.metadata or {}).get("hnsw:space")
        return str(space) if space else None

    def _recorded_int(self, key: str) -> int | None:
        value = (self.chroma.metadata or {}).get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def recorded_overlap(self) -> int | None:
        """The chunk overlap of the last indexing run (``None`` before the first)."""
        return self._recorded_int(_OVERLAP_KEY)

    @property
    def recorded_chunk_size(self) -> int | None:
        """The chunk size of the last indexing run (``None`` before the first)."""
        return self._recorded_int(_CHUNK_SIZE_KEY)

    def record_chunking(self, chunk_size: int, overlap: int) -> None:
        """Remember this run's chunking, so that a later run without explicit settings chunks the same way."""
        if self.recorded_overlap != overlap or self.recorded_chunk_size != chunk_size:
            _update_metadata(self.chroma, {_OVERLAP_KEY: overlap, _CHUNK_SIZE_KEY: chunk_size})

    @property
    def records_version(self) -> str | None:
        """The records version stamped before the last write or delete (see :func:`records_version`)."""
        return records_version(self.chroma)

    # ------------------------------------------------------------------------------ its embedder
    def require_identity(self) -> dict[str, Any]:
        """The recorded embedder identity.

        Raises:
            IncompatibleCollectionError: The collection records none (it was not made by kvemb-rag).
        """
        identity = self.identity
        if identity is None:
            raise IncompatibleCollectionError(
                f"Collection {self.name!r} in {self.where} records no kvemb-rag embedder identity (it was not "
                "created by kvemb-rag), so its vectors cannot be trusted to match an embedder. Use another "
                "collection name."
            )
        return identity

    def adopt(self, identity: Mapping[str, Any]) -> None:
        """Record ``identity`` in an empty collection made elsewhere; a no-op for any other collection.

        Raises:
            IncompatibleCollectionError: The empty collection uses another distance space than cosine.
        """
        if self.identity is not None or self.count() > 0:
            return
        if self.space not in (None, SPACE):
            raise IncompatibleCollectionError(
                f"Collection {self.name!r} uses the {self.space!r} space; kvemb-rag needs {SPACE!r}. Delete it "
                "or use another collection name."
            )
        _update_metadata(
            self.chroma, {_IDENTITY_KEY: json.dumps(dict(identity), sort_keys=True), _FORMAT_KEY: _FORMAT_VERSION}
        )
        self.chroma = self.client.get_collection(self.name, embedding_function=None)

    def check_embedder(self, identity: Mapping[str, Any]) -> None:
        """Refuse an embedder whose vectors are not comparable with the stored ones (checked once per identity).

        Raises:
            IncompatibleCollectionError: The collection records no identity, or is not in the cosine space.
            EmbedderMismatchError: The identities differ (in anything but precision).
        """
        fingerprint = canonical_json(dict(identity))
        if self._checked == fingerprint:
            return
        check_same_vectors(self.name, self.require_identity(), identity)
        space = self.space
        if space is not None and space != SPACE:
            raise IncompatibleCollectionError(
                f"Collection {self.name!r} uses the {space!r} distance space; kvemb-rag scores need {SPACE!r}. "
                "Use a new collection."
            )
        self._checked = fingerprint

    # ------------------------------------------------------------------------------ reading records
    def iter_records(
        self, *, texts: bool = False, where: Mapping[str, Any] | None = None, page: int | None = None
    ) -> Iterator[tuple[str, str | None, Mapping[str, Any] | None]]:
        """``(id, chunk text or None, metadata)`` of every record (matching ``where``), read in pages.

        Args:
            texts: Read the chunk texts too (``None`` otherwise).
            where: A Chroma metadata filter.
            page: Records per read; default :attr:`batch`.
        """
        size = page or self.batch
        include: Any = ["documents", "metadatas"] if texts else ["metadatas"]
        offset = 0
        while True:
            got = self.chroma.get(where=dict(where) if where else None, include=include, limit=size, offset=offset)
            ids = got["ids"]
            chunks: list[Any] = list(got["documents"] or []) if texts else []
            metadatas: list[Any] = list(got["metadatas"] or [])
            chunks += [None] * (len(ids) - len(chunks))
            metadatas += [None] * (len(ids) - len(metadatas))
            yield from zip(ids, chunks, metadatas, strict=True)
            if len(ids) < size:
                return
            offset += size

    def document_keys(self, source: str | None = None) -> list[DocKey]:
        """``(source, doc_id)`` of every stored document (of one ``source`` when given), sorted."""
        where = {"source": source} if source is not None else None
        keys = {record_document_key(m) for _, _, m in self.iter_records(where=where) if m and "doc_id" in m}
        return sorted(keys, key=lambda k: (k[0] or "", k[1]))

    def records_of(
        self, doc_ids: Sequence[str], wanted: Callable[[DocKey], bool]
    ) -> dict[DocKey, dict[str, Mapping[str, Any]]]:
        """The stored records of the documents with these ids whose identity is ``wanted``, by document.

        Returns:
            ``{(source, doc_id): {record id: metadata}}``.
        """
        by_doc: dict[DocKey, dict[str, Mapping[str, Any]]] = {}
        for part in batches(list(dict.fromkeys(doc_ids)), DOCUMENTS_PER_LOOKUP):
            where: Any = {"doc_id": {"$in": list(part)}}
            stored = self.chroma.get(where=where, include=["metadatas"])
            for record_id, meta in zip(stored["ids"], stored["metadatas"] or [], strict=True):
                if meta and "doc_id" in meta and wanted(key := record_document_key(meta)):
                    by_doc.setdefault(key, {})[record_id] = meta
        return by_doc

    def vectors_by_text(self, ids: Sequence[str]) -> dict[str, list[float]]:
        """Chunk text -> stored vector of the given records (a chunk whose text is unchanged keeps its vector)."""
        old = self.chroma.get(ids=list(ids), include=["documents", "embeddings"])
        old_embeddings = old["embeddings"] if old["embeddings"] is not None else []
        vectors: dict[str, list[float]] = {}
        for text, vector in zip(old["documents"] or [], old_embeddings, strict=True):
            if text is not None and vector is not None:
                vectors[text] = [float(x) for x in vector]
        return vectors

    # ------------------------------------------------------------------------------ writing records
    def write(
        self,
        ids: Sequence[str],
        vectors: Sequence[Sequence[float]],
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]],
    ) -> None:
        """Upsert records in one call (at most :attr:`batch` of them), the records version stamped first."""
        if not ids:
            return
        mark_records_changed(self.chroma)
        self.chroma.upsert(
            ids=list(ids),
            embeddings=cast(Any, list(vectors)),
            documents=list(texts),
            metadatas=cast(Any, list(metadatas)),
        )

    def delete(self, ids: Sequence[str]) -> None:
        """Delete records by id, in batches, the records version stamped first."""
        if ids:
            mark_records_changed(self.chroma)
        for part in batches(ids, self.batch):
            self.chroma.delete(ids=list(part))

    def delete_documents(self, by_doc: Mapping[DocKey, Mapping[str, Any]]) -> tuple[int, int]:
        """Delete the records of documents (as :meth:`records_of` gives them); returns (documents, records)."""
        ids = [record_id for records in by_doc.values() for record_id in records]
        self.delete(ids)
        return len(by_doc), len(ids)
