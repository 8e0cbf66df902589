"""The project demo (``make demo`` / ``python -m kvemb_rag.demo``): offline RAG with one loaded model.

1. Loads the LLM once (:func:`~kvemb_rag.engine.loader.load_causal_lm`) and builds the embedder on the same
   weights (:meth:`KVEmbedder.from_model <kvemb_rag.KVEmbedder.from_model>`).
2. Embeds a few sentences and prints their cosine-similarity matrix.
3. Indexes the project's own documentation (``README.md`` and ``docs/*.md``) into a local store under
   ``.kvemb/demo-store`` (re-runs only embed what changed).
4. Runs three searches over it (the store's default search mode) and prints the ranked chunks.
5. Answers a question with the retrieved chunks' own sentences, the ones the embedder finds closest to the
   question (:func:`grounded_answer`), each cited with its document and character span.
6. Only when ``$KVEMB_DEMO_GENERATE=1``: also generates an answer with the same model (:func:`answer`),
   labelled as such. Off by default: SmolLM2-135M's answers did not stay on the passages
   (``benchmarks/demo_answers.py`` measures it).

The store goes to ``$KVEMB_DEMO_STORE`` when set. The model is ``$KVEMB_MODEL``, else the bundled default
(:data:`kvemb_rag.engine.models.DEFAULT_MODEL`, installed from the package index: no hub access needed).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kvemb_rag.engine.embedder import KVEmbedder
from kvemb_rag.engine.loader import load_causal_lm
from kvemb_rag.engine.models import default_model, resolve_model
from kvemb_rag.errors import ConfigError, DataNotFoundError, InputError
from kvemb_rag.store import DEFAULT_MODE, Document, EmbedderMismatchError, Hit, KVStore
from kvemb_rag.tables import hits_table, summary_table

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "GENERATE_ENV",
    "QUERIES",
    "QUESTION",
    "SENTENCES",
    "Citation",
    "answer",
    "grounded_answer",
    "main",
    "project_documents",
    "sentence_spans",
]

logger = logging.getLogger(__name__)

#: Sentences of the similarity matrix: two paraphrase pairs and an unrelated one.
SENTENCES: tuple[str, ...] = (
    "A cat is sleeping on the warm windowsill.",
    "The kitten naps in the sun by the window.",
    "Stock markets fell sharply after the announcement.",
    "Shares dropped on Wall Street following the news.",
    "How do I bake sourdough bread at home?",
)
#: The demo searches over the project documentation, in the store's default search mode. Measured with
#: SmolLM2-135M, the default model before Gemma-3-270M (not re-taken since), the passage that answers a
#: new user's question is seldom in the top 3: of
#: 18 natural questions about these docs (``python -m benchmarks.demo_questions``, top 3 chunks; the counts
#: move a little as the docs and the search defaults change), it is for 5 in hybrid mode (the default), 0 in
#: dense and 5 in lexical mode. These three are questions it answers in hybrid mode (3 of 3; dense 2,
#: lexical 3); "How are the re-routed layers chosen?", asked before, it misses in every mode. Another model
#: is one variable away: KVEMB_MODEL=...
QUERIES: tuple[str, ...] = (
    "What does the API key option do?",
    "How do I start an OpenAI-compatible embedding server?",
    "How do I use a GGUF file I already have?",
)
#: The question answered from the retrieved chunks.
QUESTION = QUERIES[0]
#: Set to ``1`` to also generate an answer with the model (off by default: see the module docstring).
GENERATE_ENV = "KVEMB_DEMO_GENERATE"
_ANSWER_TOKENS = 96
_ANSWER_SENTENCES = 3
_ROOT = Path(__file__).resolve().parents[1]
_STORE = Path(os.environ.get("KVEMB_DEMO_STORE") or _ROOT / ".kvemb" / "demo-store")
_COLLECTION = "project-docs"
_SOURCE = "kvemb-rag documentation"

# Sentence splitting of markdown chunks (sentence_spans).
_MIN_SENTENCE_CHARS = 20
_FENCE_RE = re.compile(r"[ \t]*(```|~~~)")
# Lines that start a block of their own: list items, block quotes (the marker is not part of the sentence).
_ITEM_RE = re.compile(r"[ \t]*(?:[-*+]|\d{1,3}[.)]|>)[ \t]+")
# A sentence ends at . ! ? (plus closing quotes, brackets, emphasis or code marks) before whitespace.
_SENTENCE_END_RE = re.compile(r"[.!?][\"'”’)\]*_`]*(?=\s)")
_ABBREVIATIONS = frozenset({"e.g.", "i.e.", "etc.", "vs.", "al.", "cf.", "approx.", "fig.", "no."})


@dataclass(frozen=True)
class Citation:
    """A sentence of a retrieved chunk, as the grounded answer cites it.

    Attributes:
        number: The hit it comes from: its 1-based position in the hits (the ``[n]`` of the answer).
        doc_id: The hit's document id.
        source: The hit's document source, when it has one.
        start: Start of the sentence in the document text (characters).
        end: End of the sentence (exclusive): ``document[start:end] == text``.
        text: The sentence, exactly as in the document (line breaks included).
        score: Cosine similarity of the sentence (document side) and the question (query side).
    """

    number: int
    doc_id: str
    source: str | None
    start: int
    end: int
    text: str
    score: float

    @property
    def display(self) -> str:
        """The sentence on one line (whitespace runs collapsed)."""
        return " ".join(self.text.split())


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


def _lines(text: str) -> list[tuple[int, str]]:
    """``(offset, line without its line break)`` of every line of ``text``."""
    lines = []
    offset = 0
    for line in text.splitlines(keepends=True):
        lines.append((offset, line.rstrip("\r\n")))
        offset += len(line)
    return lines


def _paragraphs(text: str) -> list[tuple[int, int]]:
    """Character spans of the prose blocks of a markdown text (paragraphs and list items, wrapped lines joined).

    Code blocks, table rows, headings and blank lines end a block and are left out. A text cut from a longer
    document may start inside a code block: when its fence lines are odd in number and the first is a bare
    closing-style fence, the text up to it is taken as code.
    """
    lines = _lines(text)
    fences = [line.strip() for _, line in lines if _FENCE_RE.match(line)]
    in_code = len(fences) % 2 == 1 and fences[0] in ("```", "~~~")
    blocks: list[tuple[int, int]] = []
    current: list[int] | None = None  # [start, end] of the open block

    def close() -> None:
        nonlocal current
        if current is not None:
            blocks.append((current[0], current[1]))
        current = None

    for offset, line in lines:
        stripped = line.strip()
        if _FENCE_RE.match(line):
            close()
            in_code = not in_code
            continue
        if in_code or not stripped or stripped.startswith(("|", "#")):
            close()
            continue
        item = _ITEM_RE.match(line)
        if item:
            close()
            content = offset + item.end()
        else:
            content = offset + len(line) - len(line.lstrip())
        end = offset + len(line.rstrip())
        if current is None:
            current = [content, end]
        else:
            current[1] = end
    close()
    return blocks


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the prose sentences of a markdown text, in order.

    Prose blocks (:func:`_paragraphs`: no code blocks, table rows or headings; wrapped lines joined) are cut
    after ``.``, ``!`` or ``?`` followed by whitespace, unless the next word starts in lower case, the word
    before is a common abbreviation (``e.g.``) or the dot ends an ellipsis. Fragments under 20 characters,
    without a letter, or all bold (a run-in heading such as ``**Noise.**``) are dropped.

    Args:
        text: A markdown text (a document or a chunk of one).

    Returns:
        ``(start, end)`` pairs; ``text[start:end]`` is the sentence, stripped of surrounding whitespace.
    """
    spans: list[tuple[int, int]] = []
    for block_start, block_end in _paragraphs(text):
        block = text[block_start:block_end]
        cuts = [0]
        for match in _SENTENCE_END_RE.finditer(block):
            rest = block[match.end() :].lstrip()
            words = block[: match.end()].split()
            previous = words[-1].lower().lstrip("(\"'*_`") if words else ""
            ellipsis = match.start() > 0 and block[match.start() - 1] == "."
            if (rest and rest[0].islower()) or previous in _ABBREVIATIONS or ellipsis:
                continue
            cuts.append(match.end())
        cuts.append(len(block))
        for a, b in pairwise(cuts):
            piece = block[a:b]
            lead = len(piece) - len(piece.lstrip())
            start, end = block_start + a + lead, block_start + a + len(piece.rstrip())
            sentence = text[start:end]
            run_in_heading = sentence.startswith("**") and sentence.endswith("**") and sentence.count("**") == 2
            if len(sentence) >= _MIN_SENTENCE_CHARS and any(c.isalpha() for c in sentence) and not run_in_heading:
                spans.append((start, end))
    return spans


def _candidates(hits: Sequence[Hit]) -> list[tuple[int, Hit, int, int]]:
    """``(hit number, hit, start, end)`` of every sentence of the hits (spans in the hits' documents)."""
    found = []
    for number, hit in enumerate(hits, start=1):
        for start, end in sentence_spans(hit.text):
            if start == len(hit.text) - len(hit.text.lstrip()) and hit.start > 0 and hit.text[start].islower():
                continue  # the chunk starts mid-sentence: a fragment
            found.append((number, hit, hit.start + start, hit.start + end))
    return found


def grounded_answer(
    embedder: KVEmbedder, question: str, hits: Sequence[Hit], n_sentences: int = _ANSWER_SENTENCES
) -> list[Citation]:
    """The sentences of the retrieved chunks closest to the question, cited: an answer that cannot stray.

    Every sentence of the hits (:func:`sentence_spans`; a chunk's first fragment is dropped when the chunk
    starts mid-sentence) is embedded on the document side (a repeated one once) and the question on the
    query side, in one batch each; the ``n_sentences`` most similar (cosine) are kept. Ties go to the better
    hit, then the earlier sentence. A sentence is skipped when its text (whitespace and case aside) or its
    span in the same document repeats or overlaps one already kept: overlapping chunks and repeated
    passages give it once. The kept sentences are returned in the order of their hits (the best hit's
    first), in document order within a hit.

    Args:
        embedder: The embedder (the store's, so sentence and chunk vectors are alike).
        question: The question.
        hits: The retrieved chunks, best first; citation ``number`` ``n`` refers to ``hits[n - 1]``.
        n_sentences: At most this many sentences.

    Returns:
        The citations; empty when there are no hits or no sentences in them.

    Raises:
        ConfigError: ``n_sentences`` is not an int >= 1.
        InputError: ``question`` is not a non-empty string.
    """
    if isinstance(n_sentences, bool) or not isinstance(n_sentences, int) or n_sentences < 1:
        raise ConfigError(f"n_sentences must be an int >= 1; got {n_sentences!r}.")
    if not isinstance(question, str) or not question.strip():
        raise InputError(f"The question must be a non-empty string; got {question!r}.")
    candidates = _candidates(hits)
    if not candidates:
        return []
    texts = [hit.text[start - hit.start : end - hit.start] for _, hit, start, end in candidates]
    keys = [" ".join(text.lower().split()) for text in texts]
    unique = list(dict.fromkeys(keys))  # a repeated sentence is embedded once, so its copies tie exactly
    first_text = {key: texts[keys.index(key)] for key in unique}
    vectors = embedder.encode_document([first_text[key] for key in unique], show_progress_bar=False)  # (u, dim)
    query = embedder.encode_query(question, show_progress_bar=False)  # (dim,), unit norm
    by_key = dict(zip(unique, (vectors @ query).tolist(), strict=True))  # cosine similarity per sentence
    scores = [float(by_key[key]) for key in keys]
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], candidates[i][0], candidates[i][2]))
    kept: list[Citation] = []
    seen: set[str] = set()
    for i in order:
        number, hit, start, end = candidates[i]
        overlaps = any(
            c.doc_id == hit.doc_id and c.source == hit.source and start < c.end and c.start < end for c in kept
        )
        if keys[i] in seen or overlaps:
            continue
        seen.add(keys[i])
        kept.append(Citation(number, hit.doc_id, hit.source, start, end, texts[i], scores[i]))
        if len(kept) == n_sentences:
            break
    return sorted(kept, key=lambda c: (c.number, c.start))


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
    refer to. A small model's answer need not be faithful to the passages (``benchmarks/demo_answers.py``
    measures how far it strays); the sources are the evidence.
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


def _generate_requested() -> bool:
    """Whether ``$KVEMB_DEMO_GENERATE`` asks for a generated answer (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get(GENERATE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def main() -> None:
    """Run the demo: one model embeds (and on request generates); similarity matrix, index, searches, answer."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    model = resolve_model(default_model())
    console.print(f"[bold]kvemb-rag demo[/bold] -- model {model}")
    llm, tokenizer = load_causal_lm(model)
    embedder = KVEmbedder.from_model(llm, tokenizer)  # the same weights embed and generate
    console.print(repr(embedder))
    console.print(_similarity_table(embedder))

    documents = project_documents()
    results: dict[str, list[Hit]] = {}
    with KVStore(_STORE, collection=_COLLECTION, embedder=embedder) as store:
        try:
            summary = store.sync_documents(documents, source=_SOURCE)
        except EmbedderMismatchError as exc:
            # The demo store is disposable: a different model or setting rebuilds it.
            console.print(f"Rebuilding the demo store for this embedder ({', '.join(exc.differences)} changed).")
            store.delete_collection()
            summary = store.sync_documents(documents, source=_SOURCE)
        console.print(summary_table(summary, f"{_COLLECTION} ({_STORE})"))
        for query in QUERIES:
            results[query] = store.query(query, k=3)  # the store's default search mode
            console.print(hits_table(results[query], f"{query!r} ({DEFAULT_MODE} search, top 3 chunks)"))
        hits = results.get(QUESTION) or store.query(QUESTION, k=3)

    console.print(f"[bold]Question:[/bold] {escape(QUESTION)}")
    console.print(
        "[bold]Answer[/bold] (grounded: the sentences of the chunks above closest to the question, "
        "by the embedder; quoted, not generated):"
    )
    cited = grounded_answer(embedder, QUESTION, hits)
    for citation in cited:
        console.print(
            f"  {escape(citation.display)} \\[{citation.number}] "
            f"[dim]({escape(citation.doc_id)} characters {citation.start}-{citation.end})[/dim]"
        )
    if not cited:
        console.print("  (no sentence in the retrieved chunks)")
    console.print("Sources:")
    for i, hit in enumerate(hits, start=1):
        span = f"characters {hit.start}-{hit.end}"
        console.print(f"  \\[{i}] {escape(hit.doc_id)} {span} ({DEFAULT_MODE} score {hit.score:.3f})")
    if _generate_requested():
        generated = answer(llm, tokenizer, QUESTION, hits)
        console.print(f"[bold]Generated by {escape(model)}[/bold] (may not stay on the sources):")
        console.print(f"  {escape(generated)}")
    else:
        console.print(
            f"[dim]{GENERATE_ENV}=1 also generates an answer with the model from these chunks "
            "(off by default: small models' answers stray from the sources).[/dim]"
        )


if __name__ == "__main__":
    main()
