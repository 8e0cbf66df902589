"""What the store indexes: :class:`Document`, the metadata keys it reserves, and :class:`SkippedFile`.

A :class:`Document` is what :class:`kvemb_rag.store.KVStore` indexes: a stable id, its text, flat user
metadata and the *source* it belongs to (the unit that :meth:`~kvemb_rag.store.KVStore.sync_documents`
mirrors). File readers (:mod:`kvemb_rag.sources`) build documents and report the files they could not
read as :class:`SkippedFile`, which an :class:`~kvemb_rag.store.IndexSummary` carries.

Example:
    >>> from kvemb_rag.store import Document
    >>> Document("notes.md", "Cats purr.", {"lang": "en"}, source="notes").id
    'notes.md'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvemb_rag.errors import InputError

__all__ = ["RESERVED_METADATA_KEYS", "Document", "SkippedFile"]

#: Metadata keys the store writes on every record; user metadata may not use them (see :class:`Document`).
RESERVED_METADATA_KEYS: tuple[str, ...] = (
    "doc_id",
    "chunk_index",
    "start",
    "end",
    "n_tokens",
    "n_chunks",
    "source",
    "content_hash",
    "json_keys",
)


@dataclass(frozen=True)
class Document:
    """One document to index.

    Attributes:
        id: Stable, unique document id (e.g. a path relative to the indexed folder).
        text: The full text; must contain something other than whitespace.
        metadata: Flat user metadata (string keys, none of :data:`RESERVED_METADATA_KEYS`). Values that are
            not ``str``/``int``/``float``/``bool`` are JSON-encoded by the store and decoded in search hits.
        source: The source this document belongs to (e.g. the indexed folder); ``None`` when it is not
            part of a synchronised source.
    """

    id: str
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InputError(
                f"Document id must be a non-empty str; got {self.id!r}. Give each document an id."
            )
        if not isinstance(self.text, str):
            raise TypeError(
                f"Document {self.id!r}: text must be a str, got {type(self.text).__name__}. Decode it first."
            )
        if not self.text.strip():
            raise InputError(
                f"Document {self.id!r} is empty or whitespace-only; there is nothing to embed. Leave it out."
            )
        if not isinstance(self.metadata, Mapping):
            raise TypeError(
                f"Document {self.id!r}: metadata must be a mapping, got {type(self.metadata).__name__}."
            )
        bad = [k for k in self.metadata if not isinstance(k, str) or not k]
        if bad:
            raise InputError(f"Document {self.id!r}: metadata keys must be non-empty str; got {bad!r}.")
        reserved = sorted(set(self.metadata) & set(RESERVED_METADATA_KEYS))
        if reserved:
            raise InputError(
                f"Document {self.id!r}: metadata keys {reserved} are reserved for the store's own fields "
                f"({', '.join(RESERVED_METADATA_KEYS)}); rename them, e.g. 'meta_{reserved[0]}'."
            )
        if self.source is not None and (not isinstance(self.source, str) or not self.source):
            raise InputError(
                f"Document {self.id!r}: source must be None or a non-empty str; got {self.source!r}."
            )
        object.__setattr__(self, "metadata", dict(self.metadata))


@dataclass(frozen=True)
class SkippedFile:
    """A file (or a ``file:line`` of a JSONL file) that was not indexed, and why."""

    path: str
    reason: str

