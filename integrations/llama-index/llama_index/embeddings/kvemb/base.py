"""LlamaIndex ``BaseEmbedding`` for kvemb-rag's :class:`~kvemb_rag.KVEmbedder`."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, model_validator
from llama_index.core.node_parser import SentenceSplitter
from pydantic import NonNegativeInt
from typing_extensions import Self

from kvemb_rag import KVEmbedder
from kvemb_rag.engine.config import validate_settings
from kvemb_rag.engine.models import DEFAULT_MODEL, default_model
from kvemb_rag.engine.shared import shared_embedder

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


class KVEmbedding(BaseEmbedding):
    """Training-free embeddings from a local decoder-only LLM (KV-Embedding), for LlamaIndex.

    Queries (``get_query_embedding``) use the engine's query-side template; nodes and documents
    (``get_text_embedding`` and its batch form) the document-side template. Texts longer than
    ``max_length`` tokens are chunked and combined by the engine; :meth:`node_parser` gives a splitter
    whose nodes fit without that. The model loads on first use, once per process for all adapters with
    the same engine settings.

    Example:
        >>> from llama_index.embeddings.kvemb import KVEmbedding
        >>> embed_model = KVEmbedding()  # the bundled default model; nothing is loaded yet
        >>> splitter = embed_model.node_parser(chunk_overlap=32)  # doctest: +SKIP
        >>> vector = embed_model.get_query_embedding("Which animal purrs?")  # doctest: +SKIP
    """

    model_name: str = Field(
        default_factory=default_model,
        description="Hub name, local folder, .gguf file or bundled model name of a decoder-only LLM; default "
        "$KVEMB_MODEL, else "
        f"{DEFAULT_MODEL!r}.",
    )
    embed_batch_size: int = Field(default=16, gt=0, le=2048, description="Texts per forward pass.")
    strategy: Literal["kv", "kv-ablation", "last", "mean", "prompteol", "echo"] = Field(
        default="kv", description='Embedding strategy; "kv" is KV-Embedding, the others are its baselines.'
    )
    layers: Literal["auto"] | list[NonNegativeInt] = Field(
        default="auto", description='"auto" (intrinsic-dimension selection) or 0-based layers to re-route.'
    )
    device: str | None = Field(
        default=None, description='"cpu", "cuda", "cuda:1"...; default CUDA when available, else CPU.'
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        default=None, description="Compute dtype; default bfloat16 on CUDA, float32 on CPU."
    )
    max_length: int | None = Field(
        default=None,
        ge=8,
        description="Tokens per forward pass, template included; default 4096 or the model's context size.",
    )
    query_template: str | None = Field(
        default=None, description="Query-side template containing {text}; default the strategy's."
    )
    document_template: str | None = Field(
        default=None, description="Document-side template containing {text}; default the strategy's."
    )
    cache_dir: str | None = Field(
        default=None, description="Layer-selection cache; default $KVEMB_CACHE_DIR or ~/.cache/kvemb-rag."
    )

    # (settings key, engine): the engine is built lazily and rebuilt if a setting is reassigned.

    @model_validator(mode="after")
    def _check_engine_settings(self) -> Self:
        # The engine's own validation, without loading anything: bad templates or an empty model fail here.
        validate_settings(self.model_name, batch_size=self.embed_batch_size, **self._engine_settings())
        return self

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex serialisation."""
        return "KVEmbedding"

    # ------------------------------------------------------------------------------------ engine
    def _engine_settings(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "layers": self.layers,
            "device": self.device,
            "dtype": self.dtype,
            "max_length": self.max_length,
            "query_template": self.query_template,
            "document_template": self.document_template,
            "cache_dir": self.cache_dir,
        }

    @property
    def _engine(self) -> KVEmbedder:
        """The engine for the current settings, loaded on first use and shared across the process."""
        return shared_embedder(self.model_name, **self._engine_settings())

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` with the document template applied, as the engine will see it."""
        return self._engine.count_tokens(text, "document")

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
                f"{self.model_name!r} hold at most {limit} tokens (max_length={self._engine.max_length}). "
                f"Use chunk_size <= {limit} or raise max_length."
            )
        if not 0 <= chunk_overlap < size:
            raise ValueError(f"chunk_overlap={chunk_overlap} must be >= 0 and below chunk_size={size}.")
        tokenizer = _TokenIds(self._engine.tokenizer)
        return SentenceSplitter(chunk_size=size, chunk_overlap=chunk_overlap, tokenizer=tokenizer, **kwargs)

    def max_node_tokens(self) -> int:
        """Largest node size (tokens, no template) that :meth:`node_parser` allows."""
        engine = self._engine
        budget = engine.max_length - engine.count_tokens("", "document")
        return budget - max(_MIN_MARGIN, int(budget * _MARGIN_FRACTION))

    # ---------------------------------------------------------------------------------- embedding
    def _get_query_embedding(self, query: str) -> Embedding:
        vector: list[float] = self._engine.encode_query(query, show_progress_bar=False).tolist()
        return vector

    def _get_text_embedding(self, text: str) -> Embedding:
        vector: list[float] = self._engine.encode_document(text, show_progress_bar=False).tolist()
        return vector

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        if not texts:
            return []
        vectors = self._engine.encode_document(
            list(texts), batch_size=self.embed_batch_size, show_progress_bar=False
        )
        result: list[Embedding] = vectors.tolist()
        return result

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, list(texts))
