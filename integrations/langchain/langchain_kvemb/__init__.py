"""LangChain integration of kvemb-rag: :class:`KVEmbeddings`, training-free embeddings from a local LLM."""

from __future__ import annotations

from importlib import metadata

from langchain_kvemb.embeddings import DEFAULT_MODEL, KVEmbeddings

__all__ = ["DEFAULT_MODEL", "KVEmbeddings", "__version__"]

try:
    __version__ = metadata.version("langchain-kvemb")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = ""
