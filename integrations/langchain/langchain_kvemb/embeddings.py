"""LangChain ``Embeddings`` for kvemb-rag's :class:`~kvemb_rag.KVEmbedder`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field

from kvemb_rag.adapters import EngineSettings, settings_model
from kvemb_rag.engine.models import DEFAULT_MODEL

__all__ = ["DEFAULT_MODEL", "KVEmbeddings"]


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


if TYPE_CHECKING:

    class _Settings(_Base, EngineSettings):  # what type checkers see of the derived fields used below
        model: str

else:
    # One field per engine setting (model, strategy, layers, bias, pooling, device, dtype, max_length,
    # batch_size, templates, selection...), derived from kvemb_rag.engine.config.EmbedderConfig.
    _Settings = settings_model(_Base, "_KVEmbeddingsSettings")


class KVEmbeddings(_Settings, Embeddings):
    """Training-free embeddings from a local decoder-only LLM (KV-Embedding), for LangChain.

    ``embed_documents`` uses the engine's document-side template and ``embed_query`` its query-side
    template; texts longer than ``max_length`` tokens are chunked and combined into one vector by the engine.
    Vectors are unit-length lists of Python floats. Construction only validates the settings: the model
    loads on first use, once per process for all adapters with the same engine settings.

    Every :class:`~kvemb_rag.KVEmbedder` setting is a field (``model``, ``strategy``, ``layers``, ``bias``,
    ``pooling``, ``device``, ``dtype``, ``max_length``, ``batch_size``, ``query_template``,
    ``document_template``, ``selection``...), with the engine's defaults and validation; ``show_progress``
    is this adapter's own.

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

    show_progress: bool = Field(default=False, description="Show a progress bar while embedding.")

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
        vectors = self.engine.encode_document(
            list(texts), show_progress_bar=self.show_progress
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
        vector = self.engine.encode_query(text, show_progress_bar=False)
        result: list[float] = vector.tolist()
        return result

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents`: the forward passes run in a worker thread, not on the event loop."""
        return await asyncio.to_thread(self.embed_documents, list(texts))

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query`: the forward pass runs in a worker thread, not on the event loop."""
        return await asyncio.to_thread(self.embed_query, text)
