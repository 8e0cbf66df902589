"""Indexing rules shared by the ``kvemb index`` command and library users: which embedder, which sources.

* :func:`indexing_embedder` picks the embedder to index with: the collection's own (rebuilt from the
  identity it records) when no model is named, so re-indexing needs no flags; else the named model (or
  :func:`~kvemb_rag.engine.models.default_model`), a local path made absolute by
  :func:`~kvemb_rag.engine.models.resolve_model`.
* :func:`sync_sources` synchronises several sources in one run: each source's stored documents become
  exactly the given ones, except that a source given without any document is left as stored (an empty read,
  e.g. every file skipped, must not wipe it); the store chooses its embedder by the rule above when it has
  none or when a model or engine settings are given; the chunk overlap defaults to the collection's;
  progress is reported over all sources together; Ray actors embed when ``ray`` is given.

Reading files into sources (missing paths, a file reached through two given paths) is
:func:`kvemb_rag.sources.read_paths`; :func:`kvemb_rag.sources.index_paths` reads paths and feeds them to
:func:`sync_sources`: ``kvemb index`` as one call.

Example:
    >>> from kvemb_rag.store import Document, KVStore, sync_sources
    >>> store = KVStore(".kvemb/store")  # doctest: +SKIP
    >>> notes = [Document("a.md", "Cats purr.")]
    >>> sync_sources(store, [("notes", notes)], model="Qwen/Qwen3-0.6B").added  # doctest: +SKIP
    1
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kvemb_rag.engine.models import default_model, resolve_model
from kvemb_rag.errors import ConfigError
from kvemb_rag.store.documents import Document
from kvemb_rag.store.records import IndexProgress, IndexSummary, ProgressCallback

if TYPE_CHECKING:
    from kvemb_rag.engine.embedder import KVEmbedder
    from kvemb_rag.store.distributed import RayIndexConfig
    from kvemb_rag.store.indexing import BulkEmbed
    from kvemb_rag.store.store import KVStore

__all__ = ["embedder_from_identity", "indexing_embedder", "sync_sources"]

logger = logging.getLogger(__name__)


def embedder_from_identity(identity: Mapping[str, Any], **overrides: Any) -> KVEmbedder:
    """:meth:`KVEmbedder.from_identity <kvemb_rag.KVEmbedder.from_identity>`, importing the engine on first use."""
    from kvemb_rag.engine.embedder import KVEmbedder

    return KVEmbedder.from_identity(identity, **overrides)


def indexing_embedder(store: KVStore, model: str | None = None, **overrides: Any) -> KVEmbedder:
    """The embedder to index into ``store``'s collection with (not set on the store).

    Args:
        store: The store; its collection's recorded identity is used when ``model`` is ``None``.
        model: A hub name, local folder, ``.gguf`` file or bundled model. ``None``: the collection's
            embedder when the collection exists and records one, else
            :func:`~kvemb_rag.engine.models.default_model`.
        **overrides: :class:`~kvemb_rag.KVEmbedder` keyword arguments (``strategy``, ``max_length``,
            ``batch_size``, ``device``...). Applied to the collection's embedder too; a ``strategy`` there
            re-selects the layers (``layers="auto"``), since the recorded layers belong to the recorded
            strategy.

    Returns:
        A new embedder. Indexing with it into a collection built with another embedder raises
        :class:`~kvemb_rag.store.EmbedderMismatchError`.
    """
    from kvemb_rag.engine.embedder import KVEmbedder

    stored = store.identity
    if model is None and stored is not None:
        logger.info("Using the collection's embedder: %s", stored.get("model"))
        if "strategy" in overrides:
            overrides = {**overrides, "layers": "auto"}
        return embedder_from_identity(stored, **overrides)
    return KVEmbedder(resolve_model(model or default_model()), **overrides)


def sync_sources(
    store: KVStore,
    sources: Iterable[tuple[str, Iterable[Document]]],
    *,
    model: str | None = None,
    overlap: int | None = None,
    progress: ProgressCallback | None = None,
    ray: RayIndexConfig | None = None,
    **settings: Any,
) -> IndexSummary:
    """Synchronise several sources, in order: each source's stored documents become the given ones.

    A source given without documents is skipped with a warning and its stored documents are kept (an
    empty read is more likely a problem, such as every file being unreadable, than a wish to delete).

    Args:
        store: The store. Its :attr:`~kvemb_rag.store.KVStore.embedder` indexes unless it has none or
            ``model`` / ``settings`` are given: then :func:`indexing_embedder` chooses one, set on the store.
        sources: ``(source label, documents)`` pairs, each as in
            :meth:`~kvemb_rag.store.KVStore.sync_documents`. A document file reached through two sources is
            refused earlier, by :func:`kvemb_rag.sources.read_paths`.
        model: The model to index with, as in :func:`indexing_embedder`.
        overlap: Token overlap between consecutive chunks; default the collection's recorded overlap, else
            the store's :attr:`~kvemb_rag.store.KVStore.overlap`.
        progress: Called with an :class:`~kvemb_rag.store.IndexProgress` counting over all sources
            (``documents_total`` is the documents of every source).
        ray: Embed with a Ray actor pool (:func:`kvemb_rag.store.distributed.ray_sync_documents`); needs the
            ``ray`` extra.
        **settings: :class:`~kvemb_rag.KVEmbedder` keyword arguments, as in :func:`indexing_embedder`.

    Returns:
        The sum of the sources' summaries (``skipped_files`` empty: readers add theirs).

    Raises:
        ConfigError: ``ray`` is given but Ray Data is not installed.
        EmbedderMismatchError: The collection was built with another embedder.
        ValueError: As :meth:`~kvemb_rag.store.KVStore.sync_documents` (duplicate ids, a document of
            another source, a bad ``overlap``...).
    """
    batches = [(source, list(documents)) for source, documents in sources]
    bulk_embed = _ray_bulk_embed(store.collection_name, ray)  # before the model loads: a missing Ray first
    if model is not None or settings or store.embedder is None:
        store.embedder = indexing_embedder(store, model, **settings)
    if overlap is None:
        recorded = store.recorded_overlap
        overlap = store.overlap if recorded is None else recorded
    total = sum(len(documents) for _, documents in batches)
    summary = IndexSummary()
    offset = IndexProgress(0, total, 0, 0, 0, 0)  # where the sources already synchronised left the counts
    for source, documents in batches:
        if not documents:
            logger.warning("No documents from %s; its stored documents are left as they are.", source)
            continue
        latest = [offset]

        def report(event: IndexProgress, base: IndexProgress = offset, latest: list[IndexProgress] = latest) -> None:
            latest[0] = _after(base, event)
            if progress is not None:
                progress(latest[0])

        synced = store.sync_documents(documents, source=source, overlap=overlap, progress=report, bulk_embed=bulk_embed)
        summary = summary + synced
        done = latest[0]  # every chunk this source needed is embedded now
        offset = replace(
            done, documents_done=offset.documents_done + len(documents), chunks_to_embed=done.chunks_embedded
        )
    return summary


def _after(base: IndexProgress, event: IndexProgress) -> IndexProgress:
    """``event`` of one source's run, counted on top of the sources before it (``base``)."""
    return IndexProgress(
        documents_done=base.documents_done + event.documents_done,
        documents_total=base.documents_total,
        chunks_embedded=base.chunks_embedded + event.chunks_embedded,
        chunks_to_embed=base.chunks_embedded + event.chunks_to_embed,
        records_written=base.records_written + event.records_written,
        write_batches=base.write_batches + event.write_batches,
    )


def _ray_bulk_embed(collection: str, config: RayIndexConfig | None) -> BulkEmbed | None:
    """Embedding on Ray actors (:func:`kvemb_rag.store.distributed.ray_bulk_embed`), or ``None`` without ``config``."""
    if config is None:
        return None
    try:
        import ray.data  # noqa: F401

        from kvemb_rag.store.distributed import ray_bulk_embed
    except ImportError as exc:
        raise ConfigError(
            f'Indexing with Ray needs Ray Data ({exc.name} is missing): pip install "kvemb-rag[ray]".'
        ) from exc
    return ray_bulk_embed(collection, config)
