"""Tests for kvemb_rag.engine.chunking: token-budgeted, boundary-aware chunking and chunk-vector merging."""

from __future__ import annotations

import itertools
import math
import time
import unicodedata
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from functools import cache
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from kvemb_rag.engine.chunking import Chunk, _is_safe_cut, chunk_text, combine_chunk_vectors
from tests.conftest import TINY_MODEL_DIR, shared_path

TEMPLATE = "Context: {text}\nCompress the Context in one word:"


# --------------------------------------------------------------------------------------------- fixtures


@cache
def _llama_tokenizer() -> Any:
    """SentencePiece-style (Metaspace + byte fallback) tokenizer of the tiny trained Llama (skips without it)."""
    return AutoTokenizer.from_pretrained(str(shared_path(TINY_MODEL_DIR)))


@cache
def _bytelevel_tokenizer() -> Any:
    """A GPT-2 style byte-level BPE trained in memory, so emoji / CJK / combining marks split into bytes."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<s>"],
    )
    corpus = [
        "The quick brown fox jumps over the lazy dog. " * 4,
        "Once upon a time there was a little cat who sat on the mat and sang loudly.\n\n" * 3,
        "日本語のテキストです。中文文本。テキスト！",
        "emoji 😀 👍🏽 👨\u200d👩\u200d👧 🇫🇷 café naïve e\u0301 a\u0308\u0301",
    ]
    tk.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk)


TOKENIZERS: dict[str, Callable[[], Any]] = {"llama": _llama_tokenizer, "bytelevel": _bytelevel_tokenizer}


class Counter:
    """count_tokens closure (template applied) that also records how often it is called."""

    def __init__(self, tokenizer: Any, template: str = TEMPLATE) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.calls = 0

    def __call__(self, s: str) -> int:
        self.calls += 1
        return len(self.tokenizer(self.template.format(text=s), verbose=False)["input_ids"])


@cache
def _overhead(name: str) -> int:
    return Counter(TOKENIZERS[name]())("")


def _raw_starts(tokenizer: Any, text: str) -> list[int]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    starts, running = [], 0
    for s, _ in enc["offset_mapping"]:
        running = max(running, s)
        starts.append(running)
    return starts


def _check_chunks(
    text: str, chunks: list[Chunk], count: Callable[[str], int], max_tokens: int, overlap: int = 0
) -> None:
    """The invariants every chunking must satisfy."""
    if not text.strip():
        assert chunks == []
        return
    assert chunks, "non-blank text must give at least one chunk"
    assert chunks[0].start == 0
    assert chunks[-1].end == len(text)
    for i, c in enumerate(chunks):
        assert c.index == i
        assert c.end > c.start
        assert text[c.start : c.end] == c.text
        assert c.n_tokens == count(c.text)
        assert c.n_tokens <= max_tokens
    for prev, nxt in itertools.pairwise(chunks):
        # Union of spans is the whole document: no gap, and every chunk makes progress.
        assert prev.start < nxt.start <= prev.end < nxt.end
        if overlap == 0:
            assert nxt.start == prev.end
    for c in chunks:
        for pos in (c.start, c.end):
            assert _is_safe_cut(text, pos), f"cut at {pos} breaks {text[max(pos - 2, 0) : pos + 2]!r}"
            if 0 < pos < len(text):
                assert not unicodedata.combining(text[pos])
                assert not unicodedata.category(text[pos]).startswith("M")


# ------------------------------------------------------------------------------------------ strategies

_WORDS = st.sampled_from(
    [
        "the", "cat", "sat", "quickly", "unbelievable", "Once", "naïve", "café", "e\u0301", "a\u0308\u0301",
        "日本語", "中文文本", "テキスト", "😀", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "🇫🇷🇩🇪", "x" * 40,
        "3.14", "Mr.", "\r\n", "(quoted.)",
    ]
)  # fmt: skip
_SEPS = st.sampled_from(
    [" ", " ", " ", "  ", "\n", "\n\n", "\n \n", ". ", "! ", "? ", "。", "！", "\t", "。 "]
)
_RI = "".join(chr(c) for c in range(0x1F1E6, 0x1F200))
_MODIFIERS = "".join(chr(c) for c in range(0x1F3FB, 0x1F400))
# Arbitrary text without the pieces that extend a neighbour's grapheme cluster (marks, joiners, flags,
# skin tones), so clusters stay small enough to fit the budgets drawn below.
_ODD = st.text(
    alphabet=st.characters(
        exclude_categories=("Cs", "Co", "Cn", "Cf", "Mn", "Mc", "Me"), exclude_characters=_RI + _MODIFIERS
    ),
    max_size=6,
)
_PIECE = st.one_of(_WORDS, _SEPS, _SEPS, _ODD)
# Mostly multi-chunk documents (hypothesis keeps plain lists short), some tiny ones.
DOCS = st.one_of(
    st.lists(_PIECE, max_size=10), st.lists(_PIECE, min_size=80, max_size=400), st.lists(_PIECE, min_size=80)
).map("".join)
_PROSE_WORDS = st.sampled_from(["the", "cat", "sat", "on", "a", "mat", "quickly", "ran", "home"])
PROSE = st.lists(
    st.lists(
        st.lists(_PROSE_WORDS, min_size=3, max_size=14).map(lambda ws: " ".join(ws).capitalize() + "."),
        min_size=1,
        max_size=6,
    ).map(" ".join),
    min_size=2,
    max_size=14,
).map("\n\n".join)

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------- property tests


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@PROPERTY
@given(text=DOCS, data=st.data())
def test_invariants_random_unicode(name: str, text: str, data: st.DataObject) -> None:
    tok = TOKENIZERS[name]()
    count = Counter(tok)
    overhead = _overhead(name)
    budget = data.draw(st.one_of(st.integers(24, 120), st.just(512 - overhead)), label="budget")
    overlap = data.draw(st.one_of(st.just(0), st.integers(0, budget // 2)), label="overlap")
    max_tokens = overhead + budget
    chunks = chunk_text(text, tokenizer=tok, max_tokens=max_tokens, count_tokens=count, overlap=overlap)
    _check_chunks(text, chunks, count, max_tokens, overlap)
    for c in chunks:
        if not c.text.strip():
            # Whitespace-only chunks only come from whitespace runs too long to share a chunk.
            lo, hi = c.start, c.end
            while lo > 0 and text[lo - 1].isspace():
                lo -= 1
            while hi < len(text) and text[hi].isspace():
                hi += 1
            assert count(text[lo:hi]) - overhead >= budget // 2 - 2, (c, text[lo:hi])


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@PROPERTY
@given(text=DOCS, budget=st.integers(24, 80), overlap=st.integers(1, 20))
def test_overlap_is_about_the_requested_token_count(name: str, text: str, budget: int, overlap: int) -> None:
    tok = TOKENIZERS[name]()
    count = Counter(tok)
    max_tokens = _overhead(name) + budget
    chunks = chunk_text(text, tokenizer=tok, max_tokens=max_tokens, count_tokens=count, overlap=overlap)
    _check_chunks(text, chunks, count, max_tokens, overlap)
    starts = _raw_starts(tok, text)

    def tok_idx(pos: int) -> int:
        return bisect_left(starts, pos)

    def char_at(t: int) -> int:
        return starts[t] if t < len(starts) else len(text)

    for prev, nxt in itertools.pairwise(chunks):
        t_end = tok_idx(prev.end)
        got = t_end - tok_idx(nxt.start)
        target = char_at(max(t_end - overlap, 0))
        too_short = not any(_is_safe_cut(text, p) for p in range(prev.start + 1, target + 1))
        restarted = nxt.start == prev.end
        # At least the requested overlap, unless the previous chunk has no safe cut that far back, or the
        # overlapped chunk could not reach past the previous end (then it starts contiguously) ...
        assert got >= overlap or too_short or restarted
        # ... and at most a quarter more (snapping back to a word start), give or take a grapheme cluster.
        floor = char_at(max(t_end - overlap - overlap // 4, 0))
        assert nxt.start >= floor or all(not _is_safe_cut(text, p) for p in range(nxt.start + 1, floor + 1))


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@PROPERTY
@given(text=PROSE, budget=st.integers(30, 200))
def test_paragraph_boundary_preferred_when_in_range(name: str, text: str, budget: int) -> None:
    tok = TOKENIZERS[name]()
    count = Counter(tok)
    max_tokens = _overhead(name) + budget
    chunks = chunk_text(text, tokenizer=tok, max_tokens=max_tokens, count_tokens=count)
    _check_chunks(text, chunks, count, max_tokens)
    starts = _raw_starts(tok, text)
    paragraphs = [i + 2 for i in range(len(text)) if text.startswith("\n\n", i)]
    sentences = {i + 2 for i in range(len(text)) if text.startswith(". ", i)}
    for c in chunks[:-1]:
        t0 = bisect_left(starts, c.start)
        # A paragraph end that fits comfortably and fills at least half the budget must win.

        def _fills(b: int, c: Chunk = c, t0: int = t0) -> bool:
            return (
                math.ceil(budget / 2) <= bisect_left(starts, b) - t0 <= budget
                and count(text[c.start : b]) <= max_tokens - 4
            )

        good = [b for b in paragraphs if b > c.start and _fills(b)]
        if good:
            assert c.end in paragraphs and c.end >= max(good), (c, good)
        # Prose has no long words, so a chunk never ends inside a word ...
        assert text[c.end - 1].isspace()
        # ... nor at a word end when a sentence end fills half the budget.
        if any(_fills(s) for s in sentences if s > c.start):
            assert c.end in sentences or c.end in paragraphs


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@settings(max_examples=25, deadline=None)
@given(
    word=st.sampled_from(["x", "ab", "日", "😀", "e\u0301", "🇫🇷"]),
    reps=st.integers(50, 600),
    budget=st.integers(24, 60),
    prefix=st.sampled_from(["", "a ", "Short intro.\n\n"]),
)
def test_one_huge_word_longer_than_the_limit_is_split(
    name: str, word: str, reps: int, budget: int, prefix: str
) -> None:
    tok = TOKENIZERS[name]()
    count = Counter(tok)
    max_tokens = _overhead(name) + budget
    text = prefix + word * reps + " tail"
    chunks = chunk_text(text, tokenizer=tok, max_tokens=max_tokens, count_tokens=count)
    _check_chunks(text, chunks, count, max_tokens)
    if count(text) > max_tokens:
        assert len(chunks) >= 2


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@settings(max_examples=20, deadline=None)
@given(text=DOCS, budget=st.integers(24, 120), penalty=st.integers(5, 40))
def test_non_additive_template_still_fits(name: str, text: str, budget: int, penalty: int) -> None:
    # Template overhead that grows with the text: the raw-token estimate overshoots, forcing shrink steps.
    tok = TOKENIZERS[name]()
    base = Counter(tok)

    def count(s: str) -> int:
        return base(s) + len(s) // penalty + (3 if s[-1:].isspace() else 0)

    max_tokens = _overhead(name) + budget
    chunks = chunk_text(text, tokenizer=tok, max_tokens=max_tokens, count_tokens=count)
    _check_chunks(text, chunks, count, max_tokens)


# ---------------------------------------------------------------------------------------- example tests


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@pytest.mark.parametrize("text", ["", " ", "\n\n\t  \r\n", "\u3000\u2003"])
def test_empty_and_whitespace_give_no_chunks(name: str, text: str) -> None:
    tok = TOKENIZERS[name]()
    assert chunk_text(text, tokenizer=tok, max_tokens=512, count_tokens=Counter(tok)) == []


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_short_text_is_one_chunk(name: str) -> None:
    tok = TOKENIZERS[name]()
    count = Counter(tok)
    text = "  A short story about a cat.\n"
    chunks = chunk_text(text, tokenizer=tok, max_tokens=512, count_tokens=count)
    assert chunks == [Chunk(text=text, start=0, end=len(text), n_tokens=count(text), index=0)]


def _sentences(n: int) -> list[str]:
    words = ["the", "little", "cat", "sat", "on", "a", "warm", "mat", "and", "sang", "softly", "today"]
    return [
        " ".join(words[(i + k) % len(words)] for k in range(6 + i % 5)).capitalize() + "." for i in range(n)
    ]


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@pytest.mark.parametrize("max_tokens", [96, 200, 512])
def test_paragraph_end_wins_over_fuller_sentence_end(name: str, max_tokens: int) -> None:
    tok = TOKENIZERS[name]()
    count = Counter(tok)
    budget = max_tokens - _overhead(name)
    first: list[str] = []
    for s in _sentences(400):
        if count(" ".join([*first, s])) - _overhead(name) > 0.7 * budget:
            break
        first.append(s)
    para1 = " ".join(first) + "\n\n"
    text = para1 + " ".join(_sentences(300)) + "\n\n" + " ".join(_sentences(50))
    chunks = chunk_text(text, tokenizer=tok, max_tokens=max_tokens, count_tokens=count)
    _check_chunks(text, chunks, count, max_tokens)
    assert chunks[0].end == len(para1)
    assert chunks[1].text.startswith("The little")


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_tiny_paragraph_is_merged_not_a_chunk(name: str) -> None:
    tok = TOKENIZERS[name]()
    count = Counter(tok)
    max_tokens = 200
    text = "Hi.\n\n" + " ".join(_sentences(200))
    chunks = chunk_text(text, tokenizer=tok, max_tokens=max_tokens, count_tokens=count)
    _check_chunks(text, chunks, count, max_tokens)
    assert chunks[0].end > len("Hi.\n\n")
    for c in chunks[:-1]:
        assert c.text.endswith(". "), repr(c.text[-10:])  # sentence ends beat word ends
        assert c.n_tokens - _overhead(name) >= (max_tokens - _overhead(name)) // 2


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_cjk_sentences_split_after_full_stop(name: str) -> None:
    tok = TOKENIZERS[name]()
    count = Counter(tok)
    text = "".join(f"日本語のテキスト{i}です。" for i in range(200))
    chunks = chunk_text(text, tokenizer=tok, max_tokens=100, count_tokens=count)
    _check_chunks(text, chunks, count, 100)
    assert len(chunks) > 1
    assert all(c.text.endswith("。") for c in chunks)


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@pytest.mark.parametrize("max_tokens", [256, 512, 4096])
def test_ten_thousand_words_fast_and_few_count_calls(name: str, max_tokens: int) -> None:
    tok = TOKENIZERS[name]()
    count = Counter(tok)
    sents = _sentences(1500)
    paragraphs = [" ".join(sents[i : i + 7]) for i in range(0, len(sents), 7)]
    text = "\n\n".join(f"Speaker {i % 4}: {p}" for i, p in enumerate(paragraphs))
    assert len(text.split()) >= 10_000
    t = time.perf_counter()
    chunks = chunk_text(text, tokenizer=tok, max_tokens=max_tokens, count_tokens=count, overlap=16)
    elapsed = time.perf_counter() - t
    calls = count.calls
    _check_chunks(text, chunks, count, max_tokens, overlap=16)
    assert calls <= 3 * len(chunks) + 2, (calls, len(chunks))
    assert elapsed < 5.0


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@pytest.mark.parametrize("n", [22, 71, 92, 141, 190])
@pytest.mark.parametrize("tail", [" ", "  \n", "\n\n\n\n"])
def test_trailing_whitespace_is_not_a_chunk_of_its_own(name: str, n: int, tail: str) -> None:
    tok = TOKENIZERS[name]()
    count = Counter(tok)
    max_tokens = _overhead(name) + 24
    text = "x" * n + tail
    chunks = chunk_text(text, tokenizer=tok, max_tokens=max_tokens, count_tokens=count)
    _check_chunks(text, chunks, count, max_tokens)
    assert all(c.text.strip() for c in chunks)


def test_grapheme_clusters_are_never_split() -> None:
    tok = _bytelevel_tokenizer()
    count = Counter(tok)
    text = " ".join(["👨\u200d👩\u200d👧🇫🇷👍🏽e\u0301\u0302"] * 60)
    for budget in (24, 30, 50):
        max_tokens = _overhead("bytelevel") + budget
        chunks = chunk_text(text, tokenizer=tok, max_tokens=max_tokens, count_tokens=count)
        _check_chunks(text, chunks, count, max_tokens)


def test_single_cluster_over_budget_is_split_by_code_point_with_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tok = _bytelevel_tokenizer()
    count = Counter(tok)
    text = "e" + "\u0301" * 30  # one grapheme cluster of ~61 byte tokens
    max_tokens = _overhead("bytelevel") + 10
    with caplog.at_level("WARNING", logger="kvemb_rag.engine.chunking"):
        chunks = chunk_text(text, tokenizer=tok, max_tokens=max_tokens, count_tokens=count)
    assert "".join(c.text for c in chunks) == text
    assert all(c.n_tokens <= max_tokens for c in chunks)
    assert "grapheme cluster" in caplog.text


# ------------------------------------------------------------------------------------------------ errors


def test_template_alone_too_big_raises() -> None:
    tok = _llama_tokenizer()
    overhead = _overhead("llama")
    for max_tokens in (1, overhead):
        with pytest.raises(ValueError, match=r"too small for the prompt template.*max_tokens >"):
            chunk_text("some text", tokenizer=tok, max_tokens=max_tokens, count_tokens=Counter(tok))


def test_single_character_over_limit_raises() -> None:
    tok = _llama_tokenizer()

    def count(s: str) -> int:
        return 5 if not s else 100

    with pytest.raises(ValueError, match=r"single character.*Raise max_tokens"):
        chunk_text("abc def", tokenizer=tok, max_tokens=10, count_tokens=count)


@pytest.mark.parametrize("overlap", [-1, "budget", "budget+1"])
def test_bad_overlap_raises(overlap: int | str) -> None:
    tok = _llama_tokenizer()
    max_tokens = 100
    budget = max_tokens - _overhead("llama")
    value = {"budget": budget, "budget+1": budget + 1}.get(str(overlap), overlap)
    assert isinstance(value, int)
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("a b c", tokenizer=tok, max_tokens=max_tokens, count_tokens=Counter(tok), overlap=value)
    ok = chunk_text(
        "a b c", tokenizer=tok, max_tokens=max_tokens, count_tokens=Counter(tok), overlap=budget - 1
    )
    assert [c.text for c in ok] == ["a b c"]


def test_bad_types_raise() -> None:
    tok = _llama_tokenizer()
    count = Counter(tok)
    with pytest.raises(TypeError, match="text must be a str"):
        chunk_text(b"bytes", tokenizer=tok, max_tokens=100, count_tokens=count)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_tokens must be an int"):
        chunk_text("a", tokenizer=tok, max_tokens=100.0, count_tokens=count)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="overlap must be an int"):
        chunk_text("a", tokenizer=tok, max_tokens=100, count_tokens=count, overlap=True)
    with pytest.raises(TypeError, match="fast tokenizer"):
        chunk_text("a", tokenizer=object(), max_tokens=100, count_tokens=count)  # type: ignore[arg-type]


def test_chunk_validates_its_span() -> None:
    Chunk(text="ab", start=3, end=5, n_tokens=4, index=0)
    with pytest.raises(ValueError, match="source\\[start:end\\]"):
        Chunk(text="abc", start=3, end=5, n_tokens=4, index=0)
    with pytest.raises(ValueError, match="0 <= start <= end"):
        Chunk(text="", start=5, end=3, n_tokens=4, index=0)
    with pytest.raises(ValueError, match=">= 0"):
        Chunk(text="ab", start=3, end=5, n_tokens=4, index=-1)
    with pytest.raises(FrozenInstanceError, match="'start'"):
        Chunk(text="ab", start=3, end=5, n_tokens=4, index=0).start = 1  # type: ignore[misc]


# -------------------------------------------------------------------------------- combine_chunk_vectors


def test_combine_is_token_weighted_and_unit_norm() -> None:
    vecs = np.array([[1.0, 0.0], [0.0, 1.0]])
    out = combine_chunk_vectors(vecs, [3, 1])
    assert out.dtype == np.float32
    assert out.shape == (2,)
    np.testing.assert_allclose(out, np.array([3.0, 1.0]) / math.sqrt(10), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out), 1.0, rtol=1e-6)


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 6),
    dim=st.integers(1, 16),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.1, 100.0),
)
def test_combine_properties(n: int, dim: int, seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, dim)).astype(np.float32) + 3.0  # keep the mean away from zero
    weights = rng.integers(1, 500, size=n).tolist()
    out = combine_chunk_vectors(vecs, weights)
    assert out.dtype == np.float32 and out.shape == (dim,)
    np.testing.assert_allclose(np.linalg.norm(out), 1.0, rtol=1e-5)
    expected = (np.asarray(weights, dtype=np.float64)[:, None] * vecs).sum(0)
    np.testing.assert_allclose(out, expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6)
    # Invariant to the order of chunks and to a common scale of the weights.
    perm = rng.permutation(n)
    np.testing.assert_allclose(combine_chunk_vectors(vecs[perm], [weights[i] for i in perm]), out, atol=1e-6)
    np.testing.assert_allclose(combine_chunk_vectors(vecs, [w * scale for w in weights]), out, atol=1e-6)


def test_combine_single_vector_is_normalised_copy() -> None:
    out = combine_chunk_vectors(np.array([[3.0, 4.0]], dtype=np.float32), [7])
    np.testing.assert_allclose(out, [0.6, 0.8], rtol=1e-6)


@pytest.mark.parametrize(
    ("vectors", "n_tokens", "match"),
    [
        (np.ones(3), [1], "shape \\(n_chunks, dim\\)"),
        (np.ones((0, 3)), [], "shape \\(n_chunks, dim\\)"),
        (np.ones((2, 0)), [1, 1], "shape \\(n_chunks, dim\\)"),
        (np.ones((2, 3, 1)), [1, 1], "shape \\(n_chunks, dim\\)"),
        (np.ones((2, 3)), [1], "one entry per chunk"),
        (np.ones((2, 3)), [[1, 1]], "one entry per chunk"),
        (np.ones((2, 3)), [1, 0], "> 0"),
        (np.ones((2, 3)), [1, -2], "> 0"),
        (np.ones((2, 3)), [1, float("nan")], "> 0"),
        (np.array([[1.0, np.nan]]), [1], "NaN or inf"),
        (np.array([[1.0, 0.0], [-1.0, 0.0]]), [2, 2], "zero vector"),
    ],
)
def test_combine_rejects_bad_input(vectors: np.ndarray, n_tokens: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        combine_chunk_vectors(vectors, n_tokens)
