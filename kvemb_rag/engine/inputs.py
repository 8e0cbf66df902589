"""The engine's input stage: a text becomes token ids once, and those ids reach the forward pass.

A text is wrapped in its side's template and tokenised in :meth:`InputStage.tokenize`, once: the result, a
:class:`TokenizedText`, is what the server counts against its limits, what a chunk carries
(:attr:`~kvemb_rag.engine.chunking.Chunk.tokens`) and what :mod:`~kvemb_rag.engine.forward` pads into batches.
Cutting a long text tokenises its raw form once for split offsets and each candidate chunk once (with the
template); the chosen chunks keep the ids their size was checked with, so nothing is tokenised again to embed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvemb_rag.engine.chunking import Chunk, chunk_text
from kvemb_rag.engine.config import PROMPT_NAMES, EmbedderConfig
from kvemb_rag.errors import ConfigError, InputError

__all__ = ["InputStage", "TokenizedText", "Unit", "check_texts", "side_of", "tokens_of"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizedText:
    """A text as the forward pass takes it: wrapped in its side's template and tokenised, once.

    Made by :meth:`KVEmbedder.tokenize <kvemb_rag.KVEmbedder.tokenize>` (and carried by the chunks of
    :meth:`KVEmbedder.chunk <kvemb_rag.KVEmbedder.chunk>`); embedded by
    :meth:`KVEmbedder.encode_tokenized <kvemb_rag.KVEmbedder.encode_tokenized>` of the same embedder.

    Attributes:
        text: The text, without its template.
        side: ``"query"`` or ``"document"``: whose template wraps it.
        ids: Token ids of the wrapped text, special tokens included.
        pool_mask: ``echo`` only: 1 on the tokens of the text's second copy (what is pooled); else ``None``.
    """

    text: str
    side: str
    ids: tuple[int, ...]
    pool_mask: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Unit:
    """One forward-pass row: a whole input or one chunk of an over-long one."""

    owner: int  # index of the input it belongs to
    tokens: TokenizedText  # its ids; their count weighs the chunk when an input's chunks are combined


def check_texts(texts: Sequence[Any]) -> list[str]:
    """``texts`` as a list, refusing non-strings and empty or whitespace-only strings (their indices named)."""
    checked: list[str] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str: {text!r:.80}. Pass strings only.")
        checked.append(text)
    blank = [i for i, t in enumerate(checked) if not t.strip()]
    if blank:
        raise InputError(
            f"texts at indices {blank[:10]}{'...' if len(blank) > 10 else ''} are empty or whitespace-only; "
            "they carry no content to embed. Filter them out before encoding."
        )
    return checked


def side_of(prompt_name: str | None) -> str:
    """The template side of ``prompt_name`` (``None``: the document side)."""
    side = "document" if prompt_name is None else prompt_name
    if side not in PROMPT_NAMES:
        raise ConfigError(f"prompt_name={prompt_name!r} is not valid; choose one of None, 'query', 'document'.")
    return side


def tokens_of(item: TokenizedText | Chunk, i: int) -> TokenizedText:
    """The tokens of an input of :meth:`KVEmbedder.encode_tokenized <kvemb_rag.KVEmbedder.encode_tokenized>`."""
    if isinstance(item, TokenizedText):
        return item
    if isinstance(item, Chunk):
        if item.tokens is None:
            raise InputError(
                f"inputs[{i}] is a Chunk without tokens (made by chunk_text); cut texts with KVEmbedder.chunk, "
                "whose chunks carry their token ids, or embed their texts with encode."
            )
        return item.tokens
    raise TypeError(
        f"inputs[{i}] is a {type(item).__name__}; pass KVEmbedder.tokenize results or KVEmbedder.chunk chunks."
    )


class InputStage:
    """Texts to forward-pass rows for one embedder: templates, tokenisation, chunking, over-long inputs.

    Args:
        tokenizer: The model's fast tokenizer.
        config: The embedder's settings (templates, pooling).
        max_length: Tokens per forward pass, template included.
    """

    def __init__(self, tokenizer: Any, config: EmbedderConfig, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.max_length = max_length
        self._template_sizes: dict[str, int] = {}  # side -> tokens of its template alone

    def format(self, text: str, side: str) -> str:
        """``text`` wrapped in ``side``'s template."""
        return self.config.template(side).format(text=text)

    def tokenize(self, texts: Sequence[str], side: str) -> list[TokenizedText]:
        """Wrap ``texts`` in ``side``'s template and tokenise them, in one tokenizer call."""
        if not texts:
            return []
        template = self.config.template(side)
        formatted = [template.format(text=t) for t in texts]
        echo = self.config.pooling_mode == "echo"
        enc = self.tokenizer(formatted, add_special_tokens=True, return_offsets_mapping=echo)
        ids: list[list[int]] = enc["input_ids"]
        if not echo:
            return [TokenizedText(text, side, tuple(row)) for text, row in zip(texts, ids, strict=True)]
        head, middle, _ = (part.replace("{{", "{").replace("}}", "}") for part in template.split("{text}"))
        inputs: list[TokenizedText] = []
        for text, row, offsets in zip(texts, ids, enc["offset_mapping"], strict=True):
            start = len(head) + len(text) + len(middle)  # the second copy (docs/method.md, "Baselines")
            end = start + len(text)
            mask = tuple(int(e > s and s < end and e > start) for s, e in offsets)
            inputs.append(TokenizedText(text, side, tuple(row), mask))
        return inputs

    def template_size(self, side: str) -> int:
        """Tokens of ``side``'s template around an empty text (special tokens included); counted once."""
        if side not in self._template_sizes:
            self._template_sizes[side] = len(self.tokenize([""], side)[0].ids)
        return self._template_sizes[side]

    def count(self, text: str, side: str) -> int:
        """Tokens of ``text`` wrapped in ``side``'s template."""
        return self.template_size(side) if not text else len(self.tokenize([text], side)[0].ids)

    def chunk(self, text: str, side: str, overlap: int = 0, max_tokens: int | None = None) -> list[Chunk]:
        """``text`` cut into chunks of at most ``max_tokens`` with the template, each carrying its ids.

        See :meth:`KVEmbedder.chunk <kvemb_rag.KVEmbedder.chunk>`. Every candidate chunk is tokenised once
        (with the template) to check its size; the chosen ones keep those ids as :attr:`Chunk.tokens`.
        """
        self.config.template(side)  # validates `side`
        budget = self.max_length if max_tokens is None else max_tokens
        floor = self.template_size(side) + 1
        if isinstance(budget, bool) or not isinstance(budget, int) or not floor <= budget <= self.max_length:
            raise ConfigError(
                f"max_tokens={max_tokens!r}: a chunk must hold the {side} template ({floor - 1} tokens) and "
                f"some text, and fit the engine's max_length; use an int in [{floor}, {self.max_length}]."
            )
        measured: dict[str, TokenizedText] = {}  # candidate text -> its tokens (a candidate is tokenised once)

        def count(piece: str) -> int:
            if not piece:
                return self.template_size(side)
            if piece not in measured:
                measured[piece] = self.tokenize([piece], side)[0]
            return len(measured[piece].ids)

        chunks = chunk_text(text, tokenizer=self.tokenizer, max_tokens=budget, count_tokens=count, overlap=overlap)
        # Every chunk's size was counted on its exact text, so its tokens are among the measured ones.
        return [dataclasses.replace(c, tokens=measured[c.text]) for c in chunks]

    def units(self, inputs: Sequence[TokenizedText], overflow: str) -> list[Unit]:
        """Forward-pass rows: an input that fits is one; an over-long one is chunked (or truncated, or refused).

        Args:
            inputs: Tokenised inputs.
            overflow: ``"chunk"``, ``"truncate"`` or ``"error"`` (see :meth:`KVEmbedder.encode
                <kvemb_rag.KVEmbedder.encode>`).
        """
        too_long = [i for i, item in enumerate(inputs) if len(item.ids) > self.max_length]
        if too_long and overflow == "error":
            shown = ", ".join(f"#{i} ({len(inputs[i].ids)} tokens)" for i in too_long[:5])
            sides = " and ".join(sorted({inputs[i].side for i in too_long}))
            raise InputError(
                f"{len(too_long)} text(s) exceed max_length={self.max_length} tokens with the {sides} template: "
                f"{shown}. Use overflow='chunk' (one vector from all chunks) or overflow='truncate', or raise "
                "max_length."
            )
        over = set(too_long)
        units: list[Unit] = []
        for i, item in enumerate(inputs):
            if i not in over:
                units.append(Unit(i, item))
                continue
            chunks = self.chunk(item.text, item.side)
            if overflow == "truncate":
                chunks = chunks[:1]
                logger.info("Text #%d truncated to its first %d characters.", i, chunks[0].end)
            units.extend(Unit(i, c.tokens) for c in chunks if c.tokens is not None)
        return units
