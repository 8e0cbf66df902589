"""LlamaIndex ``BaseEmbedding`` for kvemb-rag's :class:`~kvemb_rag.KVEmbedder`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.node_parser import SentenceSplitter

from kvemb_rag.adapters import EngineSettings, settings_model
from kvemb_rag.engine.models import DEFAULT_MODEL

__all__ = ["DEFAULT_MODEL", "KVEmbedding"]


# Tokens kept free in every node: SentenceSplitter counts its pieces separately (token counts are not
# exactly additive across piece boundaries) and LlamaIndex joins metadata and text with "\n\n".
_MIN_MARGIN = 8
_MARGIN_FRACTION = 1 / 32


class _TokenIds:
    """``text -> token ids`` without special tokens: the counting function handed to the splitter.

    It calls the Rust tokenizer directly when there is one, so counting a whole document (the splitter's
    first step) does not trip transformers' "longer than the maximum sequence length" warning.
    A class rather than a lambda so that the splitter stays picklable (LlamaIndex's parallel ingestion).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            ids: list[int] = backend.encode(text, add_special_tokens=False).ids
            return ids
        return list(self.tokenizer.encode(text, add_special_tokens=False))


if TYPE_CHECKING:

    class _Settings(BaseEmbedding, EngineSettings):  # what type checkers see of the derived fields
        pass

else:
    # One field per engine setting, derived from kvemb_rag.engine.config.EmbedderConfig, in LlamaIndex's
    # spelling for the two settings BaseEmbedding already has.
    _Settings = settings_model(
        BaseEmbedding, "_KVEmbeddingSettings", {"model": "model_name", "batch_size": "embed_batch_size"}
    )


class KVEmbedding(_Settings):
    """Training-free embeddings from a local decoder-only LLM (KV-Embedding), for LlamaIndex.

    Queries (``get_query_embedding``) use the engine's query-side template; nodes and documents
    (``get_text_embedding`` and its batch form) the document-side template. Texts longer than
    ``max_length`` tokens are chunked and combined by the engine; :meth:`node_parser` gives a splitter
    whose nodes fit without that. The model loads on first use, once per process for all adapters with
    the same engine settings.

    Every :class:`~kvemb_rag.KVEmbedder` setting is a field with the engine's defaults and validation;
    ``model`` and ``batch_size`` are spelled ``model_name`` and ``embed_batch_size``, as in LlamaIndex.

    Example:
        >>> from llama_index.embeddings.kvemb import KVEmbedding
        >>> embed_model = KVEmbedding()  # the bundled default model; nothing is loaded yet
        >>> splitter = embed_model.node_parser(chunk_overlap=32)  # doctest: +SKIP
        >>> vector = embed_model.get_query_embedding("Which animal purrs?")  # doctest: +SKIP
    """

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex serialisation."""
        return "KVEmbedding"

    # ------------------------------------------------------------------------------------ engine
    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` with the document template applied, as the engine will see it."""
        return self.engine.count_tokens(text, "document")

    def node_parser(
        self, chunk_overlap: int = 0, chunk_size: int | None = None, **kwargs: Any
    ) -> SentenceSplitter:
        """A :class:`~llama_index.core.node_parser.SentenceSplitter` that counts with this model's tokenizer.

        The chunk size leaves room for the document template and a small margin, so that every node --
        its text plus the metadata LlamaIndex embeds with it -- fits the engine's ``max_length`` and is
        embedded in one forward pass (check with :meth:`count_tokens`).

        Args:
            chunk_overlap: Tokens shared by consecutive nodes.
            chunk_size: Tokens per node; default (and maximum) the largest size that fits.
            **kwargs: Other :class:`SentenceSplitter` arguments (``paragraph_separator``...).

        Returns:
            The splitter (use it as ``transformations=[splitter]`` or ``splitter.get_nodes_from_documents``).

        Raises:
            ValueError: ``chunk_size`` above the limit, or ``chunk_overlap`` not smaller than the chunk size.
        """
        limit = self.max_node_tokens()
        size = limit if chunk_size is None else chunk_size
        if not 0 < size <= limit:
            raise ValueError(
                f"chunk_size={chunk_size} does not fit: with the document template, nodes of "
                f"{self.model_name!r} hold at most {limit} tokens (max_length={self.engine.max_length}). "
                f"Use chunk_size <= {limit} or raise max_length."
            )
        if not 0 <= chunk_overlap < size:
            raise ValueError(f"chunk_overlap={chunk_overlap} must be >= 0 and below chunk_size={size}.")
        tokenizer = _TokenIds(self.engine.tokenizer)
        return SentenceSplitter(chunk_size=size, chunk_overlap=chunk_overlap, tokenizer=tokenizer, **kwargs)

    def max_node_tokens(self) -> int:
        """Largest node size (tokens, no template) that :meth:`node_parser` allows."""
        engine = self.engine
        budget = engine.max_length - engine.count_tokens("", "document")
        return budget - max(_MIN_MARGIN, int(budget * _MARGIN_FRACTION))

    # ---------------------------------------------------------------------------------- embedding
    def _get_query_embedding(self, query: str) -> Embedding:
        vector: list[float] = self.engine.encode_query(query, show_progress_bar=False).tolist()
        return vector

    def _get_text_embedding(self, text: str) -> Embedding:
        vector: list[float] = self.engine.encode_document(text, show_progress_bar=False).tolist()
        return vector

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        if not texts:
            return []
        vectors = self.engine.encode_document(
            list(texts), show_progress_bar=False
        )
        result: list[Embedding] = vectors.tolist()
        return result

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, list(texts))
