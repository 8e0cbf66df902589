"""LangChain ``Embeddings`` for kvemb-rag's :class:`~kvemb_rag.KVEmbedder`."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, model_validator
from typing_extensions import Self

from kvemb_rag import KVEmbedder
from kvemb_rag.engine.config import validate_settings
from kvemb_rag.engine.models import DEFAULT_MODEL, default_model
from kvemb_rag.engine.shared import shared_embedder

__all__ = ["DEFAULT_MODEL", "KVEmbeddings"]



class KVEmbeddings(BaseModel, Embeddings):
    """Training-free embeddings from a local decoder-only LLM (KV-Embedding), for LangChain.

    ``embed_documents`` uses the engine's document-side template and ``embed_query`` its query-side
    template; texts longer than ``max_length`` tokens are chunked and combined into one vector by the engine.
    Vectors are unit-length lists of Python floats. Construction only validates the settings: the model
    loads on first use, once per process for all adapters with the same engine settings.

    Setting up the model (weights are read from the Hugging Face cache or a local directory)::

        pip install -e integrations/langchain

    Example:
        >>> from langchain_kvemb import KVEmbeddings
        >>> embeddings = KVEmbeddings()  # the bundled default model; nothing is loaded yet
        >>> vectors = embeddings.embed_documents(["Cats purr.", "Stocks fell."])  # doctest: +SKIP
        >>> query = embeddings.embed_query("Which animal purrs?")  # doctest: +SKIP
        >>> len(query) == len(vectors[0])  # doctest: +SKIP
        True
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(
        default_factory=default_model,
        description="Hub name, local folder, .gguf file or bundled model name of a decoder-only LLM; default "
        "$KVEMB_MODEL, else "
        f"{DEFAULT_MODEL!r}.",
    )
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
    batch_size: int = Field(default=16, ge=1, description="Texts per forward pass.")
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
    show_progress: bool = Field(default=False, description="Show a progress bar while embedding.")
    cache_dir: str | None = Field(
        default=None, description="Layer-selection cache; default $KVEMB_CACHE_DIR or ~/.cache/kvemb-rag."
    )


    @model_validator(mode="after")
    def _check_engine_settings(self) -> Self:
        # The engine's own validation, without loading anything: bad templates or an empty model fail here.
        validate_settings(self.model, batch_size=self.batch_size, **self._engine_settings())
        return self

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
        return shared_embedder(self.model, **self._engine_settings())

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents with the document-side template.

        Args:
            texts: Non-empty strings; long ones are chunked and combined by the engine.

        Returns:
            One unit-length vector (list of floats) per text, in order.

        Raises:
            TypeError: A non-string item (its index is named).
            ValueError: An empty or whitespace-only text (its index is named).
        """
        if not texts:
            return []
        vectors = self._engine.encode_document(
            list(texts), batch_size=self.batch_size, show_progress_bar=self.show_progress
        )
        result: list[list[float]] = vectors.tolist()
        return result

    def embed_query(self, text: str) -> list[float]:
        """Embed a search query with the query-side template.

        Args:
            text: The query (a non-empty string).

        Returns:
            A unit-length vector (list of floats).

        Raises:
            TypeError: ``text`` is not a string.
            ValueError: ``text`` is empty or whitespace-only.
        """
        if not isinstance(text, str):
            raise TypeError(f"embed_query expects a str, got {type(text).__name__}: {text!r:.80}.")
        vector = self._engine.encode_query(text, batch_size=self.batch_size, show_progress_bar=False)
        result: list[float] = vector.tolist()
        return result

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents`: the forward passes run in a worker thread, not on the event loop."""
        return await asyncio.to_thread(self.embed_documents, list(texts))

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query`: the forward pass runs in a worker thread, not on the event loop."""
        return await asyncio.to_thread(self.embed_query, text)
