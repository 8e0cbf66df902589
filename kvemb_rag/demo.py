"""The project demo (``make demo`` / ``python -m kvemb_rag.demo``).

1. Embeds a few sentences and prints their cosine-similarity matrix.
2. Indexes the project's own documentation (``README.md`` and ``docs/*.md``) into a local store under
   ``.kvemb/demo-store`` (re-runs only embed what changed).
3. Runs three searches over it and prints the ranked chunks.

The model comes from ``$KVEMB_MODEL`` (default ``Qwen/Qwen3-0.6B``); for a quick offline run use the tiny test
model: ``KVEMB_MODEL=../shared/data/models/stories260K/hf python -m kvemb_rag.demo``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from kvemb_rag.cli import default_model, hits_table, model_argument, summary_table
from kvemb_rag.embedder import KVEmbedder
from kvemb_rag.sources import Document
from kvemb_rag.store import EmbedderMismatchError, KVStore

__all__ = ["QUERIES", "SENTENCES", "main", "project_documents"]

logger = logging.getLogger(__name__)

#: Sentences of the similarity matrix: two paraphrase pairs and an unrelated one.
SENTENCES: tuple[str, ...] = (
    "A cat is sleeping on the warm windowsill.",
    "The kitten naps in the sun by the window.",
    "Stock markets fell sharply after the announcement.",
    "Shares dropped on Wall Street following the news.",
    "How do I bake sourdough bread at home?",
)
#: The demo searches over the project documentation.
QUERIES: tuple[str, ...] = (
    "How are the re-routed layers chosen?",
    "What happens to a text longer than max_length?",
    "Which errors does the engine raise for empty strings?",
)
_ROOT = Path(__file__).resolve().parents[1]
_STORE = _ROOT / ".kvemb" / "demo-store"
_COLLECTION = "project-docs"
_SOURCE = "kvemb-rag documentation"


def project_documents(root: Path = _ROOT) -> list[Document]:
    """``README.md`` and ``docs/*.md`` of the project as documents (ids: paths relative to ``root``).

    Raises:
        FileNotFoundError: None of those files exists (e.g. an installed package without its sources).
    """
    paths = [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]
    documents = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        if text.strip():
            rel = path.relative_to(root).as_posix()
            documents.append(Document(rel, text, {"path": rel}, _SOURCE))
    if not documents:
        raise FileNotFoundError(
            f"No README.md or docs/*.md under {root}; run the demo from a source checkout of kvemb-rag."
        )
    return documents


def _similarity_table(embedder: KVEmbedder) -> Table:
    vectors = embedder.encode(list(SENTENCES), show_progress_bar=False)  # (n, dim), unit rows
    sims = vectors @ vectors.T  # (n, n) cosine similarities
    table = Table(title="Cosine similarity of a few sentences", title_justify="left")
    table.add_column("")
    for i in range(len(SENTENCES)):
        table.add_column(f"S{i + 1}", justify="right")
    table.add_column("sentence")
    for i, sentence in enumerate(SENTENCES):
        row = [f"{sims[i, j]:.3f}" for j in range(len(SENTENCES))]
        table.add_row(f"S{i + 1}", *row, sentence)
    off = sims[~np.eye(len(SENTENCES), dtype=bool)]
    table.caption = f"off-diagonal mean {off.mean():.3f}, min {off.min():.3f}, max {off.max():.3f}"
    return table


def main() -> None:
    """Run the demo: similarity matrix, index the docs, three searches."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    model = model_argument(default_model())
    console.print(f"[bold]kvemb-rag demo[/bold] -- model {model}")
    embedder = KVEmbedder(model)
    console.print(repr(embedder))
    console.print(_similarity_table(embedder))

    documents = project_documents()
    with KVStore(_STORE, collection=_COLLECTION, embedder=embedder) as store:
        try:
            summary = store.sync_documents(documents, source=_SOURCE)
        except EmbedderMismatchError as exc:
            # The demo store is disposable: a different model or setting rebuilds it.
            console.print(
                f"Rebuilding the demo store for this embedder ({', '.join(exc.differences)} changed)."
            )
            store.delete_collection()
            summary = store.sync_documents(documents, source=_SOURCE)
        console.print(summary_table(summary, f"{_COLLECTION} ({_STORE.relative_to(_ROOT)})"))
        for query in QUERIES:
            console.print(hits_table(store.query(query, k=3), repr(query)))


if __name__ == "__main__":
    main()
