"""The embedding engine's public face: :class:`KVEmbedder`.

It sets an engine up (settings, the loaded model, its identity) and hands the work to its parts, each with one
job: :mod:`~kvemb_rag.engine.inputs` (texts to token ids, once; chunking), :mod:`~kvemb_rag.engine.layers`
(which layers are re-routed: the middle window or the intrinsic-dimension calibration) and
:mod:`~kvemb_rag.engine.forward` (padded batches, the forward pass with re-routing, pooling, chunk combining).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kvemb_rag.engine import layers as layer_selection
from kvemb_rag.engine.centring import Centring
from kvemb_rag.engine.chunking import Chunk
from kvemb_rag.engine.config import (
    DEFAULT_MAX_LENGTH,
    OVERFLOW_MODES,
    RUNTIME_ARGUMENTS,
    SETTINGS,
    EmbedderConfig,
    LayerSelectionConfig,
)
from kvemb_rag.engine.forward import ForwardPass, combine_units
from kvemb_rag.engine.identity import identity_of, settings_from_identity
from kvemb_rag.engine.inputs import InputStage, TokenizedText, check_texts, side_of, tokens_of
from kvemb_rag.engine.loader import LoadedModel, attach_model, load_model, resolve_device
from kvemb_rag.engine.models import default_model
from kvemb_rag.engine.precision import dtype_name, resolve_dtype, runs_natively
from kvemb_rag.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["KVEmbedder"]

logger = logging.getLogger(__name__)


class KVEmbedder:
    """Training-free text embeddings from a decoder-only LLM (KV-Embedding, arXiv 2601.01046).

    At a few layers (a window in the middle of the network by default, or the paper's intrinsic-dimension
    minimum), the last token's key/value is re-routed as an extra prefix slot that every token attends to,
    inside one forward pass; a one-word prompt (PromptEOL's by default, measured) and hybrid
    (last + mean) pooling finish the embedding. See ``docs/method.md`` for the method as implemented and its
    evidence; other strategies are the paper's baselines, with the same API.

    Args:
        model: A decoder-only LLM: hub name (e.g. ``"Qwen/Qwen3-0.6B"``), local folder, GGUF file (or a folder
            holding one), or bundled model name; default ``$KVEMB_MODEL``, else the bundled
            :data:`~kvemb_rag.engine.models.DEFAULT_MODEL` (Gemma-3-270M, installed from the package index).
        strategy: ``"kv"`` (the method), ``"kv-ablation"`` (same prompt and pooling, no re-routing),
            ``"last"``, ``"mean"``, ``"prompteol"`` or ``"echo"``.
        layers: ``"auto"`` (the ``selection`` rule: the middle window by default) or 0-based layer indices.
        bias: Logit bias of the re-routed slot (docs/method.md: 1.0).
        pooling: ``"hybrid"`` (last + mean), ``"last"`` or ``"mean"``; default the strategy's own.
        centring: Centre pooled vectors on a calibration mean (:mod:`~kvemb_rag.engine.centring`); default the
            strategy's own.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available, else CPU.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``; default bfloat16 where it runs natively (CUDA, a
            CPU with AMX, AVX512-BF16 or Arm BF16), else float32.
        max_length: Tokens per forward pass, prompt template included; default 4,096 or the model's
            context size if smaller. Longer texts are chunked (see :meth:`encode`).
        batch_size: Most texts per forward pass.
        max_padding: Largest share of a batch's positions that may be padding: length-sorted batches are also
            cut where lengths drop by more than this, so little compute goes to padding (``1.0``: fixed-size
            batches, as sentence-transformers).
        query_template: Query-side template with ``{text}``; default the strategy's.
        document_template: Document-side template with ``{text}``; default the strategy's.
        calibration_texts: Texts for layer selection; default :func:`default_calibration_texts`.
        cache_dir: Layer-selection cache; default ``$KVEMB_CACHE_DIR`` or ``~/.cache/kvemb-rag``.
        revision: Hub revision.
        trust_remote_code: Passed to transformers.
        allow_unverified_architecture: Opt in to model types outside the verified list.
        selection: The layer-selection rule: ``LayerSelectionConfig(rule="middle" | "intrinsic-dimension")``.
        show_progress_bar: Default for :meth:`encode` and calibration; ``None`` shows bars on a terminal.

    Example:
        >>> emb = KVEmbedder("Qwen/Qwen3-0.6B")  # doctest: +SKIP
        >>> docs = emb.encode_document(["a text", "another"])  # (2, 1024), unit rows  # doctest: +SKIP
        >>> q = emb.encode_query("what is it about?")  # (1024,)  # doctest: +SKIP
        >>> scores = docs @ q  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        strategy: str = "kv",
        layers: str | Sequence[int] = "auto",
        bias: float = 1.0,
        pooling: str | None = None,
        centring: bool | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        batch_size: int = 16,
        max_padding: float = 0.1,
        query_template: str | None = None,
        document_template: str | None = None,
        calibration_texts: Sequence[str] | None = None,
        cache_dir: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        allow_unverified_architecture: bool = False,
        selection: LayerSelectionConfig | None = None,
        show_progress_bar: bool | None = None,
    ) -> None:
        config = _config(
            model,
            {
                "strategy": strategy,
                "layers": layers,
                "bias": bias,
                "pooling": pooling,
                "centring": centring,
                "device": device,
                "dtype": dtype,
                "max_length": max_length,
                "batch_size": batch_size,
                "max_padding": max_padding,
                "query_template": query_template,
                "document_template": document_template,
                "revision": revision,
                "trust_remote_code": trust_remote_code,
                "allow_unverified_architecture": allow_unverified_architecture,
                "cache_dir": cache_dir,
                "selection": selection,
            },
        )
        loaded = load_model(
            config.model,
            revision=config.revision,
            device=config.device,
            dtype=config.dtype,
            trust_remote_code=config.trust_remote_code,
            allow_unverified_architecture=config.allow_unverified_architecture,
            cache_dir=config.cache_dir,
        )
        self._start(config, loaded, calibration_texts, show_progress_bar)

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        name: str | None = None,
        weights_id: str | None = None,
        **settings: Any,
    ) -> KVEmbedder:
        """An embedder on an already-loaded model, sharing its weights (no second copy in memory).

        A RAG application that already holds its LLM for generation embeds with the same weights. The
        model's attention is routed through kvemb-rag's registered function, which runs transformers' own
        SDPA attention whenever no re-routing state is passed, so generation is unchanged.

        Args:
            model: A causal LM (e.g. from :func:`kvemb_rag.engine.loader.load_causal_lm` or
                ``AutoModelForCausalLM.from_pretrained``) or its base model; it keeps its device and dtype.
            tokenizer: Its fast tokenizer (copied; the original is not changed).
            name: The model name recorded in :attr:`identity`; default the one it was loaded from.
            weights_id: Identity of the weights for stores; default the GGUF file's hash when it came from
                :func:`~kvemb_rag.engine.loader.load_causal_lm`, else a hash of the parameters.
            **settings: Other :class:`KVEmbedder` settings (``strategy``, ``layers``, ``max_length``...);
                ``device``, ``dtype`` and ``revision`` are the model's own and cannot be given.

        Returns:
            The embedder; :attr:`model` is ``model``'s base model (the same tensors).

        Example:
            >>> from kvemb_rag.engine.loader import load_causal_lm
            >>> llm, tok = load_causal_lm("smollm2-135m-instruct")  # doctest: +SKIP
            >>> emb = KVEmbedder.from_model(llm, tok)  # doctest: +SKIP
            >>> emb.model is llm.model  # doctest: +SKIP
            True
        """
        fixed = sorted({"device", "dtype", "revision", "trust_remote_code"} & set(settings))
        if fixed:
            raise TypeError(
                f"KVEmbedder.from_model() got {fixed}: an attached model keeps its own device, dtype and weights; "
                "move or cast the model itself before attaching it."
            )
        loaded = attach_model(
            model,
            tokenizer,
            name=name,
            weights_id=weights_id,
            allow_unverified_architecture=bool(settings.get("allow_unverified_architecture", False)),
        )
        return cls._on_loaded(loaded, loaded.name, settings)

    @classmethod
    def from_identity(cls, identity: Mapping[str, Any], **overrides: Any) -> KVEmbedder:
        """The embedder a store's collection was indexed with, rebuilt from its recorded identity.

        The recorded layers are explicit, so no layer selection runs.

        Args:
            identity: An embedder identity (:attr:`identity`, e.g. :attr:`kvemb_rag.store.KVStore.identity`).
            **overrides: Other settings (``device``, ``cache_dir``, ``model`` to load the same weights from
                another location...).

        Returns:
            The embedder; its identity equals ``identity`` unless an override changes it.

        Raises:
            ConfigError: ``identity`` lacks the ``model`` entry.
        """
        settings = {**settings_from_identity(identity), **overrides}
        recorded = settings.get("dtype")
        if "dtype" not in overrides and recorded is not None:
            device = resolve_device(settings.get("device"))
            if not runs_natively(resolve_dtype(recorded, device), device):
                settings["dtype"] = None  # this machine's default; the vectors agree to rounding
                logger.info(
                    "The collection was built in %s, which this %s does not compute natively; embedding in %s "
                    'instead (the vectors agree to rounding, docs/method.md "Precision"). Pass dtype=%r to '
                    "keep %s (slower here).",
                    recorded,
                    device.type,
                    dtype_name(resolve_dtype(None, device)),
                    recorded,
                    recorded,
                )
        return cls(str(settings.pop("model")), **settings)

    @classmethod
    def _on_loaded(cls, loaded: LoadedModel, model: str, settings: Mapping[str, Any]) -> KVEmbedder:
        """An embedder on an already-loaded model (``from_model``, ``with_options`` of an attached one)."""
        given = dict(settings)
        runtime = {name: given.pop(name) for name in RUNTIME_ARGUMENTS if name in given}
        unknown = sorted(set(given) - set(SETTINGS[1:]))
        if unknown:
            raise TypeError(f"KVEmbedder got unknown settings {unknown}; valid: {[*SETTINGS[1:], *RUNTIME_ARGUMENTS]}.")
        embedder = cls.__new__(cls)
        embedder._start(_config(model, {**given, "device": loaded.device, "dtype": loaded.dtype}), loaded, **runtime)
        return embedder

    def _start(
        self,
        config: EmbedderConfig,
        loaded: LoadedModel,
        calibration_texts: Sequence[str] | None = None,
        show_progress_bar: bool | None = None,
    ) -> None:
        """Set the engine up on ``loaded``: max_length, its input stage, its layers and its forward pass."""
        self.config = config
        self.show_progress_bar = show_progress_bar
        self._calibration_texts = list(calibration_texts) if calibration_texts is not None else None
        self._loaded = loaded
        self.max_length = _max_length(config.max_length, loaded.context_size, config.model)
        self._inputs = InputStage(loaded.tokenizer, config, self.max_length)
        self._forward = ForwardPass.of(loaded, config)
        self.layers, selection = layer_selection.resolve_layers(config, loaded.num_layers, self.select_layers)
        self.id_curve = None if selection is None else list(selection.id_curve)
        self._forward = self._forward.rerouting(self.layers)
        cache = layer_selection.cache_directory(config.cache_dir)
        self._centring = Centring(cache, lambda: self.identity, self._uncentred) if config.centring_mode else None
        if self.layers:  # refuse a model whose selected layers do not route through our attention function
            self._forward.check_routing(self._inputs.tokenize(["census"], "document")[0])

    def _uncentred(self) -> Callable[[list[str]], np.ndarray]:
        """Embeds documents as this engine does but without centring (for the calibration mean)."""
        return self.with_options(centring=False, show_progress_bar=False).encode_document

    # ----------------------------------------------------------------------------------- properties
    @property
    def tokenizer(self) -> Any:
        """The model's (fast) tokenizer, padding on the right."""
        return self._loaded.tokenizer

    @property
    def model(self) -> torch.nn.Module:
        """The loaded base model (shared with other embedders of the same weights, device and dtype)."""
        return self._loaded.model

    @property
    def dim(self) -> int:
        """Embedding size."""
        return self._loaded.hidden_size

    @property
    def device(self) -> torch.device:
        """Device the model runs on."""
        return self._loaded.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype."""
        return self._loaded.dtype

    @property
    def strategy(self) -> str:
        """The strategy name."""
        return self.config.strategy

    @property
    def name(self) -> str:
        """Short name, e.g. ``"Qwen/Qwen3-0.6B:kv"`` (for evaluation records)."""
        return f"{self.config.model}:{self.config.strategy}"

    @property
    def resolved_config(self) -> EmbedderConfig:
        """:attr:`config` with every default resolved: the layers, templates, pooling, max_length and dtype used."""
        return dataclasses.replace(
            self.config.explicit(),
            layers=self.layers,
            max_length=self.max_length,
            dtype=dtype_name(self.dtype),
        )

    @property
    def identity(self) -> dict[str, Any]:
        """Everything that makes two embedders' vectors comparable, JSON-serialisable (:mod:`.identity`)."""
        return identity_of(self.resolved_config, self._loaded.fingerprint())

    def __repr__(self) -> str:
        return (
            f"KVEmbedder(model={self.config.model!r}, strategy={self.config.strategy!r}, layers={list(self.layers)}, "
            f"device='{self.device}', dtype={str(self.dtype).removeprefix('torch.')}, max_length={self.max_length})"
        )

    def with_options(self, **changes: Any) -> KVEmbedder:
        """A new embedder with some settings changed, sharing this one's loaded model when possible.

        Args:
            **changes: Any :class:`KVEmbedder` keyword argument, e.g. ``max_length=512``.

        Returns:
            The new embedder (layer selection comes from the disk cache when it applies).
        """
        kwargs: dict[str, Any] = {
            "model": self.config.model,
            **self.config.settings(),
            "calibration_texts": self._calibration_texts,
            "show_progress_bar": self.show_progress_bar,
        }
        unknown = set(changes) - set(kwargs)
        if unknown:
            raise TypeError(f"with_options() got unknown settings {sorted(unknown)}; valid: {sorted(kwargs)}.")
        kwargs.update(changes)
        model = kwargs.pop("model")
        if self._loaded.attached and model == self.config.model:
            # An attached model cannot be reloaded by name: the new embedder shares it.
            for fixed in ("device", "dtype"):
                value = kwargs.pop(fixed)
                if value is not None and str(value).removeprefix("torch.") != getattr(self.config, fixed):
                    raise ConfigError(
                        f"{fixed}={value!r}: an attached model keeps its own {fixed} "
                        f"({getattr(self.config, fixed)!r}); move or cast the model itself."
                    )
            return KVEmbedder._on_loaded(self._loaded, model, kwargs)
        return KVEmbedder(model, **kwargs)

    # ------------------------------------------------------------------------------- layer selection
    def select_layers(self) -> layer_selection.LayerSelection:
        """Run (or read from the cache) the paper's intrinsic-dimension layer selection (docs/method.md).

        ``layers="auto"`` uses it when ``selection.rule == "intrinsic-dimension"``; ``kvemb layers`` uses it to
        show the curve whatever the rule.

        Returns:
            The selection, with the per-layer ID curve (index ``l`` = the input of decoder layer ``l``).
        """
        return layer_selection.select_layers(
            self.config,
            self._loaded.fingerprint(),
            self.dtype,
            self._calibration_texts,
            self._inputs,
            self._forward,
            progress=self.show_progress_bar,
        )

    # ---------------------------------------------------------------------------------- tokenising
    def format(self, text: str, prompt_name: str = "document") -> str:
        """``text`` wrapped in the ``prompt_name`` side's template."""
        return self._inputs.format(text, prompt_name)

    def count_tokens(self, text: str, prompt_name: str = "document") -> int:
        """Number of tokens of ``text`` with its template applied (special tokens included)."""
        return self._inputs.count(text, prompt_name)

    def tokenize(self, texts: str | Sequence[str], prompt_name: str | None = None) -> list[TokenizedText]:
        """Texts wrapped in a side's template and tokenised, once: what :meth:`encode_tokenized` embeds.

        A caller that needs token counts before embedding (the server's limits and batching) counts these and
        embeds them, instead of tokenising each text twice.

        Args:
            texts: A string or a sequence of strings (non-empty, not whitespace-only).
            prompt_name: ``"query"`` or ``"document"`` (``None``: the document side), as in :meth:`encode`.

        Returns:
            One :class:`~kvemb_rag.engine.inputs.TokenizedText` per text, in order; ``len(t.ids)`` is its
            :meth:`count_tokens`.
        """
        items = check_texts([texts] if isinstance(texts, str) else list(texts))
        return self._inputs.tokenize(items, side_of(prompt_name))

    def chunk(
        self, text: str, prompt_name: str = "document", overlap: int = 0, *, max_tokens: int | None = None
    ) -> list[Chunk]:
        """Split ``text`` into chunks that each fit ``max_tokens`` with the template applied.

        Args:
            text: The document.
            prompt_name: The side whose template is applied (``"query"`` or ``"document"``).
            overlap: Tokens shared by consecutive chunks.
            max_tokens: Tokens per chunk, template included; default (and at most) :attr:`max_length`.
                Retrieval stores use smaller chunks than the engine can embed (see ``KVStore(chunk_size=)``).

        Returns:
            Chunks with their character spans in ``text`` and their token ids (:attr:`Chunk.tokens`, embedded
            as they are by :meth:`encode_tokenized`); ``[]`` for an empty or whitespace-only text.

        Raises:
            ValueError: ``max_tokens`` is not an int between the template's own length + 1 and
                :attr:`max_length`.
        """
        return self._inputs.chunk(text, prompt_name, overlap, max_tokens)

    # ------------------------------------------------------------------------------------ encode
    def _check_run(self, overflow: str, batch_size: int | None) -> int:
        """Validate ``overflow`` and ``batch_size``; returns the batch size in effect."""
        if overflow not in OVERFLOW_MODES:
            valid = ", ".join(map(repr, OVERFLOW_MODES))
            raise ConfigError(f"overflow={overflow!r} is not valid; choose one of {valid}.")
        size = self.config.batch_size if batch_size is None else batch_size
        if size < 1:
            raise ConfigError(f"batch_size={size} must be >= 1.")
        return size

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        prompt_name: str | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        normalize: bool = True,
        overflow: str = "chunk",
        prompt: str | None = None,
    ) -> np.ndarray:
        """Embed texts.

        Texts are tokenised once, sorted by token count (longest first) into batches of at most
        ``batch_size`` rows and at most ``max_padding`` padding (see :mod:`kvemb_rag.engine.batching`), and returned
        in the input order.

        Args:
            texts: A string or a sequence of strings (non-empty, not whitespace-only).
            prompt_name: ``"query"`` or ``"document"``: which side's template wraps the text (as
                sentence-transformers' ``prompt_name`` picks a stored prompt). ``None`` uses the document side
                (the symmetric-task prompt, docs/method.md).
            batch_size: Rows per forward pass; default the embedder's.
            show_progress_bar: Show a progress bar over batches; default the embedder's.
            normalize: L2-normalise the vectors (cosine similarity = dot product).
            overflow: For texts longer than :attr:`max_length` tokens with their template: ``"chunk"``
                (default: split with :meth:`chunk`, embed every chunk, return their token-count-weighted
                mean of unit chunk vectors, re-normalised), ``"truncate"`` (embed only the first chunk) or
                ``"error"`` (raise).
            prompt: Deprecated name of ``prompt_name`` (it warns); unlike sentence-transformers' ``prompt``, it
                never was a prompt string.

        Returns:
            ``float32`` array ``(n, dim)``; ``(dim,)`` for a single string; ``(0, dim)`` for an empty list.

        Raises:
            TypeError: An item that is not a ``str`` (its index and type are named).
            ValueError: Empty or whitespace-only texts (their indices are named), an unknown ``prompt`` or
                ``overflow``, or over-long texts with ``overflow="error"``.
        """
        single = isinstance(texts, str)
        if not single and not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}.")
        items = check_texts([texts] if single else list(texts))
        if prompt is not None:
            if prompt_name is not None:
                raise ConfigError(f"prompt={prompt!r} and prompt_name={prompt_name!r}: give prompt_name only.")
            warnings.warn(
                "encode(prompt=...) is deprecated: it names the side, so it is now prompt_name= "
                "(as in sentence-transformers); prompt= will be removed.",
                DeprecationWarning,
                stacklevel=2,
            )
            prompt_name = prompt
        side = side_of(prompt_name)
        self._check_run(overflow, batch_size)
        vectors = self.encode_tokenized(
            self._inputs.tokenize(items, side),
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            normalize=normalize,
            overflow=overflow,
        )
        return vectors[0] if single else vectors

    def encode_tokenized(
        self,
        inputs: Sequence[TokenizedText | Chunk],
        *,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        normalize: bool = True,
        overflow: str = "chunk",
    ) -> np.ndarray:
        """Embed texts this embedder already tokenised: :meth:`tokenize`'s output or :meth:`chunk`'s chunks.

        Nothing is tokenised again (except to cut an over-long input with ``overflow="chunk"`` or
        ``"truncate"``); the vectors equal :meth:`encode`'s of the same texts on the same sides. Inputs may mix
        sides: each carries its own.

        Args:
            inputs: :class:`~kvemb_rag.engine.inputs.TokenizedText` or :class:`~kvemb_rag.engine.chunking.Chunk`
                (from :meth:`chunk`) items, made by this embedder.
            batch_size: Rows per forward pass; default the embedder's.
            show_progress_bar: Show a progress bar over batches; default the embedder's.
            normalize: L2-normalise the vectors.
            overflow: For inputs over :attr:`max_length` tokens: as in :meth:`encode`.

        Returns:
            ``float32`` array ``(len(inputs), dim)``.

        Raises:
            TypeError: An item that is neither (its index is named).
            ValueError: A chunk without tokens (from :func:`~kvemb_rag.engine.chunking.chunk_text`), an unknown
                ``overflow``, or over-long inputs with ``overflow="error"``.
        """
        size = self._check_run(overflow, batch_size)
        items = [tokens_of(item, i) for i, item in enumerate(inputs)]
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        units = self._inputs.units(items, overflow)
        show = self.show_progress_bar if show_progress_bar is None else show_progress_bar
        pooled = self._forward.pool_units(units, size, show)  # (U, H): the pooled vectors, one per unit
        if self._centring is not None:
            pooled = self._centring.apply(pooled)  # (U, H): unit rows less the calibration mean
        return combine_units(units, pooled, len(items), normalize)  # (n, H)

    def encode_query(self, texts: str | Sequence[str], **kwargs: Any) -> np.ndarray:
        """Embed retrieval queries (the query-side template). Same arguments as :meth:`encode`."""
        return self.encode(texts, prompt_name="query", **kwargs)

    def encode_document(self, texts: str | Sequence[str], **kwargs: Any) -> np.ndarray:
        """Embed documents (the document-side template). Same arguments as :meth:`encode`."""
        return self.encode(texts, prompt_name="document", **kwargs)


def _config(model: str | None, settings: Mapping[str, Any]) -> EmbedderConfig:
    """The validated settings of :class:`KVEmbedder`'s keyword arguments (layers, device and dtype normalised)."""
    layers, device, dtype = settings.get("layers", "auto"), settings.get("device"), settings.get("dtype")
    return EmbedderConfig(
        **{
            **settings,
            "model": default_model() if model is None else str(model),
            "layers": layers if isinstance(layers, str) else tuple(layers),
            "selection": settings.get("selection") or LayerSelectionConfig(),
            "device": None if device is None else str(device),
            "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
        }
    )


def _max_length(requested: int | None, context: int | None, model: str) -> int:
    """The tokens per forward pass: ``requested`` (at most the model's context), else the default."""
    if requested is None:
        return min(DEFAULT_MAX_LENGTH, context) if context else DEFAULT_MAX_LENGTH
    if context and requested > context:
        raise ConfigError(
            f"max_length={requested} exceeds the context size of {model!r} "
            f"({context} tokens, max_position_embeddings); use max_length <= {context}."
        )
    return requested
