"""The demo's grounded answer: sentences of the retrieved chunks, cited by hit and character span.

The embedder is the real tiny model (skipped without ``../shared``); hits are real :class:`Hit` values cut
from a document, and one test takes them from a real store.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kvemb_rag.demo import Citation, grounded_answer, sentence_spans
from kvemb_rag.errors import ConfigError, InputError
from kvemb_rag.store import Document, Hit, KVStore

if TYPE_CHECKING:
    from kvemb_rag import KVEmbedder

DOCUMENT = """# Bread notes

Bread dough rises because yeast makes carbon dioxide. The gas is trapped by the gluten network,
so the loaf grows in the oven. Salt slows the yeast down, e.g. when the kitchen is warm.

```python
bake(dough, minutes=40)  # This code line is not a sentence.
```

| flour | water |
|---|---|
| 500 g of strong white flour | 350 g of lukewarm water |

- Knead the dough for ten minutes until it is smooth and elastic.
- Let it rest.
- Cats sleep up to sixteen hours a day, mostly in the afternoon sun.

The oven should be hot before the bread goes in. A tray of water gives a crisp crust.
"""
SENTENCES = (
    "Bread dough rises because yeast makes carbon dioxide.",
    "The gas is trapped by the gluten network,\nso the loaf grows in the oven.",
    "Salt slows the yeast down, e.g. when the kitchen is warm.",
    "Knead the dough for ten minutes until it is smooth and elastic.",
    "Cats sleep up to sixteen hours a day, mostly in the afternoon sun.",
    "The oven should be hot before the bread goes in.",
    "A tray of water gives a crisp crust.",
)


def _hit(document: str, start: int, end: int, doc_id: str = "bread.md", source: str | None = None) -> Hit:
    """The hit a store returns for ``document[start:end]``."""
    return Hit(
        score=0.5,
        doc_id=doc_id,
        chunk_index=0,
        start=start,
        end=end,
        text=document[start:end],
        metadata={},
        source=source,
        id=f"{doc_id}::{start}",
    )


def _split_hits(document: str = DOCUMENT, doc_id: str = "bread.md") -> list[Hit]:
    """The document as three contiguous hits, cut at blank lines (best hit = the last part)."""
    cuts = [0, document.index("```python"), document.index("- Knead"), len(document)]
    parts = [_hit(document, a, b, doc_id) for a, b in pairwise(cuts)]
    return parts[::-1]


def _check_citations(citations: list[Citation], hits: list[Hit], documents: dict[str, str]) -> None:
    for citation in citations:
        hit = hits[citation.number - 1]
        assert citation.doc_id == hit.doc_id and citation.source == hit.source
        assert hit.start <= citation.start < citation.end <= hit.end
        assert documents[citation.doc_id][citation.start : citation.end] == citation.text
        assert citation.text in hit.text
        assert citation.display == " ".join(citation.text.split())


# ----------------------------------------------------------------------------------------------- splitting
def test_sentence_spans_keep_prose_and_drop_code_tables_headings_and_fragments() -> None:
    found = [DOCUMENT[a:b] for a, b in sentence_spans(DOCUMENT)]
    assert found == list(SENTENCES)  # "Let it rest." is under 20 characters; "e.g. when" does not end one


def test_sentence_spans_of_a_chunk_that_starts_inside_a_code_block() -> None:
    text = "print('Still code. Really.')\n```\n\nThe chunk goes on with prose after the code block.\n"
    assert [text[a:b] for a, b in sentence_spans(text)] == ["The chunk goes on with prose after the code block."]


def test_sentence_spans_drop_run_in_headings_and_keep_ellipsis_inside_a_sentence() -> None:
    text = "**Reproducible installs.** The lock file pins [...] every package the suite ran on.\n"
    assert [text[a:b] for a, b in sentence_spans(text)] == ["The lock file pins [...] every package the suite ran on."]


# ------------------------------------------------------------------------------------------ grounded answer
def test_grounded_answer_cites_sentences_of_the_hits_with_their_spans(tiny_embedder: KVEmbedder) -> None:
    hits = _split_hits()
    citations = grounded_answer(tiny_embedder, "Why does bread dough rise?", hits, n_sentences=3)
    assert len(citations) == 3
    assert all(isinstance(c, Citation) for c in citations)
    assert {c.text for c in citations} <= set(SENTENCES)
    _check_citations(citations, hits, {"bread.md": DOCUMENT})
    # In the order of their hits, in document order within a hit.
    assert [(c.number, c.start) for c in citations] == sorted((c.number, c.start) for c in citations)


def test_grounded_answer_keeps_the_most_similar_sentences(tiny_embedder: KVEmbedder) -> None:
    hits = _split_hits()
    everything = grounded_answer(tiny_embedder, "How long do cats sleep?", hits, n_sentences=100)
    assert sorted(c.text for c in everything) == sorted(SENTENCES)  # n larger than the sentences: all of them
    for n in (1, 2, 4):
        kept = grounded_answer(tiny_embedder, "How long do cats sleep?", hits, n_sentences=n)
        assert len(kept) == n
        best = sorted((c.score for c in everything), reverse=True)[:n]
        assert sorted((c.score for c in kept), reverse=True) == pytest.approx(best, abs=1e-5)


def test_grounded_answer_numbers_citations_by_hit_and_orders_them_by_hit(
    tiny_embedder: KVEmbedder,
) -> None:
    other = "Cats sleep up to sixteen hours a day in warm places. Kittens sleep even longer than adult cats do.\n"
    hits = [_hit(other, 0, len(other), "cats.md"), *_split_hits()]
    documents = {"cats.md": other, "bread.md": DOCUMENT}
    citations = grounded_answer(tiny_embedder, "How long do cats sleep?", hits, n_sentences=20)
    _check_citations(citations, hits, documents)
    assert {c.number for c in citations if c.doc_id == "cats.md"} == {1}
    # bread.md's hits: 2 (the list and last paragraph), 3 (code and table: no sentence), 4 (the first paragraph).
    assert {c.number for c in citations if c.doc_id == "bread.md" and c.start < DOCUMENT.index("```")} == {4}
    assert {c.number for c in citations if c.doc_id == "bread.md" and c.start > DOCUMENT.index("- Knead")} == {2}
    # cats.md (hit 1) first, then bread.md's hit 2 and hit 4, each in document order.
    assert [c.doc_id for c in citations] == ["cats.md"] * 2 + ["bread.md"] * len(SENTENCES)
    assert [c.text for c in citations[2:]] == [*SENTENCES[3:], *SENTENCES[:3]]


def test_grounded_answer_gives_a_repeated_or_overlapping_sentence_once(tiny_embedder: KVEmbedder) -> None:
    middle = DOCUMENT.index("The oven")
    # Overlapping chunks (store overlap) and the same passage in another document.
    hits = [
        _hit(DOCUMENT, middle, len(DOCUMENT)),
        _hit(DOCUMENT, DOCUMENT.index("- Knead"), len(DOCUMENT)),
        _hit(DOCUMENT[middle:], 0, len(DOCUMENT) - middle, "copy.md"),
    ]
    citations = grounded_answer(tiny_embedder, "How hot should the oven be?", hits, n_sentences=20)
    texts = [" ".join(c.text.lower().split()) for c in citations]
    assert len(texts) == len(set(texts))
    assert sorted(c.text for c in citations) == sorted(SENTENCES[3:])
    assert {c.number for c in citations if "oven" in c.text or "crust" in c.text} == {1}  # the best hit's copy
    spans = sorted((c.start, c.end) for c in citations if c.doc_id == "bread.md")
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in pairwise(spans))


def test_grounded_answer_drops_the_fragment_of_a_chunk_that_starts_mid_sentence(tiny_embedder: KVEmbedder) -> None:
    start = DOCUMENT.index("so the loaf grows")
    hits = [_hit(DOCUMENT, start, DOCUMENT.index("```python"))]
    citations = grounded_answer(tiny_embedder, "What does salt do?", hits, n_sentences=5)
    assert [c.text for c in citations] == [SENTENCES[2]]
    assert DOCUMENT[citations[0].start : citations[0].end] == SENTENCES[2]


def test_grounded_answer_without_hits_or_sentences_is_empty(tiny_embedder: KVEmbedder) -> None:
    assert grounded_answer(tiny_embedder, "Why does dough rise?", []) == []
    code = "```bash\nkvemb index docs/\n```\n| a | b |\n"
    assert grounded_answer(tiny_embedder, "Why does dough rise?", [_hit(code, 0, len(code))]) == []


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3", None])
def test_grounded_answer_refuses_a_bad_number_of_sentences(tiny_embedder: KVEmbedder, bad: object) -> None:
    with pytest.raises(ConfigError, match=r"n_sentences must be an int >= 1; got"):
        grounded_answer(tiny_embedder, "Why does dough rise?", _split_hits(), n_sentences=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_grounded_answer_refuses_an_empty_question(tiny_embedder: KVEmbedder, bad: object) -> None:
    with pytest.raises(InputError, match=r"The question must be a non-empty string"):
        grounded_answer(tiny_embedder, bad, _split_hits())  # type: ignore[arg-type]


def test_grounded_answer_from_a_real_store(tiny_embedder: KVEmbedder, tmp_path: Path) -> None:
    """Hits as the demo gets them: spans of the stored chunks point into the indexed documents."""
    other = "Cats sleep up to sixteen hours a day in warm places. Kittens sleep even longer than adult cats do.\n"
    documents = {"bread.md": DOCUMENT, "cats.md": other}
    with KVStore(tmp_path / "store", collection="demo-test", embedder=tiny_embedder) as store:
        store.add_documents([Document(doc_id, text) for doc_id, text in documents.items()])
        hits = store.query("Why does bread dough rise?", k=3)
    assert len(hits) == 3
    citations = grounded_answer(tiny_embedder, "Why does bread dough rise?", hits, n_sentences=2)
    assert 1 <= len(citations) <= 2
    _check_citations(citations, hits, documents)
