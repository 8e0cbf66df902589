"""Configuration of the embedding engine: strategies, templates and validated settings."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Literal, get_args, get_type_hints

from kvemb_rag.engine.batching import check_max_padding
from kvemb_rag.engine.models import BUNDLED_MODELS
from kvemb_rag.errors import ConfigError

Strategy = Literal["kv", "kv-ablation", "last", "mean", "prompteol", "echo"]
PromptName = Literal["query", "document"]
Pooling = Literal["hybrid", "last", "mean", "echo"]
Overflow = Literal["chunk", "truncate", "error"]

STRATEGIES: tuple[str, ...] = get_args(Strategy)
PROMPT_NAMES: tuple[str, ...] = get_args(PromptName)
OVERFLOW_MODES: tuple[str, ...] = get_args(Overflow)
#: Poolings a non-echo strategy may be given with ``pooling=`` (echo pools over its second copy only).
POOLINGS: tuple[str, ...] = ("hybrid", "last", "mean")

#: Default token budget per forward pass, prompt included (docs/method.md, "Long texts").
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
    """What a strategy does: its default templates, its pooling, whether it re-routes and whether it centres.

    ``kv-ablation`` is ``kv`` less the re-routing, so it shares every other default; the paper's baselines
    keep their published recipes (no centring).
    """

    document_template: str
    query_template: str
    pooling: Pooling
    reroute: bool
    centring: bool = False


STRATEGY_SPECS: dict[str, StrategySpec] = {
    "kv": StrategySpec(KV_DOCUMENT_TEMPLATE, KV_QUERY_TEMPLATE, "hybrid", reroute=True, centring=True),
    "kv-ablation": StrategySpec(KV_DOCUMENT_TEMPLATE, KV_QUERY_TEMPLATE, "hybrid", reroute=False, centring=True),
    "last": StrategySpec(PLAIN_TEMPLATE, PLAIN_TEMPLATE, "last", reroute=False),
    "mean": StrategySpec(PLAIN_TEMPLATE, PLAIN_TEMPLATE, "mean", reroute=False),
    "prompteol": StrategySpec(PROMPTEOL_TEMPLATE, PROMPTEOL_TEMPLATE, "last", reroute=False),
    "echo": StrategySpec(ECHO_TEMPLATE, ECHO_TEMPLATE, "echo", reroute=False),
}


def _check_choice(name: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of: {', '.join(map(repr, valid))}.")


def _check_template(side: str, template: str, strategy: str) -> None:
    if not isinstance(template, str):
        raise ConfigError(f"{side}_template must be a str containing '{{text}}', got {type(template).__name__}.")
    count = template.count("{text}")
    needed = 2 if strategy == "echo" else 1
    if count != needed:
        raise ConfigError(
            f"{side}_template={template!r} contains '{{text}}' {count} time(s); strategy {strategy!r} needs "
            f"exactly {needed}. Example: {STRATEGY_SPECS[strategy].document_template!r}."
        )
    try:
        template.replace("{text}", "").format()
    except (IndexError, KeyError, ValueError) as exc:
        raise ConfigError(
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
            raise ConfigError(f"position={self.position} must be in [0, 1] (0 = first layers, 0.5 = middle).")
        if not 0.0 <= self.skip_fraction < 1.0:
            raise ConfigError(f"skip_fraction={self.skip_fraction} must be in [0, 1); the method uses 0.2.")
        if not 0.0 <= self.window_fraction < 1.0:
            raise ConfigError(f"window_fraction={self.window_fraction} must be in [0, 1); the method uses 0.1.")
        if self.num_calibration_texts < 3:
            raise ConfigError(
                f"num_calibration_texts={self.num_calibration_texts}: TwoNN needs at least 3 points; "
                "the method uses 1,000."
            )
        if self.calibration_batch_size < 1:
            raise ConfigError(f"calibration_batch_size={self.calibration_batch_size} must be >= 1.")


#: Compute dtypes by canonical name, and the short names also accepted.
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
DTYPE_ALIASES: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _meta(doc: str, *, vectors: bool = False, stored: bool = True, precision: bool = False) -> dict[str, Any]:
    """What the rest of the project needs to know about a field of :class:`EmbedderConfig`.

    Args:
        doc: One line for adapters' field descriptions.
        vectors: Changing it changes the vectors: it is part of the store's embedder identity and of the
            Chroma function's "same vectors" check, and a collection refuses a change.
        stored: Kept in a Chroma collection's configuration (``False`` for machine-local or unsafe settings).
        precision: A vector setting that changes the vectors only by rounding (the compute dtype): recorded in
            the identity, but two engines that differ only in it share a collection (the difference is logged).
    """
    return {"doc": doc, "vectors": vectors, "stored": stored, "precision": precision}


@dataclass(frozen=True)
class EmbedderConfig:
    """Every setting of a :class:`~kvemb_rag.KVEmbedder`, validated: the one list the project derives from.

    :class:`~kvemb_rag.KVEmbedder` takes these as keyword arguments; the LangChain and LlamaIndex adapters'
    fields (:func:`pydantic_fields`), the Chroma function's stored configuration (:data:`STORED_SETTINGS`), the
    store's embedder identity and both "same vectors" checks (:data:`VECTOR_SETTINGS`) are derived from the
    fields below and their metadata (see :func:`_setting`). Values are checked here, without loading anything;
    whether a device exists, a model loads or ``max_length`` fits its context is checked when the model loads.

    Attributes:
        model: Hub name, local folder, GGUF file or bundled name of a decoder-only model.
        strategy: One of :data:`STRATEGIES`.
        layers: ``"auto"`` (the ``selection`` rule) or explicit 0-based decoder-layer indices to re-route.
        bias: Scalar added to the re-routed slot's pre-softmax logit, after 1/sqrt(d) scaling (R: 1.0).
        pooling: ``"hybrid"``, ``"last"`` or ``"mean"`` of the final hidden states; ``None`` means the
            strategy's own (hybrid for ``kv``/``kv-ablation``).
        centring: Subtract the mean unit vector of fixed calibration texts from every pooled vector
            (:mod:`kvemb_rag.engine.centring`); ``None`` means the strategy's own (on for ``kv``/``kv-ablation``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; ``None`` means CUDA when available, else CPU.
        dtype: One of :data:`DTYPES` (or a short name of :data:`DTYPE_ALIASES`); ``None`` means bfloat16 where
            the hardware computes it natively (CUDA, a CPU with AMX, AVX512-BF16 or Arm BF16), else float32.
        max_length: Token budget per forward pass, prompt template included; ``None`` means 4,096 or the
            model's context size if smaller.
        batch_size: Most texts per forward pass.
        max_padding: Largest share of a batch's positions that may be padding (see
            :func:`kvemb_rag.engine.batching.length_batches`); ``1.0`` batches like sentence-transformers.
        query_template: Template of the query side; ``None`` means the strategy's default.
        document_template: Template of the document side; ``None`` means the strategy's default.
        revision: Hub revision (branch, tag or commit) to load.
        trust_remote_code: Passed to transformers (never stored: reopening a collection must not run hub code).
        allow_unverified_architecture: Opt in to model types the test-suite has not verified.
        cache_dir: Directory of kvemb-rag's cache; ``None`` means ``$KVEMB_CACHE_DIR`` or ``~/.cache/kvemb-rag``.
        selection: How ``layers="auto"`` chooses the layers.
    """

    model: str = field(metadata=_meta("Hub name, local folder, .gguf file or bundled name of an LLM.", vectors=True))
    strategy: Strategy = field(
        default="kv", metadata=_meta('"kv" is KV-Embedding, the other strategies its baselines.', vectors=True)
    )
    layers: Literal["auto"] | Sequence[int] = field(
        default="auto", metadata=_meta('"auto" (the selection rule) or 0-based layers to re-route.', vectors=True)
    )
    bias: float = field(default=1.0, metadata=_meta("Logit bias of the re-routed key/value slot.", vectors=True))
    pooling: str | None = field(
        default=None, metadata=_meta('"hybrid", "last" or "mean"; default the strategy\'s own.', vectors=True)
    )
    centring: bool | None = field(
        default=None,
        metadata=_meta("Subtract the calibration texts' mean vector; default the strategy's own.", vectors=True),
    )
    device: str | None = field(
        default=None, metadata=_meta('"cpu", "cuda", "cuda:1"...; default CUDA when available, else CPU.')
    )
    dtype: str | None = field(
        default=None,
        metadata=_meta(
            "float32, bfloat16 or float16; default bfloat16 where the hardware has it natively, else float32.",
            vectors=True,
            precision=True,
        ),
    )
    max_length: int | None = field(
        default=None,
        metadata=_meta("Tokens per forward pass, template included; default 4096 or the context size.", vectors=True),
    )
    batch_size: int = field(default=16, metadata=_meta("Texts per forward pass."))
    max_padding: float = field(default=0.1, metadata=_meta("Largest share of a batch's positions that may be padding."))
    query_template: str | None = field(
        default=None, metadata=_meta("Query-side template containing {text}; default the strategy's.", vectors=True)
    )
    document_template: str | None = field(
        default=None, metadata=_meta("Document-side template containing {text}; default the strategy's.", vectors=True)
    )
    revision: str | None = field(
        default=None, metadata=_meta("Hub revision (branch, tag or commit) of the model.", vectors=True)
    )
    trust_remote_code: bool = field(
        default=False, metadata=_meta("Let transformers run the model's own code.", stored=False)
    )
    allow_unverified_architecture: bool = field(
        default=False, metadata=_meta("Opt in to model types the test-suite has not verified.")
    )
    cache_dir: str | None = field(
        default=None, metadata=_meta("kvemb-rag's cache; default $KVEMB_CACHE_DIR or ~/.cache/kvemb-rag.", stored=False)
    )
    selection: LayerSelectionConfig = field(
        default_factory=LayerSelectionConfig,
        metadata=_meta('How layers="auto" chooses the layers (middle window or intrinsic dimension).', vectors=True),
    )

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(
                f"model={self.model!r}: give a hub name such as 'Qwen/Qwen3-0.6B', a local folder or .gguf file, or a "
                f"bundled model ({', '.join(BUNDLED_MODELS)})."
            )
        _check_choice("strategy", self.strategy, STRATEGIES)
        if isinstance(self.layers, str):
            if self.layers != "auto":
                raise ConfigError(f"layers={self.layers!r}: use 'auto' or a list of layer indices such as [10, 11].")
        else:
            layers = tuple(self.layers)
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
                raise ConfigError(f"layers={list(layers)!r}: every layer index must be an int.")
            if any(i < 0 for i in layers) or len(set(layers)) != len(layers):
                raise ConfigError(f"layers={list(layers)!r}: indices must be distinct and >= 0 (0 = first layer).")
            object.__setattr__(self, "layers", tuple(sorted(layers)))
        if isinstance(self.bias, bool) or not isinstance(self.bias, (int, float)) or not math.isfinite(self.bias):
            raise ConfigError(f"bias={self.bias!r} must be a finite number; the method uses 1.0.")
        if self.pooling is not None:
            if self.strategy == "echo":
                raise ConfigError(
                    f"pooling={self.pooling!r}: strategy 'echo' pools over the text's second copy and takes no "
                    "pooling; leave pooling unset."
                )
            _check_choice("pooling", self.pooling, POOLINGS)
        if self.centring is not None and not isinstance(self.centring, bool):
            raise ConfigError(f"centring={self.centring!r} must be True, False or None (the strategy's own).")
        if self.device is not None and (not isinstance(self.device, str) or not self.device.strip()):
            raise ConfigError(f"device={self.device!r} must be a device name such as 'cpu', 'cuda' or 'cuda:1'.")
        if self.dtype is not None:
            _check_choice("dtype", self.dtype, DTYPES + tuple(DTYPE_ALIASES))
            object.__setattr__(self, "dtype", DTYPE_ALIASES.get(self.dtype, self.dtype))
        if self.max_length is not None and (
            isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 8
        ):
            raise ConfigError(f"max_length={self.max_length!r} must be an int >= 8 (tokens, prompt included).")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size!r} must be an int >= 1.")
        check_max_padding(self.max_padding)
        for side in PROMPT_NAMES:
            template = getattr(self, f"{side}_template")
            if template is not None:
                _check_template(side, template, self.strategy)
        if not isinstance(self.selection, LayerSelectionConfig):
            raise ConfigError(
                f"selection={self.selection!r} must be a LayerSelectionConfig, e.g. "
                "LayerSelectionConfig(rule='intrinsic-dimension')."
            )

    @property
    def spec(self) -> StrategySpec:
        """The strategy's specification."""
        return STRATEGY_SPECS[self.strategy]

    @property
    def pooling_mode(self) -> Pooling:
        """The pooling in effect: ``pooling`` when given, else the strategy's."""
        return self.spec.pooling if self.pooling is None else self.pooling  # type: ignore[return-value]

    @property
    def centring_mode(self) -> bool:
        """Whether vectors are centred: ``centring`` when given, else the strategy's."""
        return self.spec.centring if self.centring is None else self.centring

    def template(self, prompt: str) -> str:
        """The template used for ``prompt`` ("query" or "document")."""
        _check_choice("prompt_name", prompt, PROMPT_NAMES)
        custom = getattr(self, f"{prompt}_template")
        if custom is not None:
            return str(custom)
        spec = self.spec
        return spec.query_template if prompt == "query" else spec.document_template

    def settings(self) -> dict[str, Any]:
        """Every setting but ``model``, as keyword arguments of :class:`~kvemb_rag.KVEmbedder`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}

    def explicit(self) -> EmbedderConfig:
        """This configuration with the defaults that need no model spelled out: templates, pooling and centring.

        A stored configuration made from it keeps embedding the same way if a later release changes a
        strategy's default prompt or pooling. ``layers="auto"`` stays as it is, with its explicit
        ``selection`` rule: resolving it needs the model.
        """
        pooling = None if self.strategy == "echo" else self.pooling_mode
        return replace(
            self,
            pooling=pooling,
            centring=self.centring_mode,
            query_template=self.template("query"),
            document_template=self.template("document"),
        )


#: Setting names, in the order of :class:`~kvemb_rag.KVEmbedder`'s keyword arguments.
SETTINGS: tuple[str, ...] = tuple(f.name for f in fields(EmbedderConfig))
#: Settings whose change changes the vectors (identity, "same vectors" checks).
VECTOR_SETTINGS: tuple[str, ...] = tuple(f.name for f in fields(EmbedderConfig) if f.metadata["vectors"])
#: Vector settings that change the vectors only by rounding: recorded, but not a reason to refuse a collection.
PRECISION_SETTINGS: tuple[str, ...] = tuple(f.name for f in fields(EmbedderConfig) if f.metadata["precision"])
#: Settings kept in a Chroma collection's configuration.
STORED_SETTINGS: tuple[str, ...] = tuple(f.name for f in fields(EmbedderConfig) if f.metadata["stored"])
#: Engine arguments that are not settings of the vectors' recipe: data and display.
RUNTIME_ARGUMENTS: tuple[str, ...] = ("calibration_texts", "show_progress_bar")


def setting_defaults() -> dict[str, Any]:
    """Every setting's default (``model`` excluded), e.g. to drop settings given at their default."""
    return EmbedderConfig(model="-").settings()


def validate_settings(model: str, **settings: Any) -> EmbedderConfig:
    """Check :class:`~kvemb_rag.KVEmbedder` keyword settings without loading anything.

    For adapters (LangChain, LlamaIndex, Chroma) that must refuse bad settings when they are constructed:
    every problem is a :class:`~kvemb_rag.errors.ConfigError`, a ``ValueError`` as their frameworks expect.

    Args:
        model: Hub name, local directory, GGUF file or bundled name.
        **settings: :data:`SETTINGS` by name; ``None`` means the default, lists of layers are accepted, a
            ``selection`` may be given as a dict of :class:`LayerSelectionConfig` fields.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: An invalid or unknown setting (the valid names are listed).
    """
    unknown = sorted(set(settings) - set(SETTINGS[1:]))
    if unknown:
        hint = " (model is given on its own)" if "model" in unknown else ""
        raise ConfigError(f"Unknown KVEmbedder settings {unknown}{hint}; valid: {list(SETTINGS[1:])}.")
    given = {k: v for k, v in settings.items() if v is not None}
    if isinstance(given.get("layers"), list):
        given["layers"] = tuple(given["layers"])
    if isinstance(given.get("selection"), Mapping):
        given["selection"] = selection_from_dict(given["selection"])
    return EmbedderConfig(model=model, **given)


def selection_from_dict(values: Mapping[str, Any]) -> LayerSelectionConfig:
    """A :class:`LayerSelectionConfig` from its fields as a dict (a stored configuration).

    Raises:
        ConfigError: An unknown field name (the valid ones are listed) or an invalid value.
    """
    names = [f.name for f in fields(LayerSelectionConfig)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"selection has unknown fields {unknown}; valid: {names}.")
    return LayerSelectionConfig(**values)


def pydantic_fields(rename: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings as pydantic field definitions, for adapters' models (``pydantic.create_model``).

    Each field has the setting's type, default and one-line description;
    validation of the values stays in :class:`EmbedderConfig` (see :mod:`kvemb_rag.adapters`).

    Args:
        rename: Field names the adapter's framework spells differently, e.g. ``{"model": "model_name"}``.

    Returns:
        ``{field name: (type, FieldInfo)}`` in :data:`SETTINGS` order.
    """
    from pydantic import Field  # the adapters' dependency, not the engine's

    from kvemb_rag.engine.models import DEFAULT_MODEL, default_model

    names = rename or {}
    hints = get_type_hints(EmbedderConfig)
    result: dict[str, Any] = {}
    for f in fields(EmbedderConfig):
        doc = f.metadata["doc"]
        info: Any
        if f.name == "model":
            described = f"{doc} Default $KVEMB_MODEL, else {DEFAULT_MODEL}."
            info = Field(default_factory=default_model, description=described)
        elif f.default_factory is not MISSING:
            info = Field(default_factory=f.default_factory, description=doc)
        else:
            info = Field(default=f.default, description=doc)
        result[names.get(f.name, f.name)] = (hints[f.name], info)
    return result
