"""The Chroma store: documents chunked, embedded with :class:`kvemb_rag.KVEmbedder`, stored and searched.

The public names, from their homes: :class:`KVStore` (:mod:`~kvemb_rag.store.store`), what it indexes
(:mod:`~kvemb_rag.store.documents`), returns and reports (:mod:`~kvemb_rag.store.records`) and raises
(:mod:`~kvemb_rag.store.errors`), its search modes (:mod:`~kvemb_rag.store.search`) and lexical index
(:mod:`~kvemb_rag.store.lexical`), and the indexing rules of ``kvemb index`` (:mod:`~kvemb_rag.store.sync`).
The collection itself is :mod:`~kvemb_rag.store.collection`; the indexing run :mod:`~kvemb_rag.store.indexing`.
"""

from kvemb_rag.engine.models import resolve_model
from kvemb_rag.store.documents import RESERVED_METADATA_KEYS, Document, SkippedFile
from kvemb_rag.store.errors import (
    CollectionNotFoundError,
    EmbedderMismatchError,
    IncompatibleCollectionError,
    KVStoreError,
    identity_differences,
)
from kvemb_rag.store.lexical import LexicalIndex
from kvemb_rag.store.records import CollectionInfo, DocKey, Hit, IndexProgress, IndexSummary, ProgressCallback
from kvemb_rag.store.search import DEFAULT_FUSION, DEFAULT_MODE, SEARCH_MODES, Fusion
from kvemb_rag.store.store import DEFAULT_CHUNK_SIZE, DEFAULT_COLLECTION, DEFAULT_PATH, KVStore
from kvemb_rag.store.sync import embedder_from_identity, indexing_embedder, sync_sources

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_COLLECTION",
    "DEFAULT_FUSION",
    "DEFAULT_MODE",
    "DEFAULT_PATH",
    "RESERVED_METADATA_KEYS",
    "SEARCH_MODES",
    "CollectionInfo",
    "CollectionNotFoundError",
    "DocKey",
    "Document",
    "EmbedderMismatchError",
    "Fusion",
    "Hit",
    "IncompatibleCollectionError",
    "IndexProgress",
    "IndexSummary",
    "KVStore",
    "KVStoreError",
    "LexicalIndex",
    "ProgressCallback",
    "SkippedFile",
    "embedder_from_identity",
    "identity_differences",
    "indexing_embedder",
    "resolve_model",
    "sync_sources",
]
