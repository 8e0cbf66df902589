"""Probe: does the demo's search put the passage that answers a new user's question in the top 3?

Natural questions a new user would ask about this project's documentation (``README.md`` and ``docs/*.md``),
each with an ``answer_marker``: a short phrase of the passage that answers it (the key fact, so that every
passage that answers holds it: ``128 tokens`` for the chunk size, the package name for an integration). The
documentation is indexed exactly as ``make demo`` indexes it (:func:`kvemb_rag.demo.project_documents`, the
same collection, source, and an embedder built with ``KVEmbedder.from_model`` on the loaded model), into a
temporary store unless ``--store`` names one to reuse. For every question and search mode, the top 3
chunks (``k=3``, ``per_document=False``, as the demo's searches) count as a success when one of them holds
the marker: its text contains it, or its character span overlaps an occurrence of the marker in its
document (a marker cut by a chunk boundary). The demo's own searches are probed too.

Markers match case-insensitively, and a space in a marker matches any run of whitespace (the docs are
hard-wrapped). A marker that no longer occurs in the docs (they change) is reported, and its question is
left out of the counts.

    python -m benchmarks.demo_questions [--model gemma-3-270m] [--modes hybrid,dense,lexical]
        [--store DIR] [--out benchmarks/demo_questions.json]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvemb_rag import KVEmbedder
    from kvemb_rag.store import Document, Hit

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "demo_questions.json"
K = 3


@dataclass(frozen=True)
class Question:
    """A question about the docs and a phrase of the passage that answers it.

    Attributes:
        question: The question, as a new user would type it.
        answer_marker: A short phrase of the answering passage (case-insensitive; spaces match any whitespace).
    """

    question: str
    answer_marker: str


#: Markers of the demo's own searches (``kvemb_rag.demo.QUERIES``).
DEMO_MARKERS: dict[str, str] = {
    "What does the API key option do?": "gets 401",
    "How do I start an OpenAI-compatible embedding server?": "kvemb serve",
    "How do I use a GGUF file I already have?": "path/to/model.gguf",
}


def demo_questions() -> tuple[Question, ...]:
    """The demo's searches with their markers.

    Raises:
        KeyError: A query of the demo has no marker here (the demo's queries changed).
    """
    from kvemb_rag.demo import QUERIES

    return tuple(Question(query, DEMO_MARKERS[query]) for query in QUERIES)


#: Natural questions of a new user, each answered by one passage of the docs.
QUESTIONS: tuple[Question, ...] = (
    Question("How do I start the server?", "kvemb serve"),
    Question("How are the layers chosen?", "re-routes a window of"),
    Question("What chunk size does the store use?", "128 tokens"),
    Question("Why were chunks of 128 tokens chosen?", "128-token chunks beat"),
    Question("How do I use a GGUF file I already have?", "path/to/model.gguf"),
    Question("How are long documents handled?", "weighted mean of"),
    Question("How do I use it with LangChain?", "KVEmbeddings"),
    Question("How do I use it with LlamaIndex?", "llama-index-embeddings-kvemb"),
    Question("Which model is used by default?", "Gemma-3-270M"),
    Question("How do I use a different model?", "Another model is one variable away"),
    Question("What pooling does the embedding use?", "h_last + mean(h)"),
    Question("What prompt template is used?", "means in one word"),
    Question("Which file types can I index?", "`.txt`, `.md` and `.jsonl`"),
    Question("What happens if I search with a different model than the one I indexed with?",
             "different embedder is refused"),
    Question("How do I use a Chroma server instead of a local folder?", "reaches a Chroma server instead"),
    Question("Which model architectures are supported?", "verified: llama, mistral"),
    Question("How do I evaluate a model on benchmarks?", "kvemb eval"),
    Question("Does it run on a GPU?", "bfloat16 where the hardware computes it natively"),
)


def marker_pattern(marker: str) -> re.Pattern[str]:
    """The marker as a case-insensitive pattern in which each space matches any run of whitespace."""
    return re.compile(r"\s+".join(re.escape(word) for word in marker.split()), re.IGNORECASE)


def marker_spans(documents: Iterable[Document], marker: str) -> dict[tuple[str | None, str], list[tuple[int, int]]]:
    """``(source, doc_id)`` -> the character spans of the marker's occurrences in that document."""
    pattern = marker_pattern(marker)
    spans: dict[tuple[str | None, str], list[tuple[int, int]]] = {}
    for document in documents:
        found = [(m.start(), m.end()) for m in pattern.finditer(document.text)]
        if found:
            spans[(document.source, document.id)] = found
    return spans


def hit_has_marker(hit: Hit, marker: str, spans: Mapping[tuple[str | None, str], Sequence[tuple[int, int]]]) -> bool:
    """Whether the hit holds the marker: in its text, or its span overlaps an occurrence in its document."""
    if marker_pattern(marker).search(hit.text):
        return True
    return any(hit.start < end and start < hit.end for start, end in spans.get((hit.source, hit.doc_id), ()))


def demo_store(store_dir: Path, embedder: KVEmbedder, documents: Sequence[Document]) -> Any:
    """The demo's store over ``documents`` in ``store_dir``, synced as ``make demo`` syncs it (open; close it)."""
    from kvemb_rag.demo import _COLLECTION, _SOURCE
    from kvemb_rag.store import EmbedderMismatchError, KVStore

    store = KVStore(store_dir, collection=_COLLECTION, embedder=embedder)
    try:
        summary = store.sync_documents(documents, source=_SOURCE)
    except EmbedderMismatchError:
        store.delete_collection()
        summary = store.sync_documents(documents, source=_SOURCE)
    print(f"store {store_dir}: {summary.chunks} chunks, {summary.seconds:.1f} s to sync", flush=True)
    return store


def load_demo_embedder(model: str) -> tuple[Any, Any, KVEmbedder]:
    """``(llm, tokenizer, embedder)`` as the demo builds them: one loaded model, the embedder on its weights."""
    from kvemb_rag import KVEmbedder
    from kvemb_rag.engine.loader import load_causal_lm
    from kvemb_rag.engine.models import resolve_model

    llm, tokenizer = load_causal_lm(resolve_model(model))
    return llm, tokenizer, KVEmbedder.from_model(llm, tokenizer)


def probe(
    store: Any, documents: Sequence[Document], questions: Sequence[Question], modes: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per question: its marker's occurrences and, per mode, the top 3 hits and whether one holds it."""
    rows = []
    for item in questions:
        spans = marker_spans(documents, item.answer_marker)
        row: dict[str, Any] = {**asdict(item), "marker_in_docs": sum(len(s) for s in spans.values()), "modes": {}}
        for mode in modes:
            hits = store.query(item.question, k=K, per_document=False, mode=mode)
            ranks = [rank for rank, hit in enumerate(hits, start=1) if hit_has_marker(hit, item.answer_marker, spans)]
            row["modes"][mode] = {
                "found": bool(ranks) and row["marker_in_docs"] > 0,
                "rank": ranks[0] if ranks else None,
                "hits": [[hit.doc_id, hit.start, hit.end, round(hit.score, 4)] for hit in hits],
            }
        rows.append(row)
    return rows


def summarise(rows: Sequence[Mapping[str, Any]], modes: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per mode: questions whose marker is in the docs (``asked``) and those found in the top 3."""
    asked = [row for row in rows if row["marker_in_docs"] > 0]
    return {mode: {"found": sum(row["modes"][mode]["found"] for row in asked), "asked": len(asked)} for mode in modes}


def print_table(title: str, rows: Sequence[Mapping[str, Any]], modes: Sequence[str]) -> None:
    """A plain-text table: one line per question, the rank of the answering chunk per mode (- = not in top 3)."""
    width = max(len(row["question"]) for row in rows)
    print(f"\n{title}")
    print(f"{'question':<{width}}  " + "  ".join(f"{mode:>7}" for mode in modes))
    for row in rows:
        cells = []
        for mode in modes:
            rank = row["modes"][mode]["rank"]
            cells.append(f"{'(gone)' if not row['marker_in_docs'] else (rank or '-')!s:>7}")
        print(f"{row['question']:<{width}}  " + "  ".join(cells))
    summary = summarise(rows, modes)
    counts = [f"{summary[m]['found']:>3} / {summary[m]['asked']:<2}" for m in modes]
    print(f"{'in the top 3':<{width}}  " + "  ".join(counts))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the probe; print the tables and write the JSON results."""
    from kvemb_rag.demo import project_documents
    from kvemb_rag.engine.models import default_model
    from kvemb_rag.store import DEFAULT_FUSION, DEFAULT_MODE, SEARCH_MODES
    from kvemb_rag.store.lexical import LEXICAL_SETTINGS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=default_model(), help="model (default: the demo's)")
    parser.add_argument("--modes", default=",".join(SEARCH_MODES), help="comma-separated search modes")
    parser.add_argument("--store", type=Path, help="store folder to (re)use (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]

    began = time.perf_counter()
    documents = project_documents(REPO)
    _, _, embedder = load_demo_embedder(args.model)
    with tempfile.TemporaryDirectory(prefix="kvemb-demo-questions-") as tmp:
        store = demo_store(args.store or Path(tmp) / "store", embedder, documents)
        try:
            rows = probe(store, documents, QUESTIONS, modes)
            demo_rows = probe(store, documents, demo_questions(), modes)
        finally:
            store.close()
    print_table(f"Natural questions, {args.model} (rank of the answering chunk)", rows, modes)
    print_table("The demo's searches", demo_rows, modes)
    for row in [*rows, *demo_rows]:
        if not row["marker_in_docs"]:
            print(f"marker gone from the docs: {row['answer_marker']!r} ({row['question']!r})")
    result = {
        "model": args.model,
        "k": K,
        "default_mode": DEFAULT_MODE,
        "search_settings": {"fusion": asdict(DEFAULT_FUSION), "lexical": dict(LEXICAL_SETTINGS)},
        "documents": {document.id: len(document.text) for document in documents},
        "summary": summarise(rows, modes),
        "demo_summary": summarise(demo_rows, modes),
        "questions": rows,
        "demo_questions": demo_rows,
        "seconds": round(time.perf_counter() - began, 1),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
