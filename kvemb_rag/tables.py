"""Rich tables of the store's results, shared by the ``kvemb`` command line and the demo.

Example:
    >>> from rich.console import Console
    >>> from kvemb_rag.store import IndexSummary
    >>> Console().print(summary_table(IndexSummary(documents=2, added=2), "notes"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from kvemb_rag.store import CollectionInfo, Hit, IndexSummary

__all__ = ["collection_table", "hits_table", "layers_table", "summary_table"]

_SNIPPET_CHARS = 160


def summary_table(summary: IndexSummary, collection: str) -> Table:
    """A table of an indexing run's summary (documents, chunks, what changed, time)."""
    table = Table(title=f"Indexed into {collection!r}", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    for label, value in (
        ("documents", summary.documents),
        ("chunks", summary.chunks),
        ("added", summary.added),
        ("unchanged", summary.unchanged),
        ("replaced", summary.replaced),
        ("removed", summary.removed),
        ("skipped files", len(summary.skipped_files)),
        ("chunks embedded", summary.chunks_embedded),
        ("time", f"{summary.seconds:.1f} s"),
    ):
        table.add_row(label, str(value))
    return table


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _SNIPPET_CHARS else flat[: _SNIPPET_CHARS - 1] + "…"


def hits_table(hits: Sequence[Hit], title: str) -> Table:
    """A table of search hits (rank, score, document and source, span, snippet)."""
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("document")
    table.add_column("span")
    table.add_column("snippet", overflow="fold")
    for rank, hit in enumerate(hits, start=1):
        span = f"{hit.start}-{hit.end} (chunk {hit.chunk_index})"
        # Ids repeat across sources (two folders' README.md): the source tells them apart.
        document = escape(hit.doc_id)
        if hit.source is not None:
            document += f"\n[dim]{escape(hit.source)}[/dim]"
        table.add_row(str(rank), f"{hit.score:.3f}", document, span, escape(_snippet(hit.text)))
    return table


def collection_table(info: CollectionInfo) -> Table:
    """A table of a collection's size, distance space and recorded embedder identity."""
    table = Table(title=f"Collection {info.name!r}", show_header=False, title_justify="left")
    table.add_column("key")
    table.add_column("value", overflow="fold")
    table.add_row("records (chunks)", str(info.records))
    table.add_row("documents", str(info.documents))
    table.add_row("space", str(info.space))
    for key, value in (info.identity or {"identity": "(none: not a kvemb-rag collection)"}).items():
        table.add_row(key, json.dumps(value) if not isinstance(value, str) else value)
    return table


def layers_table(
    curve: Sequence[float], chosen: Sequence[int], id_window: Sequence[int], skipped: int, fraction: float, model: str
) -> Table:
    """A table of the intrinsic dimension per layer, marking the re-routed, ID-window and ignored layers.

    Args:
        curve: The intrinsic dimension at each layer (NaN where undefined).
        chosen: The layers KV-Embedding re-routes.
        id_window: The ID-minimum window of layers.
        skipped: The first layers the ID rule ignores.
        fraction: The share of layers that ``skipped`` stands for.
        model: The model name, for the title.
    """
    table = Table(title=f"Intrinsic dimension per layer: {model}", title_justify="left")
    table.add_column("layer", justify="right")
    table.add_column("ID", justify="right")
    table.add_column("")
    for i, value in enumerate(curve):
        notes = ["re-routed"] if i in chosen else []
        notes += ["ID-minimum window"] if i in id_window else []
        notes += [f"ignored by the ID rule (first {fraction:.0%})"] if i < skipped else []
        table.add_row(str(i), "nan" if math.isnan(value) else f"{value:.2f}", ", ".join(notes))
    return table
