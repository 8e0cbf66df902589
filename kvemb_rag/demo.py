"""The project demo (``make demo`` / ``python -m kvemb_rag.demo``): offline RAG with one loaded model.

1. Loads the LLM once (:func:`~kvemb_rag.engine.loader.load_causal_lm`) and builds the embedder on the same
   weights (:meth:`KVEmbedder.from_model <kvemb_rag.KVEmbedder.from_model>`).
2. Embeds a few sentences and prints their cosine-similarity matrix.
3. Indexes the project's own documentation (``README.md`` and ``docs/*.md``) into a local store under
   ``.kvemb/demo-store`` (re-runs only embed what changed).
4. Runs three searches over it and prints the ranked chunks.
5. Answers a question with the same model from the retrieved chunks, citing them.

The store goes to ``$KVEMB_DEMO_STORE`` when set. The model is ``$KVEMB_MODEL``, else the bundled default
(:data:`kvemb_rag.engine.models.DEFAULT_MODEL`, installed from the package index: no hub access needed).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from kvemb_rag.engine.embedder import KVEmbedder
from kvemb_rag.engine.loader import load_causal_lm
from kvemb_rag.engine.models import default_model
from kvemb_rag.errors import DataNotFoundError
from kvemb_rag.store import Document, EmbedderMismatchError, Hit, KVStore, resolve_model
from kvemb_rag.tables import hits_table, summary_table

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["QUERIES", "QUESTION", "SENTENCES", "answer", "main", "project_documents"]

logger = logging.getLogger(__name__)

#: Sentences of the similarity matrix: two paraphrase pairs and an unrelated one.
SENTENCES: tuple[str, ...] = (
    "A cat is sleeping on the warm windowsill.",
    "The kitten naps in the sun by the window.",
    "Stock markets fell sharply after the announcement.",
    "Shares dropped on Wall Street following the news.",
    "How do I bake sourdough bread at home?",
)
#: The demo searches over the project documentation. With the 135M-parameter default model, these are
#: questions whose answering passage it ranks in the top 3 (of 16 natural questions about the docs, probed
#: with the default settings, it manages that for 6; bigger models do better: KVEMB_MODEL=...).
QUERIES: tuple[str, ...] = (
    "What does the API key option do?",
    "How do I start an OpenAI-compatible embedding server?",
    "How are the re-routed layers chosen?",
)
#: The question answered from the retrieved chunks by the same model.
QUESTION = QUERIES[0]
_ANSWER_TOKENS = 96
_ROOT = Path(__file__).resolve().parents[1]
_STORE = Path(os.environ.get("KVEMB_DEMO_STORE") or _ROOT / ".kvemb" / "demo-store")
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
        raise DataNotFoundError(
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


def answer(
    llm: PreTrainedModel, tokenizer: Any, question: str, hits: Sequence[Hit], max_new_tokens: int = _ANSWER_TOKENS
) -> str:
    """Answer ``question`` from the retrieved chunks with the LLM (greedy), asking it to cite them as [n].

    The passages are numbered as the caller lists them, so the caller can print the sources the numbers
    refer to. A small model's answer need not be faithful to the passages; the sources are the evidence.
    """
    context = "\n\n".join(f"[{i}] {' '.join(hit.text.split())}" for i, hit in enumerate(hits, start=1))
    instruction = "You answer questions from the given passages and cite them as [1], [2]."
    request = f"Passages:\n{context}\n\nQuestion: {question}\nAnswer briefly, citing the passages."
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": instruction}, {"role": "user", "content": request}]
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:
        inputs = tokenizer(f"{instruction}\n\n{request}\nAnswer:", return_tensors="pt")
    inputs = {k: v.to(llm.device) for k, v in inputs.items()}
    output = llm.generate(  # type: ignore[operator]
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        repetition_penalty=1.2,  # greedy decoding of a small model loops without it
        pad_token_id=tokenizer.eos_token_id,
    )
    return str(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)).strip()


def main() -> None:
    """Run the demo: one model for embedding and generation, similarity matrix, index, searches, answer."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    model = resolve_model(default_model())
    console.print(f"[bold]kvemb-rag demo[/bold] -- model {model}")
    llm, tokenizer = load_causal_lm(model)
    embedder = KVEmbedder.from_model(llm, tokenizer)  # the same weights embed and generate
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
        console.print(summary_table(summary, f"{_COLLECTION} ({_STORE})"))
        for query in QUERIES:
            console.print(hits_table(store.query(query, k=3), repr(query)))
        hits = store.query(QUESTION, k=3)
    console.print(f"[bold]Question:[/bold] {QUESTION}")
    console.print(f"[bold]Answer[/bold] ({model}, from the chunks above):", answer(llm, tokenizer, QUESTION, hits))
    console.print("Sources:")
    for i, hit in enumerate(hits, start=1):
        console.print(f"  [{i}] {hit.doc_id} characters {hit.start}-{hit.end} (score {hit.score:.3f})")


if __name__ == "__main__":
    main()
