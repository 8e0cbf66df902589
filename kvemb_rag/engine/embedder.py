"""The embedding engine: :class:`KVEmbedder`."""

from __future__ import annotations

import dataclasses
import logging
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from kvemb_rag.engine import layers as layer_selection
from kvemb_rag.engine.attention import STATE_KWARG, RerouteState
from kvemb_rag.engine.batching import length_batches
from kvemb_rag.engine.calibration import default_calibration_texts
from kvemb_rag.engine.chunking import Chunk, chunk_text, combine_chunk_vectors
from kvemb_rag.engine.config import (
    DEFAULT_MAX_LENGTH,
    OVERFLOW_MODES,
    PROMPT_NAMES,
    SETTINGS,
    EmbedderConfig,
    LayerSelectionConfig,
)
from kvemb_rag.engine.identity import identity_of, settings_from_identity
from kvemb_rag.engine.loader import LoadedModel, attach_model, load_model, resolve_device
from kvemb_rag.engine.models import default_model
from kvemb_rag.engine.pooling import pool
from kvemb_rag.engine.precision import dtype_name, resolve_dtype, runs_natively
from kvemb_rag.errors import ConfigError, InputError, UnsupportedModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["KVEmbedder"]

logger = logging.getLogger(__name__)


class _Attaching(threading.local):
    """The loaded model :meth:`KVEmbedder.from_model` hands to ``__init__`` (per thread, during the call)."""

    loaded: LoadedModel | None = None


_ATTACHING = _Attaching()


@dataclass(frozen=True)
class _Unit:
    """One forward-pass row: a whole text or one chunk of it."""

    owner: int  # index of the input text
    ids: list[int]
    pool_mask: list[int] | None  # echo: 1 on the second copy's tokens
    weight: int  # token count, for combining chunks


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
            :data:`~kvemb_rag.engine.models.DEFAULT_MODEL` (SmolLM2-135M-Instruct, installed from the package index).
        strategy: ``"kv"`` (the method), ``"kv-ablation"`` (same prompt and pooling, no re-routing),
            ``"last"``, ``"mean"``, ``"prompteol"`` or ``"echo"``.
        layers: ``"auto"`` (the ``selection`` rule: the middle window by default) or 0-based layer indices.
        bias: Logit bias of the re-routed slot (docs/method.md: 1.0).
        pooling: ``"hybrid"`` (last + mean), ``"last"`` or ``"mean"``; default the strategy's own.
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
        given = {name: value for name, value in locals().items() if name in SETTINGS}
        self.config = EmbedderConfig(
            **{
                **given,
                "model": default_model() if model is None else str(model),
                "layers": layers if isinstance(layers, str) else tuple(layers),
                "selection": selection or LayerSelectionConfig(),
                "device": None if device is None else str(device),
                "dtype": None if dtype is None else str(dtype).removeprefix("torch."),
            }
        )
        self.show_progress_bar = show_progress_bar
        self._calibration_texts = list(calibration_texts) if calibration_texts is not None else None
        attached = _ATTACHING.loaded
        self._loaded: LoadedModel = (
            attached
            if attached is not None
            else load_model(
                self.config.model,
                revision=self.config.revision,
                device=self.config.device,
                dtype=self.config.dtype,
                trust_remote_code=self.config.trust_remote_code,
                allow_unverified_architecture=self.config.allow_unverified_architecture,
                cache_dir=self.config.cache_dir,
            )
        )
        self.max_length = self._resolve_max_length(max_length)
        self.id_curve: list[float] | None = None
        self.layers: tuple[int, ...] = self._resolve_layers()
        if self.layers:
            self._census()

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
    def _on_loaded(cls, loaded: LoadedModel, model: str, settings: dict[str, Any]) -> KVEmbedder:
        _ATTACHING.loaded = loaded
        try:
            return cls(model, device=loaded.device, dtype=loaded.dtype, **settings)
        finally:
            _ATTACHING.loaded = None

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

    # ------------------------------------------------------------------------------------ set-up
    def _resolve_max_length(self, requested: int | None) -> int:
        context = self._loaded.context_size
        if requested is None:
            return min(DEFAULT_MAX_LENGTH, context) if context else DEFAULT_MAX_LENGTH
        if context and requested > context:
            raise ConfigError(
                f"max_length={requested} exceeds the context size of {self.config.model!r} "
                f"({context} tokens, max_position_embeddings); use max_length <= {context}."
            )
        return requested

    def _resolve_layers(self) -> tuple[int, ...]:
        if not self.config.spec.reroute:
            if self.config.layers != "auto":
                logger.info("strategy=%r does not re-route; layers=%s is ignored.", self.strategy, self.config.layers)
            return ()
        num_layers = self._loaded.num_layers
        if self.config.layers != "auto":
            chosen = tuple(int(i) for i in self.config.layers)
            bad = [i for i in chosen if i >= num_layers]
            if bad:
                raise ConfigError(
                    f"layers={list(chosen)}: {bad} out of range; {self.config.model!r} has {num_layers} layers "
                    f"(valid indices 0..{num_layers - 1})."
                )
            return chosen
        if self.config.selection.rule == "middle":
            return layer_selection.middle_window(num_layers, self.config.selection)
        selection = self.select_layers()
        self.id_curve = list(selection.id_curve)
        return selection.layers

    def select_layers(self) -> layer_selection.LayerSelection:
        """Run (or read from the cache) the paper's intrinsic-dimension layer selection (docs/method.md).

        ``layers="auto"`` uses it when ``selection.rule == "intrinsic-dimension"``; ``kvemb layers`` uses it to
        show the curve whatever the rule.

        Returns:
            The selection, with the per-layer ID curve (index ``l`` = the input of decoder layer ``l``).
        """
        # The curve and its window do not depend on the rule's choice or the middle rule's position.
        rule = dataclasses.replace(self.config.selection, rule="intrinsic-dimension", position=0.5)
        texts = self._calibration_texts or default_calibration_texts(rule.num_calibration_texts)
        self._check_texts(texts)
        template = self.config.template("document")
        cache_dir = layer_selection.cache_directory(self.config.cache_dir)
        key = layer_selection.selection_cache_key(self._loaded.fingerprint(), template, texts, rule, str(self.dtype))
        cached = layer_selection.load_cached_selection(cache_dir, key)
        if cached is not None:
            logger.info("Layers %s for %s from the cache %s", list(cached.layers), self.config.model, cache_dir)
            return cached
        logger.info("Selecting layers of %s over %d calibration texts (once per model)", self.config.model, len(texts))
        units = self._units(texts, "document", overflow="truncate")
        num_layers = self._loaded.num_layers
        states: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]
        lengths = [len(unit.ids) for unit in units]
        batches = length_batches(lengths, rule.calibration_batch_size, self.config.max_padding)
        for batch in tqdm(batches, desc="Selecting layers (intrinsic dimension)", disable=self._bar_disabled(None)):
            input_ids, last_index = self._pad([units[i].ids for i in batch])
            with torch.inference_mode():
                out = self.model(input_ids=input_ids, use_cache=False, output_hidden_states=True)
            rows = torch.arange(len(batch), device=input_ids.device)
            for layer in range(num_layers):
                # hidden_states[l] is the input of decoder layer l: what its re-routed key/value project from.
                states[layer].append(out.hidden_states[layer][rows, last_index].float().cpu())
        curve = tuple(layer_selection.twonn_dimension(torch.cat(s)) for s in states)
        selection = layer_selection.LayerSelection(layer_selection.select_window(curve, rule), curve, len(texts))
        path = layer_selection.save_cached_selection(cache_dir, key, selection, self.config.model)
        logger.info("Selected layers %s of %s (cached in %s)", list(selection.layers), self.config.model, path)
        return selection

    def _census(self) -> None:
        """Refuse to run if any selected layer does not route through our attention function."""
        ids = self.tokenizer(self.config.template("document").format(text="census"))["input_ids"]
        self._forward([ids])

    # ---------------------------------------------------------------------------------- tokenising
    def format(self, text: str, prompt_name: str = "document") -> str:
        """``text`` wrapped in the ``prompt_name`` side's template."""
        return self.config.template(prompt_name).format(text=text)

    def count_tokens(self, text: str, prompt_name: str = "document") -> int:
        """Number of tokens of ``text`` with its template applied (special tokens included)."""
        return len(self.tokenizer(self.format(text, prompt_name))["input_ids"])

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
            Chunks with their character spans in ``text``; ``[]`` for an empty or whitespace-only text.

        Raises:
            ValueError: ``max_tokens`` is not an int between the template's own length + 1 and
                :attr:`max_length`.
        """
        self.config.template(prompt_name)  # validates `prompt_name`
        budget = self.max_length if max_tokens is None else max_tokens
        floor = self.count_tokens("", prompt_name) + 1
        if isinstance(budget, bool) or not isinstance(budget, int) or not floor <= budget <= self.max_length:
            raise ConfigError(
                f"max_tokens={max_tokens!r}: a chunk must hold the {prompt_name} template ({floor - 1} tokens) and "
                f"some text, and fit the engine's max_length; use an int in [{floor}, {self.max_length}]."
            )
        return chunk_text(
            text,
            tokenizer=self.tokenizer,
            max_tokens=budget,
            count_tokens=lambda piece: self.count_tokens(piece, prompt_name),
            overlap=overlap,
        )

    def _tokenize(self, texts: list[str], prompt: str) -> tuple[list[list[int]], list[list[int] | None]]:
        template = self.config.template(prompt)
        formatted = [template.format(text=t) for t in texts]
        echo = self.config.pooling_mode == "echo"
        enc = self.tokenizer(formatted, add_special_tokens=True, return_offsets_mapping=echo)
        ids: list[list[int]] = enc["input_ids"]
        if not echo:
            return ids, [None] * len(ids)
        head, middle, _ = (part.replace("{{", "{").replace("}}", "}") for part in template.split("{text}"))
        masks: list[list[int] | None] = []
        for text, offsets in zip(texts, enc["offset_mapping"], strict=True):
            start = len(head) + len(text) + len(middle)  # the second copy (docs/method.md, "Baselines")
            end = start + len(text)
            masks.append([int(e > s and s < end and e > start) for s, e in offsets])
        return ids, masks

    def _units(self, texts: list[str], prompt: str, overflow: str) -> list[_Unit]:
        ids, masks = self._tokenize(texts, prompt)
        units: list[_Unit] = []
        too_long = [i for i, row in enumerate(ids) if len(row) > self.max_length]
        if too_long and overflow == "error":
            shown = ", ".join(f"#{i} ({len(ids[i])} tokens)" for i in too_long[:5])
            raise InputError(
                f"{len(too_long)} text(s) exceed max_length={self.max_length} tokens with the {prompt} template: "
                f"{shown}. Use overflow='chunk' (one vector from all chunks) or overflow='truncate', or raise "
                "max_length."
            )
        over = set(too_long)
        for i, text in enumerate(texts):
            if i not in over:
                units.append(_Unit(i, ids[i], masks[i], len(ids[i])))
                continue
            chunks = self.chunk(text, prompt)
            if overflow == "truncate":
                chunks = chunks[:1]
                logger.info("Text #%d truncated to its first %d characters.", i, chunks[0].end)
            piece_ids, piece_masks = self._tokenize([c.text for c in chunks], prompt)
            units.extend(_Unit(i, p, m, len(p)) for p, m in zip(piece_ids, piece_masks, strict=True))
        return units

    # ------------------------------------------------------------------------------------ forward
    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        B = len(rows)
        T = max(len(r) for r in rows)
        input_ids = torch.full((B, T), int(self.tokenizer.pad_token_id), dtype=torch.long)  # (B, T)
        for b, row in enumerate(rows):
            input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        last_index = torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)  # (B,)
        return input_ids.to(self.device), last_index.to(self.device)

    def _forward(self, rows: list[list[int]], pool_masks: list[list[int] | None] | None = None) -> torch.Tensor:
        """Embed padded rows; returns ``(B, H)`` pooled float32 vectors (not normalised)."""
        input_ids, last_index = self._pad(rows)  # (B, T), (B,)
        B, T = input_ids.shape
        positions = torch.arange(T, device=self.device)  # (T,)
        real = positions[None, :] <= last_index[:, None]  # (B, T)
        kwargs: dict[str, Any] = {}
        state = None
        if self.layers:
            state = RerouteState(layers=frozenset(self.layers), last_index=last_index, bias=float(self.config.bias))
            kwargs[STATE_KWARG] = state
        with torch.inference_mode():
            # No attention mask: rows are right-padded, so under the causal mask no real token can see a pad;
            # pads' own states are never pooled. Every unselected layer keeps SDPA's is_causal fast path.
            out = self.model(input_ids=input_ids, use_cache=False, **kwargs)
        if state is not None and sorted(set(state.routed)) != list(self.layers):
            missing = sorted(set(self.layers) - set(state.routed))
            raise UnsupportedModelError(
                f"Re-routing did not reach layers {missing} of {self.config.model!r} "
                f"({type(self.model).__name__}); its attention does not go through transformers' attention "
                "registry for those layers, so KV-Embedding cannot run on it."
            )
        mask = real
        if pool_masks is not None and self.config.pooling_mode == "echo":
            mask = torch.zeros(B, T, dtype=torch.bool, device=self.device)  # (B, T)
            for b, m in enumerate(pool_masks):
                if m is not None:
                    mask[b, : len(m)] = torch.tensor(m, dtype=torch.bool)
        return pool(out.last_hidden_state, mask, last_index, self.config.pooling_mode)  # (B, H)

    # ------------------------------------------------------------------------------------ encode
    def _bar_disabled(self, show: bool | None) -> bool | None:
        show = self.show_progress_bar if show is None else show
        return None if show is None else not show

    @staticmethod
    def _check_texts(texts: Sequence[Any]) -> list[str]:
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
        items = self._check_texts([texts] if single else list(texts))
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
        side = "document" if prompt_name is None else prompt_name
        if side not in PROMPT_NAMES:
            raise ConfigError(f"prompt_name={prompt_name!r} is not valid; choose one of None, 'query', 'document'.")
        if overflow not in OVERFLOW_MODES:
            valid = ", ".join(map(repr, OVERFLOW_MODES))
            raise ConfigError(f"overflow={overflow!r} is not valid; choose one of {valid}.")
        size = self.config.batch_size if batch_size is None else batch_size
        if size < 1:
            raise ConfigError(f"batch_size={size} must be >= 1.")
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)

        units = self._units(items, side, overflow)
        unit_vectors = torch.empty(len(units), self.dim, dtype=torch.float32)  # (U, H)
        batches = length_batches([len(unit.ids) for unit in units], size, self.config.max_padding)
        for batch in tqdm(batches, desc="Encoding", disable=self._bar_disabled(show_progress_bar)):
            pooled = self._forward([units[i].ids for i in batch], [units[i].pool_mask for i in batch])  # (b, H)
            unit_vectors[batch] = pooled.cpu()

        groups: dict[int, list[int]] = {}
        for u, unit in enumerate(units):
            groups.setdefault(unit.owner, []).append(u)
        vectors = np.empty((len(items), self.dim), dtype=np.float32)
        for i, rows in groups.items():
            if len(rows) == 1:
                vectors[i] = unit_vectors[rows[0]].numpy()
            else:
                chunk_vectors = torch.nn.functional.normalize(unit_vectors[rows], dim=-1)  # (n_chunks, H)
                vectors[i] = combine_chunk_vectors(chunk_vectors.numpy(), [units[r].weight for r in rows])
        if normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        vectors = vectors.astype(np.float32, copy=False)
        return vectors[0] if single else vectors

    def encode_query(self, texts: str | Sequence[str], **kwargs: Any) -> np.ndarray:
        """Embed retrieval queries (the query-side template). Same arguments as :meth:`encode`."""
        return self.encode(texts, prompt_name="query", **kwargs)

    def encode_document(self, texts: str | Sequence[str], **kwargs: Any) -> np.ndarray:
        """Embed documents (the document-side template). Same arguments as :meth:`encode`."""
        return self.encode(texts, prompt_name="document", **kwargs)
