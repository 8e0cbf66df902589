"""The project's own exception types: every error kvemb-rag raises on purpose derives from :class:`KVEmbError`.

Each also keeps the built-in base its callers already catch (``ValueError`` for a bad setting or input,
``OSError`` for a model that cannot be read, ``LookupError`` for a missing collection), so
``except ValueError`` keeps working. The ``kvemb`` command line prints these as a one-line message; any
other exception is a bug and is shown with its traceback.

Example:
    >>> from kvemb_rag import KVEmbError, KVEmbedder
    >>> try:
    ...     KVEmbedder(strategy="nope")
    ... except KVEmbError as exc:
    ...     print(type(exc).__name__)
    ConfigError
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataNotFoundError",
    "InputError",
    "KVEmbError",
    "ModelLoadError",
    "ModelNotFoundError",
    "UnsupportedModelError",
]


class KVEmbError(Exception):
    """Base class of every error kvemb-rag raises on purpose (bad settings or input, unreadable models...)."""


class ConfigError(KVEmbError, ValueError):
    """A setting or argument is not valid; the message names the value given and the valid ones."""


class InputError(KVEmbError, ValueError):
    """A text or document given to embed or index cannot be used (empty, too long with ``overflow="error"``)."""


class ModelLoadError(KVEmbError, OSError):
    """A model cannot be found or read (missing folder or file, unknown bundled name, unreadable weights)."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """A model path that does not exist, or a bundled model whose package is not installed."""


class UnsupportedModelError(KVEmbError, ValueError):
    """A model KV-Embedding cannot run on: an encoder, an unverified or unroutable architecture, a slow tokenizer."""


class DataNotFoundError(KVEmbError, FileNotFoundError):
    """A data file or folder the call reads (a dataset, the documents to index) does not exist."""
