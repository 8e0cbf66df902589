"""Configuration of the embedding engine: strategies, templates and validated settings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from kvemb_rag.engine.batching import check_max_padding

Strategy = Literal["kv", "kv-ablation", "last", "mean", "prompteol", "echo"]
PromptName = Literal["query", "document"]
Pooling = Literal["hybrid", "last", "mean", "echo"]
Overflow = Literal["chunk", "truncate", "error"]

STRATEGIES: tuple[str, ...] = get_args(Strategy)
PROMPT_NAMES: tuple[str, ...] = get_args(PromptName)
OVERFLOW_MODES: tuple[str, ...] = get_args(Overflow)
#: Poolings a non-echo strategy may be given with ``pooling=`` (echo pools over its second copy only).
POOLINGS: tuple[str, ...] = ("hybrid", "last", "mean")

#: Default token budget per forward pass, prompt included (method.md: robust up to 4,096 tokens).
DEFAULT_MAX_LENGTH = 4096

# PromptEOL's template (Jiang et al. 2023), the prompt of the ``prompteol`` baseline.
PROMPTEOL_TEMPLATE = 'This sentence : "{text}" means in one word:"'
# The paper's compression prompts as re-implementations read them (docs/method.md); selectable with
# ``document_template=`` / ``query_template=``.
COMPRESSION_DOCUMENT_TEMPLATE = "Context: {text}\nCompress the Context in one word:"
COMPRESSION_QUERY_TEMPLATE = "Query: {text}\nCompress the Query in one word:"
# The templates of ``kv`` and ``kv-ablation``: PromptEOL's on both sides, measured best on the dev average of
# both real models (0.634 against 0.591 for the compression prompts; benchmarks/method_study.md).
KV_DOCUMENT_TEMPLATE = PROMPTEOL_TEMPLATE
KV_QUERY_TEMPLATE = PROMPTEOL_TEMPLATE
# Baselines, docs/method.md "Baselines shipped for comparison".
ECHO_TEMPLATE = "Rewrite the sentence: {text}, rewritten sentence: {text}"
PLAIN_TEMPLATE = "{text}"


@dataclass(frozen=True)
class StrategySpec:
    """What a strategy does: its default templates, its pooling, and whether it re-routes."""

    document_template: str
    query_template: str
    pooling: Pooling
    reroute: bool


STRATEGY_SPECS: dict[str, StrategySpec] = {
    "kv": StrategySpec(KV_DOCUMENT_TEMPLATE, KV_QUERY_TEMPLATE, "hybrid", reroute=True),
    "kv-ablation": StrategySpec(KV_DOCUMENT_TEMPLATE, KV_QUERY_TEMPLATE, "hybrid", reroute=False),
    "last": StrategySpec(PLAIN_TEMPLATE, PLAIN_TEMPLATE, "last", reroute=False),
    "mean": StrategySpec(PLAIN_TEMPLATE, PLAIN_TEMPLATE, "mean", reroute=False),
    "prompteol": StrategySpec(PROMPTEOL_TEMPLATE, PROMPTEOL_TEMPLATE, "last", reroute=False),
    "echo": StrategySpec(ECHO_TEMPLATE, ECHO_TEMPLATE, "echo", reroute=False),
}


def _check_choice(name: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(map(repr, valid))}.")


def _check_template(side: str, template: str, strategy: str) -> None:
    if not isinstance(template, str):
        raise TypeError(f"{side}_template must be a str containing '{{text}}', got {type(template).__name__}.")
    count = template.count("{text}")
    needed = 2 if strategy == "echo" else 1
    if count != needed:
        raise ValueError(
            f"{side}_template={template!r} contains '{{text}}' {count} time(s); strategy {strategy!r} needs "
            f"exactly {needed}. Example: {STRATEGY_SPECS[strategy].document_template!r}."
        )
    try:
        template.replace("{text}", "").format()
    except (IndexError, KeyError, ValueError) as exc:
        raise ValueError(
            f"{side}_template={template!r} has a placeholder other than '{{text}}'; escape literal braces as "
            "'{{' and '}}'."
        ) from exc


#: Rules of ``layers="auto"``: a window in the middle of the network (the default, measured), or the paper's
#: intrinsic-dimension minimum.
SELECTION_RULES: tuple[str, ...] = ("middle", "intrinsic-dimension")


@dataclass(frozen=True)
class LayerSelectionConfig:
    """How ``layers="auto"`` chooses the re-routed layers (docs/method.md, "Choosing the layers").

    Both rules re-route a contiguous window of ``floor(window_fraction * L) + 1`` layers (4 of 32 or 36).

    Attributes:
        rule: ``"middle"`` (default): the window sits at ``position`` among the possible windows, 0.5 being the
            middle of the network; no calibration runs. ``"intrinsic-dimension"``: the paper's rule; the
            window starts at the layer of minimal TwoNN intrinsic dimension of prompted calibration texts,
            after the first ``skip_fraction`` of the layers. The middle window scored 0.647 on the dev
            average of both real models, the intrinsic-dimension window 0.634 or less
            (benchmarks/method_study.md).
        position: Where the middle rule puts the window: 0 = first layers, 1 = last layers.
        skip_fraction: Share of the first layers the intrinsic-dimension rule never selects (R: 0.2).
        window_fraction: The window spans ``floor(window_fraction * L)`` more layers after its first (R: 0.1).
        num_calibration_texts: How many calibration texts the intrinsic-dimension rule uses (R: 1,000).
        calibration_batch_size: Batch size of the calibration forward passes.
    """

    rule: str = "middle"
    position: float = 0.5
    skip_fraction: float = 0.2
    window_fraction: float = 0.1
    num_calibration_texts: int = 1000
    calibration_batch_size: int = 32

    def __post_init__(self) -> None:
        _check_choice("rule", self.rule, SELECTION_RULES)
        if not 0.0 <= self.position <= 1.0:
            raise ValueError(f"position={self.position} must be in [0, 1] (0 = first layers, 0.5 = middle).")
        if not 0.0 <= self.skip_fraction < 1.0:
            raise ValueError(f"skip_fraction={self.skip_fraction} must be in [0, 1); the method uses 0.2.")
        if not 0.0 <= self.window_fraction < 1.0:
            raise ValueError(f"window_fraction={self.window_fraction} must be in [0, 1); the method uses 0.1.")
        if self.num_calibration_texts < 3:
            raise ValueError(
                f"num_calibration_texts={self.num_calibration_texts}: TwoNN needs at least 3 points; "
                "the method uses 1,000."
            )
        if self.calibration_batch_size < 1:
            raise ValueError(f"calibration_batch_size={self.calibration_batch_size} must be >= 1.")


@dataclass(frozen=True)
class EmbedderConfig:
    """Validated settings of a :class:`~kvemb_rag.KVEmbedder` (everything except the loaded model).

    Attributes:
        model: Hub name or local directory of a decoder-only model.
        strategy: One of :data:`STRATEGIES`.
        layers: ``"auto"`` (the ``selection`` rule) or explicit 0-based decoder-layer indices to re-route.
        bias: Scalar added to the re-routed slot's pre-softmax logit, after 1/sqrt(d) scaling (R: 1.0).
        pooling: ``"hybrid"``, ``"last"`` or ``"mean"`` of the final hidden states; ``None`` means the
            strategy's own (hybrid for ``kv``/``kv-ablation``).
        max_length: Token budget per forward pass, prompt template included; ``None`` means 4,096 or the
            model's context size if smaller.
        batch_size: Most texts per forward pass.
        max_padding: Largest share of a batch's positions that may be padding (see
            :func:`kvemb_rag.engine.batching.length_batches`); ``1.0`` batches like sentence-transformers.
        query_template: Template of the query side; ``None`` means the strategy's default.
        document_template: Template of the document side; ``None`` means the strategy's default.
        revision: Hub revision (branch, tag or commit) to load.
        trust_remote_code: Passed to transformers.
        allow_unverified_architecture: Opt in to model types the test-suite has not verified.
        cache_dir: Directory of the layer-selection cache; ``None`` means ``$KVEMB_CACHE_DIR`` or
            ``~/.cache/kvemb-rag``.
        selection: The layer-selection rule.
    """

    model: str
    strategy: str = "kv"
    layers: str | tuple[int, ...] = "auto"
    bias: float = 1.0
    pooling: str | None = None
    max_length: int | None = None
    batch_size: int = 16
    max_padding: float = 0.1
    query_template: str | None = None
    document_template: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    allow_unverified_architecture: bool = False
    cache_dir: str | None = None
    selection: LayerSelectionConfig = field(default_factory=LayerSelectionConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(
                f"model={self.model!r}: give a hub name such as 'Qwen/Qwen3-0.6B', a local folder or .gguf file, or a "
                "bundled model such as 'smollm2-135m-instruct'."
            )
        _check_choice("strategy", self.strategy, STRATEGIES)
        if isinstance(self.layers, str):
            if self.layers != "auto":
                raise ValueError(f"layers={self.layers!r}: use 'auto' or a list of layer indices such as [10, 11, 12].")
        else:
            layers = tuple(self.layers)
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
                raise TypeError(f"layers={self.layers!r}: every layer index must be an int.")
            if any(i < 0 for i in layers) or len(set(layers)) != len(layers):
                raise ValueError(f"layers={self.layers!r}: indices must be distinct and >= 0 (0 = first layer).")
            object.__setattr__(self, "layers", tuple(sorted(layers)))
        if not isinstance(self.bias, (int, float)) or not math.isfinite(self.bias):
            raise ValueError(f"bias={self.bias!r} must be a finite number; the method uses 1.0.")
        if self.pooling is not None:
            if self.strategy == "echo":
                raise ValueError(
                    f"pooling={self.pooling!r}: strategy 'echo' pools over the text's second copy and takes no "
                    "pooling; leave pooling unset."
                )
            _check_choice("pooling", self.pooling, POOLINGS)
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 8):
            raise ValueError(f"max_length={self.max_length!r} must be an int >= 8 (tokens, prompt included).")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r} must be an int >= 1.")
        check_max_padding(self.max_padding)
        for side in PROMPT_NAMES:
            template = getattr(self, f"{side}_template")
            if template is not None:
                _check_template(side, template, self.strategy)

    @property
    def spec(self) -> StrategySpec:
        """The strategy's specification."""
        return STRATEGY_SPECS[self.strategy]

    @property
    def pooling_mode(self) -> Pooling:
        """The pooling in effect: ``pooling`` when given, else the strategy's."""
        return self.spec.pooling if self.pooling is None else self.pooling  # type: ignore[return-value]

    def template(self, prompt: str) -> str:
        """The template used for ``prompt`` ("query" or "document")."""
        _check_choice("prompt", prompt, PROMPT_NAMES)
        custom = getattr(self, f"{prompt}_template")
        if custom is not None:
            return str(custom)
        spec = self.spec
        return spec.query_template if prompt == "query" else spec.document_template


# KVEmbedder settings checked when the model loads, not by EmbedderConfig.
_LOAD_TIME_SETTINGS = ("device", "dtype", "calibration_texts", "show_progress_bar")


def validate_settings(model: str, **settings: Any) -> EmbedderConfig:
    """Check :class:`~kvemb_rag.KVEmbedder` keyword settings without loading anything.

    For adapters (LangChain, LlamaIndex, Chroma) that must refuse bad settings when they are constructed:
    every problem is a ``ValueError``, the exception their frameworks report as a validation error.

    Args:
        model: Hub name or local directory.
        **settings: ``KVEmbedder`` keyword arguments; ``None`` means the default, lists of layers are
            accepted; ``device``, ``dtype``, ``calibration_texts`` and ``show_progress_bar`` are checked at
            load time and skipped here.

    Returns:
        The validated configuration.

    Raises:
        ValueError: An invalid or unknown setting (the valid names are listed).
    """
    names = {f.name for f in fields(EmbedderConfig)} - {"model"}
    unknown = sorted(set(settings) - names - set(_LOAD_TIME_SETTINGS))
    if unknown:
        raise ValueError(f"Unknown KVEmbedder settings {unknown}; valid: {sorted(names | set(_LOAD_TIME_SETTINGS))}.")
    given = {k: v for k, v in settings.items() if k in names and v is not None}
    if isinstance(given.get("layers"), (list, tuple)):
        given["layers"] = tuple(given["layers"])
    try:
        return EmbedderConfig(model=model, **given)
    except TypeError as exc:
        raise ValueError(str(exc)) from exc
