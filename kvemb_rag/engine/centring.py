"""Centring: move the origin of the embedding space to the mean of fixed calibration texts.

A decoder's pooled states share a large common direction: unrelated texts sit at cosines of 0.85 to 0.95,
so the differences that rank passages are a small part of each vector. Centring subtracts the mean unit
vector of :data:`CENTRING_TEXTS` calibration texts (:func:`~kvemb_rag.engine.calibration.default_calibration_texts`
with seed :data:`CENTRING_SEED`, embedded as documents by the same recipe without centring) from every pooled
unit vector before the vectors are combined and normalised. On the dev sets it raised SmolLM2-135M's dev
average by +0.029 [+0.017, +0.043] and left Gemma-3-270M's within noise (docs/method.md, "Centring").

The mean depends only on the weights, the vector settings and the compute dtype, so it is computed once, on
first use, and cached on disk beside the layer selections; the recipe (:func:`centring_recipe`) is part of
the embedder identity, so a collection is never searched with another mean's vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kvemb_rag.engine.calibration import default_calibration_texts

if TYPE_CHECKING:
    import torch

__all__ = [
    "CENTRING_SEED",
    "CENTRING_TEXTS",
    "Centring",
    "calibration_mean",
    "centre",
    "centring_cache_key",
    "centring_recipe",
    "load_cached_mean",
    "save_cached_mean",
]

logger = logging.getLogger(__name__)

#: How many calibration texts the mean is taken over, and their seed (the layer selection uses seed 0).
CENTRING_TEXTS = 256
CENTRING_SEED = 1
#: Bump when the recipe changes: identities recorded with another version then differ.
_RECIPE_VERSION = 1


def centring_recipe() -> dict[str, int]:
    """What the identity records for a centring embedder: how its mean is made."""
    return {"version": _RECIPE_VERSION, "texts": CENTRING_TEXTS, "seed": CENTRING_SEED}


def calibration_mean(embed_documents: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """The mean unit vector of the calibration texts.

    Args:
        embed_documents: Embeds texts as documents, *without* centring, as unit rows ``(n, H)``.

    Returns:
        ``float32`` ``(H,)``.
    """
    texts = default_calibration_texts(CENTRING_TEXTS, seed=CENTRING_SEED)
    vectors = np.asarray(embed_documents(texts), dtype=np.float32)  # (N, H) unit rows
    return vectors.mean(axis=0)  # (H,)


def centre(rows: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Pooled rows as unit vectors less the calibration mean (not re-normalised: the caller combines and normalises).

    Args:
        rows: Pooled vectors ``(U, H)``.
        mean: The calibration mean ``(H,)``.

    Returns:
        ``(U, H)``.
    """
    from torch.nn.functional import normalize  # the engine's dependency; identities are read without torch

    unit = normalize(rows, dim=-1)  # (U, H)
    return unit - mean.to(unit.dtype)  # (U, H)


def centring_cache_key(identity: Mapping[str, Any]) -> str:
    """Hash of what the mean depends on: the uncentred embedder's identity (weights, vector settings, dtype)."""
    payload = {"recipe": centring_recipe(), "identity": {k: v for k, v in identity.items() if k != "centring"}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:40]


def _cache_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / "centring" / f"{key}.npy"


def load_cached_mean(cache_dir: Path, key: str, dim: int) -> np.ndarray | None:
    """A cached mean, or ``None`` when absent or unreadable (then it is recomputed)."""
    path = _cache_file(cache_dir, key)
    if not path.is_file():
        return None
    try:
        mean = np.load(path)
    except (OSError, ValueError) as exc:
        logger.warning("Ignoring unreadable centring cache %s (%s); recomputing.", path, exc)
        return None
    if mean.shape != (dim,) or not np.isfinite(mean).all():
        logger.warning("Ignoring centring cache %s of shape %s (expected (%d,)); recomputing.", path, mean.shape, dim)
        return None
    return mean.astype(np.float32, copy=False)


def save_cached_mean(cache_dir: Path, key: str, mean: np.ndarray) -> Path:
    """Write a mean atomically (temp file + rename) and return its path."""
    path = _cache_file(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{key}.{os.getpid()}.tmp.npy")
    np.save(tmp, mean.astype(np.float32))
    tmp.replace(path)
    return path


class Centring:
    """One embedder's centring: its calibration mean, read from the cache or computed on first use.

    Args:
        cache_dir: kvemb-rag's cache directory.
        identity: Returns the embedder's identity (the cache key; read on first use).
        embed_documents: Returns a function that embeds texts as documents without centring, as unit rows.
    """

    def __init__(
        self,
        cache_dir: Path,
        identity: Callable[[], Mapping[str, Any]],
        embed_documents: Callable[[], Callable[[list[str]], np.ndarray]],
    ) -> None:
        self._cache_dir = cache_dir
        self._identity = identity
        self._embed_documents = embed_documents
        self._mean: np.ndarray | None = None
        self._lock = threading.Lock()  # the server embeds from several threads

    def mean(self, dim: int) -> np.ndarray:
        """The calibration mean ``(H,)``, computed at most once per process and model recipe."""
        with self._lock:
            if self._mean is None:
                key = centring_cache_key(self._identity())
                mean = load_cached_mean(self._cache_dir, key, dim)
                if mean is None:
                    logger.info(
                        "Computing the centring mean over %d calibration texts (once per model)", CENTRING_TEXTS
                    )
                    mean = calibration_mean(self._embed_documents())
                    path = save_cached_mean(self._cache_dir, key, mean)
                    logger.info("Centring mean cached in %s", path)
                self._mean = mean
            return self._mean

    def apply(self, rows: torch.Tensor) -> torch.Tensor:
        """Pooled rows ``(U, H)`` centred: ``unit(row) - mean`` (see :func:`centre`)."""
        from torch import from_numpy

        return centre(rows, from_numpy(self.mean(rows.shape[-1])))  # (U, H)
