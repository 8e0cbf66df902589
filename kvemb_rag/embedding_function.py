"""A Chroma embedding function backed by :class:`~kvemb_rag.KVEmbedder`.

:class:`KVEmbeddingFunction` is registered under the name ``"kvemb"`` in chromadb's embedding-function
registry when this module is imported. A collection created with it stores the function's configuration
(model and engine settings), so it can be reopened in a new process and keep embedding documents and
queries the same way -- as long as that process has imported :mod:`kvemb_rag.embedding_function` first (that import
is what puts ``"kvemb"`` in the registry).

Example:
    >>> import chromadb
    >>> from kvemb_rag.embedding_function import KVEmbeddingFunction
    >>> client = chromadb.PersistentClient(path="store")  # doctest: +SKIP
    >>> docs = client.get_or_create_collection(  # doctest: +SKIP
    ...     "docs", embedding_function=KVEmbeddingFunction("Qwen/Qwen3-0.6B"))  # cosine space by default
    >>> docs.add(ids=["a", "b"], documents=["Cats purr.", "Stocks fell."])  # doctest: +SKIP
    >>> docs.query(query_texts=["Which animal purrs?"], n_results=1)["ids"]  # doctest: +SKIP
    [['a']]

    In a later process::

        import chromadb, kvemb_rag.embedding_function  # the import registers "kvemb"
        docs = chromadb.PersistentClient(path="store").get_collection("docs")
        docs.query(query_texts=["Which animal purrs?"])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from kvemb_rag.engine.config import STRATEGIES, validate_settings
from kvemb_rag.engine.embedder import KVEmbedder
from kvemb_rag.engine.models import DEFAULT_MODEL, default_model
from kvemb_rag.engine.shared import shared_embedder

__all__ = ["DEFAULT_MODEL", "KVEmbeddingFunction"]


# Settings stored in the collection configuration. `trust_remote_code` is deliberately not among them:
# reopening a collection must never run code from the hub. `cache_dir` is machine-local and left out too.
_CONFIG_KEYS: tuple[str, ...] = (
    "model", "strategy", "layers", "bias", "device", "dtype", "max_length", "batch_size",
    "query_template", "document_template", "revision", "allow_unverified_architecture",
)
# Settings whose change makes new vectors incomparable with the stored ones.
_VECTOR_KEYS: tuple[str, ...] = (
    "model", "strategy", "layers", "bias", "dtype", "max_length", "query_template", "document_template",
    "revision",
)
_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")


@register_embedding_function
class KVEmbeddingFunction(EmbeddingFunction[Documents]):
    """Chroma embedding function: KV-Embedding vectors from a decoder-only LLM.

    Documents (``add``/``upsert``) are embedded with the document-side template, ``query_texts`` with the
    query-side template (Chroma calls :meth:`embed_query` for them). Vectors are unit-length; the default
    space is cosine. The model loads on the first call, and adapters with the same settings share it.

    Args:
        model: Hub name, local folder, .gguf file or bundled model; default ``$KVEMB_MODEL``, else the bundled
            :data:`~kvemb_rag.engine.models.DEFAULT_MODEL`.
        strategy: Engine strategy (``"kv"``, ``"kv-ablation"``, ``"last"``, ``"mean"``, ``"prompteol"``,
            ``"echo"``).
        layers: ``"auto"`` (intrinsic-dimension selection) or 0-based layer indices to re-route.
        bias: Logit bias of the re-routed slot.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``; default bfloat16 on CUDA, float32 on CPU.
        max_length: Tokens per forward pass, template included; longer texts are chunked by the engine.
        batch_size: Texts per forward pass.
        query_template: Query-side template with ``{text}``; default the strategy's.
        document_template: Document-side template with ``{text}``; default the strategy's.
        revision: Hub revision of the model.
        allow_unverified_architecture: Opt in to model types outside the verified list.
        cache_dir: Layer-selection cache directory (not stored in the collection configuration).

    Raises:
        ValueError: Invalid settings, with the valid choices (checked without loading the model).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        strategy: str = "kv",
        layers: str | Sequence[int] = "auto",
        bias: float = 1.0,
        device: str | None = None,
        dtype: str | None = None,
        max_length: int | None = None,
        batch_size: int = 16,
        query_template: str | None = None,
        document_template: str | None = None,
        revision: str | None = None,
        allow_unverified_architecture: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        self.model = model if model is not None else default_model()
        self.strategy = strategy
        self.layers: str | list[int] = layers if isinstance(layers, str) else [int(i) for i in layers]
        self.bias = float(bias)
        self.device = device
        self.dtype = dtype
        self.max_length = max_length
        self.batch_size = batch_size
        self.query_template = query_template
        self.document_template = document_template
        self.revision = revision
        self.allow_unverified_architecture = allow_unverified_architecture
        self.cache_dir = cache_dir
        self.validate_config(self.get_config())

    # --------------------------------------------------------------------------------- embedding
    @property
    def engine(self) -> KVEmbedder:
        """The shared engine for these settings (loads the model on first access)."""
        settings = {k: getattr(self, k) for k in _CONFIG_KEYS if k not in ("model", "batch_size")}
        return shared_embedder(self.model, cache_dir=self.cache_dir, **settings)

    def __call__(self, input: Documents) -> Embeddings:
        """Embed documents (document-side template).

        Args:
            input: The documents (non-empty strings).

        Returns:
            One unit-length ``float32`` vector per document.
        """
        engine = self.engine
        vectors = engine.encode_document(list(input), batch_size=self.batch_size, show_progress_bar=False)
        return list(vectors)

    def embed_query(self, input: Documents) -> Embeddings:
        """Embed search queries (query-side template).

        Args:
            input: The queries (non-empty strings).

        Returns:
            One unit-length ``float32`` vector per query.
        """
        engine = self.engine
        vectors = engine.encode_query(list(input), batch_size=self.batch_size, show_progress_bar=False)
        return list(vectors)

    # ----------------------------------------------------------------------------- chroma protocol
    @staticmethod
    def name() -> str:
        """Registry name stored in collection configurations."""
        return "kvemb"

    def default_space(self) -> Space:
        """``"cosine"``: the space KV-Embedding vectors are compared in."""
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        """All three: on unit vectors cosine, inner product and L2 rank neighbours identically."""
        return ["cosine", "ip", "l2"]

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable settings that rebuild this function (see :meth:`build_from_config`)."""
        return {key: getattr(self, key) for key in _CONFIG_KEYS}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> KVEmbeddingFunction:
        """Rebuild the function from :meth:`get_config` output (cheap: the model loads on first use).

        Args:
            config: A stored configuration.

        Returns:
            The embedding function.

        Raises:
            ValueError: An unknown key or an invalid setting.
        """
        KVEmbeddingFunction.validate_config(config)
        settings = dict(config)
        return KVEmbeddingFunction(settings.pop("model"), **settings)

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        """Check a configuration without loading anything.

        Args:
            config: Settings as produced by :meth:`get_config`.

        Raises:
            ValueError: Unknown keys, a missing model, or settings the engine would refuse.
        """
        unknown = sorted(set(config) - set(_CONFIG_KEYS))
        if unknown:
            raise ValueError(f"Unknown kvemb embedding-function settings {unknown}; valid: {_CONFIG_KEYS}.")
        model = config.get("model")
        if not isinstance(model, str) or not model.strip():
            raise ValueError(
                f"model={model!r}: give a hub name, a local folder or .gguf file, or a bundled model such as "
                f"{DEFAULT_MODEL!r}."
            )
        strategy = config.get("strategy", "kv")
        if strategy not in STRATEGIES:
            valid = ", ".join(map(repr, STRATEGIES))
            raise ValueError(f"strategy={strategy!r} is not valid; choose one of: {valid}.")
        dtype = config.get("dtype")
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r} is not valid; use None or one of: {', '.join(_DTYPES)}.")
        validate_settings(model, **{k: v for k, v in config.items() if k != "model"})

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        """Refuse updates that would mix incomparable vectors in one collection.

        Args:
            old_config: The stored configuration.
            new_config: The proposed one.

        Raises:
            ValueError: A setting that changes the vectors (model, strategy, layers, bias, dtype, max_length,
                templates, revision) differs; ``device`` and ``batch_size`` may change.
        """
        changed = [k for k in _VECTOR_KEYS if old_config.get(k) != new_config.get(k)]
        if changed:
            shown = ", ".join(f"{k}: {old_config.get(k)!r} -> {new_config.get(k)!r}" for k in changed)
            raise ValueError(
                f"Cannot change {shown}: the collection's vectors were made with the old settings and would "
                "not be comparable. Create a new collection and re-add the documents instead."
            )

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(model={self.model!r}, strategy={self.strategy!r}, layers={self.layers!r})"
