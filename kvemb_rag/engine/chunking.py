r"""Token-budgeted, boundary-aware chunking of long documents, and merging of chunk vectors.

A document longer than the engine's ``max_length`` is split into chunks that each fit the model *with the
prompt template applied*; each chunk is embedded separately and the chunk vectors are merged into one
document vector by :func:`combine_chunk_vectors` (token-count-weighted mean, re-normalised).

How a split point is chosen
---------------------------
The document is tokenized once with the raw (template-free) tokenizer; its offset mapping turns "``k``
tokens from here" into a character position cheaply. For each chunk, the raw-token allowance
(``max_tokens`` minus the template overhead ``count_tokens("")``) gives the furthest candidate end ``hi``.
Split points are tried by level, most preferred first:

1. **paragraph**: just after a blank line (``"\n\n"``, possibly with spaces between the newlines);
2. **sentence**: just after ``.``/``!``/``?`` (plus closing quotes/brackets) followed by whitespace, after
   ``。``/``！``/``？`` (whitespace optional: CJK text has none), or after a newline;
3. **word**: just after a run of whitespace;
4. **token**: at any raw-token boundary (so one unbroken run longer than the budget is still split).

At levels 1-3 the split point lies *after* the separating whitespace, so that whitespace ends the earlier
chunk and the next chunk starts on content. The rule: take the **latest** split point of the most
preferred level in ``(start, hi]``, unless the chunk it makes holds fewer than ``_MIN_FILL`` (half) of the
allowance in raw tokens -- then fall to the next level, whose latest point is at least as far. The token
level is never refused. A paragraph therefore wins over a fuller sentence split as long as it fills at
least half the budget; a tiny first paragraph is merged with what follows instead of becoming a chunk.

Each candidate chunk is then verified with ``count_tokens`` (template merges across the boundary are not
exactly additive); when it is over, the allowance is reduced by the excess and a boundary is picked again
(a few steps at most), with a binary search over token boundaries as the fallback. A chunk end never falls
inside a character, between a base character and its combining marks, around a zero-width joiner, before a
variation selector / emoji modifier / tag character, or inside ``"\r\n"``.

Example:
    >>> from transformers import AutoTokenizer
    >>> tok = AutoTokenizer.from_pretrained("path/to/model")  # doctest: +SKIP
    >>> template = "Context: {text}\nCompress the Context in one word:"
    >>> def count(s: str) -> int:
    ...     return len(tok(template.format(text=s))["input_ids"])
    >>> chunks = chunk_text(long_text, tokenizer=tok, max_tokens=512, count_tokens=count)  # doctest: +SKIP
    >>> all(count(c.text) <= 512 for c in chunks)  # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from kvemb_rag.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from kvemb_rag.engine.inputs import TokenizedText

__all__ = ["Chunk", "chunk_text", "combine_chunk_vectors"]

logger = logging.getLogger(__name__)

# A preferred (paragraph / sentence / word) split point is refused when the chunk it makes holds fewer
# raw tokens than this fraction of the allowance; the next level down is tried instead.
_MIN_FILL = 0.5
# Re-pick rounds after a count_tokens overshoot before falling back to binary search.
_MAX_SHRINK_STEPS = 4

_PARAGRAPH_RE = re.compile(r"\n[^\S\n]*\n\s*")
_SENTENCE_RE = re.compile(r"[.!?][\"'”’)\]]*\s+|[。！？][」』”’）)\]]*\s*|\n\s*")
_WORD_RE = re.compile(r"\s+")

_ZWJ = "\u200d"


@dataclass(frozen=True)
class Chunk:
    """One chunk of a source document.

    Attributes:
        text: The chunk text, exactly ``source[start:end]``.
        start: Character offset of the chunk in the source text (inclusive).
        end: Character offset of the chunk end in the source text (exclusive).
        n_tokens: ``count_tokens(text)``: tokens of the chunk with the prompt template applied.
        index: 0-based position of the chunk in the document.
        tokens: The chunk as the engine embeds it: template applied, tokenised once (``n_tokens`` ids). Set by
            :meth:`KVEmbedder.chunk <kvemb_rag.KVEmbedder.chunk>` (embed such chunks with
            :meth:`KVEmbedder.encode_tokenized <kvemb_rag.KVEmbedder.encode_tokenized>`); ``None`` from
            :func:`chunk_text`. Not part of a chunk's equality.
    """

    text: str
    start: int
    end: int
    n_tokens: int
    index: int
    tokens: TokenizedText | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise ValueError(
                f"Chunk span must satisfy 0 <= start <= end; got start={self.start}, end={self.end}. "
                "Use character offsets into the source text."
            )
        if len(self.text) != self.end - self.start:
            raise ValueError(
                f"Chunk text has {len(self.text)} characters but its span [{self.start}, {self.end}) has "
                f"{self.end - self.start}; text must be exactly source[start:end]."
            )
        if self.n_tokens < 0 or self.index < 0:
            raise ValueError(
                f"Chunk n_tokens and index must be >= 0; got n_tokens={self.n_tokens}, index={self.index}."
            )
        if self.tokens is not None and len(self.tokens.ids) != self.n_tokens:
            raise ValueError(
                f"Chunk has n_tokens={self.n_tokens} but {len(self.tokens.ids)} token ids; they must be the ids "
                "its size was counted with."
            )


def _is_regional_indicator(ch: str) -> bool:
    return "\U0001f1e6" <= ch <= "\U0001f1ff"


def _is_safe_cut(text: str, pos: int) -> bool:
    r"""Whether ``text`` may be split at ``pos`` without breaking a user-perceived character.

    An approximation of grapheme-cluster boundaries that is enough for chunking: never before a combining
    mark (category M*), a zero-width joiner, an emoji modifier or a tag character; never after a zero-width
    joiner, inside ``"\r\n"``, inside a surrogate pair, or inside a regional-indicator (flag) pair.
    """
    if pos <= 0 or pos >= len(text):
        return True
    ch = text[pos]
    prev = text[pos - 1]
    if prev == _ZWJ or ch == _ZWJ or (prev == "\r" and ch == "\n"):
        return False
    if "\ud800" <= prev <= "\udbff":
        return False
    if "\U0001f3fb" <= ch <= "\U0001f3ff" or "\U000e0020" <= ch <= "\U000e007f":
        return False
    if _is_regional_indicator(ch) and _is_regional_indicator(prev):
        # Flags are pairs of regional indicators: split only after an even-length run of them.
        run = 0
        while pos - run > 0 and _is_regional_indicator(text[pos - run - 1]):
            run += 1
        return run % 2 == 0
    return not (unicodedata.combining(ch) or unicodedata.category(ch).startswith("M"))


class _Chunker:
    """State for chunking one document: raw token offsets, split-point tables and the budget."""

    def __init__(
        self,
        text: str,
        offsets: Sequence[tuple[int, int]],
        max_tokens: int,
        budget: int,
        count_tokens: Callable[[str], int],
    ) -> None:
        self.text = text
        self.n_chars = len(text)
        self.content_end = len(text.rstrip())
        self.max_tokens = max_tokens
        self.budget = budget
        self._count_fn = count_tokens
        # Token start offsets, made non-decreasing so bisect is valid whatever the tokenizer reports.
        starts: list[int] = []
        running = 0
        for tok_start, _ in offsets:
            running = max(running, min(int(tok_start), self.n_chars))
            starts.append(running)
        self.starts = starts
        self.n_tok = len(starts)
        token_cuts = sorted({s for s in starts if 0 < s < self.n_chars and _is_safe_cut(text, s)})
        # Most preferred level first; the token level is last and never refused.
        self.levels: list[list[int]] = [
            self._match_ends(_PARAGRAPH_RE),
            self._match_ends(_SENTENCE_RE),
            self._match_ends(_WORD_RE),
            token_cuts,
        ]
        self.token_cuts = token_cuts

    def _match_ends(self, pattern: re.Pattern[str]) -> list[int]:
        ends = (m.end() for m in pattern.finditer(self.text))
        return [e for e in ends if 0 < e < self.n_chars and _is_safe_cut(self.text, e)]

    def count(self, start: int, end: int) -> int:
        return int(self._count_fn(self.text[start:end]))

    def tok_idx(self, pos: int) -> int:
        """Number of raw tokens that start before character ``pos``."""
        return bisect_left(self.starts, pos)

    def char_at(self, tok: int) -> int:
        """Character position where raw token ``tok`` starts (``len(text)`` past the last token)."""
        return self.starts[tok] if tok < self.n_tok else self.n_chars

    def pick(self, start: int, t0: int, allowance: int) -> int | None:
        """The preferred split point for a chunk from ``start`` holding at most ``allowance`` raw tokens."""
        hi = self.char_at(t0 + allowance)
        if hi <= start:
            return None
        need = math.ceil(allowance * _MIN_FILL)
        best: int | None = None
        for level, cuts in enumerate(self.levels):
            i = bisect_right(cuts, hi) - 1
            if i < 0 or cuts[i] <= start:
                continue
            cut = cuts[i]
            if level == len(self.levels) - 1 or self.tok_idx(cut) - t0 >= need:
                return cut
            best = cut if best is None else max(best, cut)
        return best

    def largest_fitting(self, start: int, cands: Sequence[int]) -> tuple[int, int] | None:
        """Binary search for the largest candidate end (ascending ``cands``) whose chunk fits."""
        lo, hi = 0, len(cands) - 1
        best: tuple[int, int] | None = None
        while lo <= hi:
            mid = (lo + hi) // 2
            n = self.count(start, cands[mid])
            if n <= self.max_tokens:
                best = (cands[mid], n)
                lo = mid + 1
            else:
                hi = mid - 1
        return best

    def fit(self, start: int) -> tuple[int, int]:
        """End and template token count of the chunk starting at ``start``."""
        end, n = self._fit(start)
        if self.content_end <= end < self.n_chars:
            # Only whitespace would be left for a last chunk: keep it in this one when it fits, else end
            # this chunk at the last token boundary before the trailing whitespace.
            n_all = self.count(start, self.n_chars)
            if n_all <= self.max_tokens:
                return self.n_chars, n_all
            i = bisect_left(self.token_cuts, self.content_end) - 1
            if i >= 0 and self.token_cuts[i] > start:
                n_alt = self.count(start, self.token_cuts[i])
                if n_alt <= self.max_tokens:
                    return self.token_cuts[i], n_alt
        return end, n

    def _fit(self, start: int) -> tuple[int, int]:
        t0 = self.tok_idx(start)
        remaining = self.n_tok - t0
        if remaining <= self.budget:
            n = self.count(start, self.n_chars)
            if n <= self.max_tokens:
                return self.n_chars, n
            allowance = remaining - (n - self.max_tokens)
        else:
            allowance = self.budget
        for _ in range(_MAX_SHRINK_STEPS):
            if allowance < 1:
                break
            end = self.pick(start, t0, allowance)
            if end is None:
                break
            n = self.count(start, end)
            if n <= self.max_tokens:
                return end, n
            allowance = min(allowance, self.tok_idx(end) - t0) - (n - self.max_tokens)
        return self._fit_fallback(start, t0)

    def _fit_fallback(self, start: int, t0: int) -> tuple[int, int]:
        logger.debug("chunking: boundary picks overshot at char %d; binary-searching token boundaries", start)
        upper = self.char_at(t0 + self.budget)
        lo_i = bisect_right(self.token_cuts, start)
        hi_i = bisect_right(self.token_cuts, upper)
        cands = self.token_cuts[lo_i:hi_i]
        found = self.largest_fitting(start, cands)
        if found is not None:
            return found
        # Not even one raw token fits (or there is no token boundary in reach): cut between characters.
        limit = cands[0] if cands else max(upper, self.char_at(t0 + 1))
        limit = min(max(limit, start + 1), self.n_chars)
        safe = [p for p in range(start + 1, limit + 1) if _is_safe_cut(self.text, p)]
        found = self.largest_fitting(start, safe)
        if found is not None:
            return found
        found = self.largest_fitting(start, range(start + 1, limit + 1))
        if found is not None:
            logger.warning(
                "chunking: cut inside a grapheme cluster at char %d: the cluster alone exceeds max_tokens=%d",
                found[0],
                self.max_tokens,
            )
            return found
        raise ConfigError(
            f"max_tokens={self.max_tokens} is too small: the prompt template plus the single character "
            f"{self.text[start]!r} (at offset {start}) already takes {self.count(start, start + 1)} tokens. "
            "Raise max_tokens (the engine's max_length) or use a shorter prompt template."
        )

    def overlap_start(self, prev_start: int, prev_end: int, overlap: int) -> int:
        """Start of the chunk after ``[prev_start, prev_end)``: ``overlap`` raw tokens before its end."""
        t_end = self.tok_idx(prev_end)
        target = max(t_end - overlap, 0)
        pos = self.char_at(target)
        # Prefer starting on a word if one begins a little (a quarter of the overlap) earlier.
        words = self.levels[2]
        floor = self.char_at(max(target - overlap // 4, 0))
        i = bisect_right(words, pos) - 1
        if i >= 0 and words[i] >= floor:
            pos = words[i]
        back = pos
        while back > prev_start and not _is_safe_cut(self.text, back):
            back -= 1
        if back > prev_start:
            return min(back, prev_end)
        # The previous chunk is (nearly) shorter than the overlap: start at the first safe cut after the
        # target instead, so every chunk starts after the previous one.
        fwd = max(pos, prev_start + 1)
        while fwd < prev_end and not _is_safe_cut(self.text, fwd):
            fwd += 1
        return min(fwd, prev_end)


def chunk_text(
    text: str,
    *,
    tokenizer: PreTrainedTokenizerBase,
    max_tokens: int,
    count_tokens: Callable[[str], int],
    overlap: int = 0,
) -> list[Chunk]:
    """Split ``text`` into chunks that each fit ``max_tokens`` once wrapped in the prompt template.

    Split points prefer paragraph, then sentence, then word, then token boundaries; see the module
    docstring for the exact rule (latest boundary of the most preferred level that fills at least half of
    the budget). Chunk spans are contiguous (``overlap=0``) or overlapping, the first starts at 0 and the
    last ends at ``len(text)``, so no text is dropped. Whitespace-only chunks occur only around whitespace
    runs too long to share a chunk with their neighbours.

    Args:
        text: The document.
        tokenizer: The model's *fast* tokenizer; used once on the whole document for token offsets.
        max_tokens: Token limit per chunk, prompt template included.
        count_tokens: ``count_tokens(s)`` returns the number of tokens of ``s`` wrapped in its prompt
            template (special tokens included); every chunk satisfies ``count_tokens(chunk.text) <=
            max_tokens``.
        overlap: Approximate number of raw tokens each chunk starts before the previous chunk's end
            (``0`` = contiguous chunks). Must be below the usable budget ``max_tokens -
            count_tokens("")``.

    Returns:
        The chunks in document order, ``index`` 0..n-1; ``[]`` for empty or whitespace-only text.

    Raises:
        TypeError: ``text`` is not a str, ``max_tokens``/``overlap`` are not ints, or the tokenizer is
            not a fast tokenizer.
        ValueError: ``max_tokens`` leaves no room for text next to the template (or a single character
            does not fit), or ``overlap`` is out of range.

    Example:
        >>> chunks = chunk_text(doc, tokenizer=tok, max_tokens=512, count_tokens=count)  # doctest: +SKIP
        >>> "".join(c.text for c in chunks) == doc  # doctest: +SKIP
        True
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}. Pass the document as a string.")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise TypeError(f"max_tokens must be an int; got {max_tokens!r} ({type(max_tokens).__name__}).")
    if isinstance(overlap, bool) or not isinstance(overlap, int):
        raise TypeError(f"overlap must be an int; got {overlap!r} ({type(overlap).__name__}).")
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be >= 1; got {max_tokens}. Pass the model's token limit.")
    if overlap < 0:
        raise ConfigError(f"overlap must be >= 0 tokens; got {overlap}. Use 0 for contiguous chunks.")
    overhead = int(count_tokens(""))
    budget = max_tokens - overhead
    if budget < 1:
        raise ConfigError(
            f"max_tokens={max_tokens} is too small for the prompt template, which alone takes {overhead} "
            f"tokens (count_tokens('')); no room is left for text. Use max_tokens > {overhead} (ideally "
            "much larger) or a shorter prompt template."
        )
    if overlap >= budget:
        raise ConfigError(
            f"overlap={overlap} must be below the usable budget of {budget} tokens (max_tokens={max_tokens} "
            f"minus {overhead} template tokens); valid range is 0..{budget - 1}. Lower overlap (typically "
            "10-20% of the budget) or raise max_tokens."
        )
    if not text.strip():
        return []
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"chunk_text needs a fast tokenizer (offset mapping); got {type(tokenizer).__name__}. Load it "
            "with AutoTokenizer.from_pretrained(..., use_fast=True)."
        )

    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
    chunker = _Chunker(text, encoding["offset_mapping"], max_tokens, budget, count_tokens)

    chunks: list[Chunk] = []
    start = 0
    while True:
        end, n = chunker.fit(start)
        if chunks and end <= chunks[-1].end:
            # The overlapped chunk shrank so much it adds nothing: start this one contiguously instead.
            start = chunks[-1].end
            end, n = chunker.fit(start)
        chunks.append(Chunk(text=text[start:end], start=start, end=end, n_tokens=n, index=len(chunks)))
        if end >= len(text):
            break
        start = chunker.overlap_start(start, end, overlap) if overlap else end
    logger.debug("chunking: %d chars -> %d chunks (max_tokens=%d)", len(text), len(chunks), max_tokens)
    return chunks


def combine_chunk_vectors(vectors: np.ndarray, n_tokens: Sequence[int]) -> np.ndarray:
    """Merge chunk vectors into one document vector: token-count-weighted mean, unit L2 norm.

    Args:
        vectors: Chunk vectors, shape ``(n_chunks, dim)`` with ``n_chunks >= 1``.
        n_tokens: Weight of each chunk (its token count, e.g. ``Chunk.n_tokens``), length ``n_chunks``,
            all ``> 0``.

    Returns:
        float32 array of shape ``(dim,)`` with unit L2 norm.

    Raises:
        ValueError: Shapes disagree, weights are not positive, values are not finite, or the weighted
            mean is the zero vector (no direction to normalise).

    Example:
        >>> combine_chunk_vectors(np.array([[1.0, 0.0], [0.0, 1.0]]), [3, 1]).round(3)
        array([0.949, 0.316], dtype=float32)
    """
    arr = np.asarray(vectors, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(
            f"vectors must have shape (n_chunks, dim) with n_chunks >= 1 and dim >= 1; got shape "
            f"{arr.shape}. Stack the chunk vectors as rows, e.g. np.stack(chunk_vectors)."
        )
    weights = np.asarray(n_tokens, dtype=np.float64)
    if weights.shape != (arr.shape[0],):
        raise ValueError(
            f"n_tokens must have one entry per chunk vector: expected shape ({arr.shape[0]},), got "
            f"{weights.shape}. Pass [c.n_tokens for c in chunks] in the same order as the vectors."
        )
    if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise ValueError(f"n_tokens must all be finite and > 0; got {weights.tolist()}. Use each chunk's token count.")
    if not np.all(np.isfinite(arr)):
        raise ValueError("vectors contain NaN or inf; check the embedding step that produced them.")
    mean = weights @ arr / weights.sum()  # (dim,)
    norm = float(np.linalg.norm(mean))
    if norm == 0.0 or not math.isfinite(norm):
        raise ValueError(
            "The weighted mean of the chunk vectors is the zero vector, so it cannot be normalised to unit "
            "length; the chunk vectors cancel out. Check that the chunk vectors are non-degenerate."
        )
    return (mean / norm).astype(np.float32)
