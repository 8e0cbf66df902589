"""The store's errors. The identity rules they enforce live in :mod:`kvemb_rag.engine.identity`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kvemb_rag.engine.identity import identity_differences, precision_differences
from kvemb_rag.errors import KVEmbError

logger = logging.getLogger(__name__)

__all__ = [
    "CollectionNotFoundError",
    "EmbedderMismatchError",
    "IncompatibleCollectionError",
    "KVStoreError",
    "check_same_vectors",
    "identity_differences",
]


class KVStoreError(KVEmbError):
    """Base class of the store's user-facing errors."""


class CollectionNotFoundError(KVStoreError, LookupError):
    """The collection does not exist (nothing was indexed into it yet)."""


class IncompatibleCollectionError(KVStoreError, ValueError):
    """The collection was not made by kvemb-rag (no embedder identity) or does not use the cosine space."""


class EmbedderMismatchError(KVStoreError, ValueError):
    """The embedder differs from the one that built the collection, so its vectors are not comparable.

    Attributes:
        stored: The identity recorded in the collection.
        current: The identity of the embedder that was given.
        differences: ``{key: (stored value, current value)}`` for every differing key.
    """

    def __init__(self, collection: str, stored: Mapping[str, Any], current: Mapping[str, Any]) -> None:
        self.collection = collection
        self.stored = dict(stored)
        self.current = dict(current)
        self.differences = identity_differences(stored, current)
        lines = "\n".join(
            f"  {key}: collection has {old!r}, embedder has {new!r}" for key, (old, new) in self.differences.items()
        )
        super().__init__(
            f"Collection {collection!r} was built with a different embedder; its vectors are not comparable "
            f"with this one's:\n{lines}\nUse the same settings as the collection (e.g. "
            f"KVStore(...).load_embedder() or `kvemb index` without overriding them), or index into a new "
            "collection."
        )


def check_same_vectors(collection: str, stored: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Refuse an embedder whose vectors are not comparable with the collection's; log a precision difference.

    Raises:
        EmbedderMismatchError: The identities differ in anything but precision (the dtype).
    """
    if identity_differences(stored, current):
        raise EmbedderMismatchError(collection, stored, current)
    for key, (built, now) in precision_differences(stored, current).items():
        logger.info(
            "Collection %r was built with %s=%s; this engine computes in %s. The vectors agree to rounding "
            '(docs/method.md, "Precision and speed"), so it is searched and extended as is.',
            collection,
            key,
            built,
            now,
        )
