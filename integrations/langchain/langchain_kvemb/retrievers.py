"""LangChain ``BaseRetriever`` over a kvemb-rag :class:`~kvemb_rag.store.KVStore` (hybrid, dense or lexical search)."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, field_validator

from kvemb_rag.errors import ConfigError
from kvemb_rag.store import Fusion, Hit, KVStore
from kvemb_rag.store.search import check_mode

__all__ = ["KVRetriever"]

# What a call may override (``retriever.invoke(query, k=2, mode="lexical")``); ``verbose`` is consumed by
# ``invoke`` itself (callbacks) and reaches the retriever too, so it is tolerated and ignored.
_CALL_OPTIONS = ("k", "mode", "per_document", "where")
_IGNORED_OPTIONS = ("verbose",)


def _check_k(k: Any) -> int:
    """``k`` when it is an int >= 1 (not a bool); a :class:`ConfigError` otherwise."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be an int >= 1; got {k!r}.")
    return k


class KVRetriever(BaseRetriever):
    """Search a :class:`~kvemb_rag.store.KVStore` from LangChain: hybrid (default), dense or lexical.

    Each hit becomes a :class:`~langchain_core.documents.Document` whose ``page_content`` is the chunk text,
    whose ``id`` is the store's record id, and whose metadata is the document's user metadata plus
    ``doc_id``, ``source``, ``chunk_index``, ``start``, ``end`` (the chunk's character span in its document),
    ``score`` (see :meth:`KVStore.query <kvemb_rag.store.KVStore.query>`), ``id`` and ``mode`` (the search
    mode used). The store does the work; it needs an embedder for the dense and hybrid modes (give one to
    the store, or call :meth:`~kvemb_rag.store.KVStore.load_embedder` on it).

    A call may override ``k``, ``mode``, ``per_document`` and ``where``:
    ``retriever.invoke("query", k=2, mode="lexical")``. The async methods run the search in a worker thread
    (the engine is synchronous), so they do not block the event loop.

    Attributes:
        store: The store to search.
        k: Number of results (documents with ``per_document``, chunks otherwise).
        mode: One of :data:`kvemb_rag.store.SEARCH_MODES`; ``None`` uses the store's default
            (:data:`kvemb_rag.store.DEFAULT_MODE`).
        per_document: Return the best chunk of each of the ``k`` best documents (distinct documents, what a
            RAG prompt usually wants) instead of the ``k`` best chunks.
        where: A Chroma metadata filter on the records, e.g. ``{"lang": "en"}``.
        fusion: How hybrid search fuses its legs; ``None`` for the store's default.

    Example:
        >>> from kvemb_rag import KVEmbedder
        >>> from kvemb_rag.store import KVStore
        >>> from langchain_kvemb import KVRetriever
        >>> store = KVStore("index-dir", embedder=KVEmbedder("Qwen/Qwen3-0.6B"))  # doctest: +SKIP
        >>> retriever = KVRetriever(store=store, k=3)  # doctest: +SKIP
        >>> docs = retriever.invoke("Which animal purrs?")  # doctest: +SKIP
        >>> docs[0].metadata["doc_id"], docs[0].metadata["mode"]  # doctest: +SKIP
        ('cats.md', 'hybrid')
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    store: KVStore = Field(description="The kvemb-rag store to search.")
    k: int = Field(default=4, description="Number of results (documents with per_document, else chunks).")
    mode: str | None = Field(default=None, description="'hybrid', 'dense' or 'lexical'; None: the store's default.")
    per_document: bool = Field(default=True, description="One chunk (the best) per document.")
    where: dict[str, Any] | None = Field(default=None, description="A Chroma metadata filter on the records.")
    fusion: Fusion | None = Field(default=None, description="Hybrid fusion; None: the store's default.")

    @field_validator("store", mode="before")
    @classmethod
    def _validate_store(cls, value: Any) -> Any:
        if not isinstance(value, KVStore):
            raise ConfigError(f"store must be a kvemb_rag.store.KVStore; got {type(value).__name__}.")
        return value

    @field_validator("k", mode="before")
    @classmethod
    def _validate_k(cls, value: Any) -> int:
        return _check_k(value)

    @field_validator("mode", mode="before")
    @classmethod
    def _validate_mode(cls, value: Any) -> str | None:
        return None if value is None else check_mode(value)

    def _search(self, query: str, options: dict[str, Any]) -> list[Document]:
        """Run the store's search with this retriever's settings, overridden by ``options`` (one call's)."""
        unknown = sorted(set(options) - set(_CALL_OPTIONS) - set(_IGNORED_OPTIONS))
        if unknown:
            raise TypeError(
                f"KVRetriever got unexpected search argument(s) {unknown}; a call may set {', '.join(_CALL_OPTIONS)}."
            )
        k = _check_k(options.get("k", self.k))
        given_mode = options.get("mode", self.mode)
        mode = check_mode(given_mode)  # the mode the store will use (its default for None)
        per_document = options.get("per_document", self.per_document)
        if not isinstance(per_document, bool):
            raise ConfigError(f"per_document must be a bool; got {per_document!r}.")
        hits = self.store.query(
            query,
            k,
            per_document=per_document,
            where=options.get("where", self.where),
            mode=mode,
            fusion=self.fusion,
        )
        return [_to_document(hit, mode) for hit in hits]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        """The hits of ``query`` as Documents, best first (``kwargs``: this call's ``k``, ``mode``, ``where``...)."""
        return self._search(query, kwargs)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        """Async :meth:`_get_relevant_documents`: the search runs in a worker thread, not on the event loop."""
        return await run_in_executor(None, self._search, query, kwargs)


def _to_document(hit: Hit, mode: str) -> Document:
    """A LangChain Document of one hit: the chunk text, the user metadata and the hit's fields."""
    metadata = {
        **hit.metadata,
        "doc_id": hit.doc_id,
        "source": hit.source,
        "chunk_index": hit.chunk_index,
        "start": hit.start,
        "end": hit.end,
        "score": hit.score,
        "id": hit.id,
        "mode": mode,
    }
    return Document(page_content=hit.text, metadata=metadata, id=hit.id)
