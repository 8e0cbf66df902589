"""LangChain integration of kvemb-rag.

:class:`KVEmbeddings`: training-free embeddings from a local LLM; :class:`KVRetriever`: hybrid, dense or
lexical search over a :class:`kvemb_rag.store.KVStore`.
"""

from __future__ import annotations

from importlib import metadata

from langchain_kvemb.embeddings import DEFAULT_MODEL, KVEmbeddings
from langchain_kvemb.retrievers import KVRetriever

__all__ = ["DEFAULT_MODEL", "KVEmbeddings", "KVRetriever", "__version__"]

try:
    __version__ = metadata.version("langchain-kvemb")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = ""
