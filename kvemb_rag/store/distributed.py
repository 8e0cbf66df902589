"""Scale-out indexing with Ray Data: an actor pool embeds the chunks, the store writes them as usual.

The driver reads and plans the documents exactly as :meth:`KVStore.sync_documents` does (the same chunking,
record ids, metadata, identity check and resume rules: :func:`kvemb_rag.store.indexing.index_documents`), and
hands the chunks to embed to its ``bulk_embed`` hook; only the embedding moves: the chunks that need a vector
travel as a Ray Dataset through ``map_batches`` on a pool of ``actors`` embedding actors, each of which loads
the engine once (rebuilt from the collection's embedder identity and checked against it), and the vectors
stream back to the driver, which upserts them into the Chroma collection in write batches and deletes a
changed document's old records only once its new ones are all written. So a Ray run and a single-process run
give identical records, a re-run adds nothing, and a killed run re-run ends complete.

Ray connects to ``$RAY_ADDRESS`` (a running cluster) when set; otherwise, unless ``ray.init`` was called
already, a local cluster is started. Needs the ``ray`` extra: ``pip install "kvemb-rag[ray]"``.

Example:
    >>> from kvemb_rag import KVEmbedder
    >>> from kvemb_rag.sources import read_path
    >>> from kvemb_rag.store import KVStore
    >>> from kvemb_rag.store.distributed import RayIndexConfig, ray_sync_documents
    >>> store = KVStore(url="http://127.0.0.1:8000", embedder=KVEmbedder())  # doctest: +SKIP
    >>> read = read_path("docs")  # doctest: +SKIP
    >>> ray_sync_documents(store, read.documents, source=read.source, config=RayIndexConfig(actors=4))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from kvemb_rag.engine.identity import IDENTITY_SETTINGS
from kvemb_rag.errors import ConfigError
from kvemb_rag.store.documents import Document
from kvemb_rag.store.errors import check_same_vectors
from kvemb_rag.store.indexing import BulkEmbed, PendingRecord
from kvemb_rag.store.records import IndexSummary, ProgressCallback

if TYPE_CHECKING:
    from kvemb_rag.engine.embedder import KVEmbedder
    from kvemb_rag.store.store import KVStore

__all__ = ["EmbedActor", "RayIndexConfig", "ray_add_documents", "ray_bulk_embed", "ray_sync_documents"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayIndexConfig:
    """How the Ray actor pool embeds.

    Attributes:
        actors: Embedding actors (each loads the engine once); on GPUs, one per GPU (``num_gpus=1``) or
            several per GPU (``num_gpus=0.5``: two) for small models.
        batch_size: Chunks per ``map_batches`` call of an actor (the engine cuts them into forward passes of
            its own ``batch_size``, sorted by length; the chunks are sent longest first, so one call holds
            chunks of similar length).
        num_cpus: CPUs reserved per actor (Ray also sets the actor's ``OMP_NUM_THREADS`` from it).
        num_gpus: GPUs per actor (0 on CPU-only clusters).
        device: The engine's device in the actors; default ``"cuda"`` when ``num_gpus > 0``, else the
            driver embedder's device.
        show_progress: Ray Data's progress bars on stderr.

    Raises:
        ValueError: A count that is not a positive int, or a negative resource.
    """

    actors: int = 2
    batch_size: int = 64
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    device: str | None = None
    show_progress: bool = False

    def __post_init__(self) -> None:
        for name in ("actors", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"RayIndexConfig.{name} must be an int >= 1; got {value!r}.")
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"RayIndexConfig.{name} must be a number >= 0; got {value!r}.")
        if self.num_cpus == 0 and self.num_gpus == 0:
            raise ConfigError("RayIndexConfig needs num_cpus > 0 or num_gpus > 0 per actor; both are 0.")


class EmbedActor:
    """A Ray Data actor: loads the engine once from an embedder identity and embeds batches of chunks.

    Args:
        identity: The embedder identity the vectors must match (the collection's).
        settings: Other :class:`~kvemb_rag.KVEmbedder` arguments (batch size, cache folder, device...).
        collection: The collection's name, for the error message.

    Raises:
        EmbedderMismatchError: The engine built here differs from ``identity`` (e.g. other weights at that
            path on this node).
    """

    def __init__(self, identity: Mapping[str, Any], settings: Mapping[str, Any], collection: str) -> None:
        from kvemb_rag.engine.embedder import KVEmbedder  # in the actor's process

        self.embedder = KVEmbedder.from_identity(identity, **settings)
        check_same_vectors(collection, identity, self.embedder.identity)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Embed ``batch["text"]`` with the document template; returns its rows and their vectors."""
        vectors = self.embedder.encode_document(
            [str(t) for t in batch["text"]], show_progress_bar=False, overflow="error"
        )  # (n, dim) float32, unit rows
        return {"row": np.asarray(batch["row"]), "embedding": vectors}


def _actor_settings(embedder: KVEmbedder, config: RayIndexConfig) -> dict[str, Any]:
    """The driver engine's settings the identity does not carry (batching, cache, loading), for the actors."""
    settings = {name: value for name, value in embedder.config.settings().items() if name not in IDENTITY_SETTINGS}
    device = config.device or ("cuda" if config.num_gpus > 0 else str(embedder.device))
    return {**settings, "device": device, "show_progress_bar": False}


def ray_bulk_embed(collection: str, config: RayIndexConfig) -> BulkEmbed:
    """A :data:`~kvemb_rag.store.indexing.BulkEmbed` that runs the chunks through a Ray actor pool.

    Args:
        collection: The collection's name, for the actors' error message.
        config: The actor pool.

    Returns:
        The ``bulk_embed`` to give :meth:`KVStore.add_documents` or :meth:`KVStore.sync_documents`.
    """

    def embed(embedder: KVEmbedder, todo: list[PendingRecord]) -> Iterator[list[PendingRecord]]:
        if not todo:
            return
        import ray
        import ray.data

        if not ray.is_initialized():
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = config.show_progress
        # Longest first: one actor call holds chunks of similar length, so its forward passes pad little.
        order = sorted(range(len(todo)), key=lambda i: -len(todo[i].text))
        blocks = max(config.actors, math.ceil(len(todo) / config.batch_size))
        dataset = ray.data.from_items(
            [{"row": i, "text": todo[i].text} for i in order], override_num_blocks=min(blocks, len(todo))
        )
        embedded = dataset.map_batches(
            EmbedActor,
            fn_constructor_kwargs={
                "identity": embedder.identity,
                "settings": _actor_settings(embedder, config),
                "collection": collection,
            },
            batch_size=config.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=config.actors),
            num_cpus=config.num_cpus,
            num_gpus=config.num_gpus,
        )
        logger.info("Embedding %d chunks on %d Ray actor(s)", len(todo), config.actors)
        for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
            done = []
            for row, vector in zip(batch["row"], batch["embedding"], strict=True):
                pending = todo[int(row)]
                pending.embedding = np.asarray(vector, dtype=np.float32).tolist()
                done.append(pending)
            yield done

    return embed


def ray_add_documents(
    store: KVStore,
    documents: Iterable[Document],
    *,
    config: RayIndexConfig | None = None,
    overlap: int | None = None,
    progress: ProgressCallback | None = None,
) -> IndexSummary:
    """:meth:`KVStore.add_documents`, with the chunks embedded by a Ray actor pool.

    Args:
        store: The store; its :attr:`~KVStore.embedder` plans the chunks and defines the identity the actors
            rebuild.
        documents: The documents.
        config: The actor pool; default :class:`RayIndexConfig()`.
        overlap: As in :meth:`KVStore.add_documents`.
        progress: As in :meth:`KVStore.add_documents` (called as records are written).

    Returns:
        The run's summary (the same counts a single-process run gives).
    """
    bulk = ray_bulk_embed(store.collection_name, config or RayIndexConfig())
    return store.add_documents(documents, overlap=overlap, progress=progress, bulk_embed=bulk)


def ray_sync_documents(
    store: KVStore,
    documents: Iterable[Document],
    *,
    source: str,
    config: RayIndexConfig | None = None,
    overlap: int | None = None,
    progress: ProgressCallback | None = None,
) -> IndexSummary:
    """:meth:`KVStore.sync_documents`, with the chunks embedded by a Ray actor pool.

    Args:
        store: As in :func:`ray_add_documents`.
        documents: The full current set of documents of ``source``.
        source: The source label (e.g. an indexed folder).
        config: The actor pool; default :class:`RayIndexConfig()`.
        overlap: As in :meth:`KVStore.sync_documents`.
        progress: As in :meth:`KVStore.sync_documents`.

    Returns:
        The run's summary, ``removed`` counting the documents that vanished from ``source``.
    """
    bulk = ray_bulk_embed(store.collection_name, config or RayIndexConfig())
    return store.sync_documents(documents, source=source, overlap=overlap, progress=progress, bulk_embed=bulk)
