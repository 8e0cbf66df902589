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

import dataclasses
from typing import Any, cast

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from kvemb_rag.engine.config import (
    PRECISION_SETTINGS,
    STORED_SETTINGS,
    VECTOR_SETTINGS,
    EmbedderConfig,
    validate_settings,
)
from kvemb_rag.engine.embedder import KVEmbedder
from kvemb_rag.engine.identity import canonical_json
from kvemb_rag.engine.models import DEFAULT_MODEL, default_model
from kvemb_rag.engine.shared import shared_embedder
from kvemb_rag.errors import ConfigError

__all__ = ["DEFAULT_MODEL", "KVEmbeddingFunction"]


@register_embedding_function
class KVEmbeddingFunction(EmbeddingFunction[Documents]):
    """Chroma embedding function: KV-Embedding vectors from a decoder-only LLM.

    Documents (``add``/``upsert``) are embedded with the document-side template, ``query_texts`` with the
    query-side template (Chroma calls :meth:`embed_query` for them). Vectors are unit-length; the default
    space is cosine. The model loads on the first call, and adapters with the same settings share it.

    The collection stores every setting of :data:`~kvemb_rag.engine.config.STORED_SETTINGS` with the defaults
    that need no model spelled out (the templates, the pooling and the layer-selection rule), so a later
    release with other defaults keeps embedding the collection the same way. ``trust_remote_code`` (reopening
    a collection must never run hub code) and ``cache_dir`` (machine-local) are not stored.

    Args:
        model: Hub name, local folder, .gguf file or bundled model; default ``$KVEMB_MODEL``, else the bundled
            :data:`~kvemb_rag.engine.models.DEFAULT_MODEL`.
        **settings: Any :class:`~kvemb_rag.KVEmbedder` setting (:data:`~kvemb_rag.engine.config.SETTINGS`):
            ``strategy``, ``layers``, ``bias``, ``pooling``, ``device``, ``dtype``, ``max_length``,
            ``batch_size``, templates, ``selection`` (a ``LayerSelectionConfig`` or its fields as a dict)...

    Raises:
        ConfigError: Invalid settings, with the valid choices (checked without loading the model).
    """

    def __init__(self, model: str | None = None, **settings: Any) -> None:
        self.config: EmbedderConfig = validate_settings(
            default_model() if model is None else model, **settings
        ).explicit()

    @property
    def model(self) -> str:
        """The model this function embeds with."""
        return self.config.model

    # --------------------------------------------------------------------------------- embedding
    @property
    def engine(self) -> KVEmbedder:
        """The shared engine for these settings (loads the model on first access)."""
        return shared_embedder(self.config.model, **self.config.settings())

    def __call__(self, input: Documents) -> Embeddings:
        """One unit-length ``float32`` vector per document (non-empty strings), with the document template."""
        return list(self.engine.encode_document(list(input), show_progress_bar=False))

    def embed_query(self, input: Documents) -> Embeddings:
        """One unit-length ``float32`` vector per search query (non-empty strings), with the query template."""
        return list(self.engine.encode_query(list(input), show_progress_bar=False))

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
        return _stored(self.config)

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> KVEmbeddingFunction:
        """Rebuild the function from :meth:`get_config` output (cheap: the model loads on first use).

        Args:
            config: A stored configuration.

        Returns:
            The embedding function.

        Raises:
            ConfigError: An unknown key or an invalid setting.
        """
        settings = _recorded(config)
        return KVEmbeddingFunction(_parse(settings).model, **{k: v for k, v in settings.items() if k != "model"})

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        """Check a configuration without loading anything.

        Args:
            config: Settings as produced by :meth:`get_config`.

        Raises:
            ConfigError: Unknown keys, a missing model, or settings the engine would refuse.
        """
        _parse(config)

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        """Refuse updates that would mix incomparable vectors in one collection.

        The settings compared are the engine's :data:`~kvemb_rag.engine.config.VECTOR_SETTINGS`, the same
        list the store's embedder identity is made of, less the dtype (it changes the vectors only by
        rounding, as the store's identity check has it); defaults are spelled out on both sides first.

        Args:
            old_config: The stored configuration.
            new_config: The proposed one.

        Raises:
            ConfigError: A setting that changes the vectors differs; ``device``, ``dtype``, ``batch_size``
                and ``max_padding`` may change.
        """
        old, new = _stored(_parse(old_config)), _stored(_parse(new_config))
        compared = [k for k in VECTOR_SETTINGS if k not in PRECISION_SETTINGS]  # a dtype change is only rounding
        changed = [k for k in compared if canonical_json(old.get(k)) != canonical_json(new.get(k))]
        if changed:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
            raise ConfigError(
                f"Cannot change {shown}: the collection's vectors were made with the old settings and would "
                "not be comparable. Create a new collection and re-add the documents instead."
            )

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(model={self.model!r}, strategy={self.config.strategy!r}, layers={self.config.layers!r})"


def _recorded(config: dict[str, Any]) -> dict[str, Any]:
    """A stored configuration as the settings that made it: one stored before centring existed had none."""
    return {"centring": False, **config}


def _parse(config: dict[str, Any]) -> EmbedderConfig:
    """A stored configuration, validated, with its defaults spelled out."""
    config = _recorded(config)
    unknown = sorted(set(config) - set(STORED_SETTINGS))
    if unknown:
        raise ConfigError(f"Unknown kvemb embedding-function settings {unknown}; valid: {list(STORED_SETTINGS)}.")
    model = cast(str, config.get("model"))  # EmbedderConfig names a missing or blank model
    return validate_settings(model, **{k: v for k, v in config.items() if k != "model"}).explicit()


def _stored(config: EmbedderConfig) -> dict[str, Any]:
    """The JSON form of the settings a collection keeps."""
    stored: dict[str, Any] = {}
    for name in STORED_SETTINGS:
        value = getattr(config, name)
        if name == "layers" and not isinstance(value, str):
            value = list(value)
        elif name == "selection":
            value = dataclasses.asdict(value)
        stored[name] = value
    return stored
