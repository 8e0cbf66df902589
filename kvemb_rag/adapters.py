"""What the framework adapters share: the engine settings as pydantic fields, validated, and the shared engine.

``langchain-kvemb`` (:class:`KVEmbeddings`) and ``llama-index-embeddings-kvemb`` (:class:`KVEmbedding`) are
pydantic models. Their engine fields are not written out by hand: :func:`settings_model` derives them from
:class:`~kvemb_rag.engine.config.EmbedderConfig` (type, default, description), so an engine setting added
there reaches both adapters, validated by the engine's own rules when the adapter is constructed.
Importing this module (and so an adapter package) loads no torch: the engine is imported when an adapter
first needs it (:attr:`EngineSettings.engine`).

Example:
    >>> from pydantic import BaseModel
    >>> from kvemb_rag.adapters import settings_model
    >>> Settings = settings_model(BaseModel, "Settings")
    >>> Settings(strategy="kv-ablation").engine_request()[1]["strategy"]
    'kv-ablation'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, create_model, model_validator

from kvemb_rag.engine.config import SETTINGS, pydantic_fields, validate_settings
from kvemb_rag.errors import ConfigError

if TYPE_CHECKING:
    from kvemb_rag.engine.embedder import KVEmbedder

__all__ = ["EngineSettings", "settings_model"]

M = TypeVar("M", bound=BaseModel)


class EngineSettings:
    """Mixin of an adapter model whose fields are the engine settings (see :func:`settings_model`)."""

    #: Setting name -> field name, where the framework spells a setting differently.
    engine_field_names: ClassVar[Mapping[str, str]] = {}

    def engine_request(self) -> tuple[str, dict[str, Any]]:
        """The model and the other engine settings this adapter holds."""
        names = self.engine_field_names
        settings = {name: getattr(self, names.get(name, name)) for name in SETTINGS}
        return str(settings.pop("model")), settings

    @property
    def engine(self) -> KVEmbedder:
        """The engine for the current settings, loaded on first use and shared across the process."""
        from kvemb_rag.engine.shared import shared_embedder  # imports torch: only when an engine is needed

        model, settings = self.engine_request()
        return shared_embedder(model, **settings)


def _check_engine_settings(self: Any) -> Any:
    # The engine's own validation, without loading anything: bad templates or an empty model fail here.
    model, settings = self.engine_request()
    try:
        validate_settings(model, **settings)
    except ConfigError as exc:
        # The engine names its settings; say which field of this framework that is.
        names = self.engine_field_names.items()
        renamed = [f"{field} is the engine's {name}" for name, field in names if f"{name}=" in str(exc)]
        if renamed:
            raise ConfigError(f"{exc} ({'; '.join(renamed)})") from exc
        raise
    return self


def settings_model(base: type[M], name: str, rename: Mapping[str, str] | None = None) -> type[M]:
    """A pydantic model class: ``base`` plus one field per engine setting, validated by the engine.

    Args:
        base: The framework's base model (``pydantic.BaseModel``, LlamaIndex's ``BaseEmbedding``...).
        name: The new class's name.
        rename: Field names the framework spells differently, e.g. ``{"model": "model_name"}``.

    Returns:
        A subclass of ``base`` and :class:`EngineSettings` for the adapter to subclass.
    """
    names = dict(rename or {})
    validators: dict[str, Any] = {"_check_engine_settings": model_validator(mode="after")(_check_engine_settings)}
    fields = pydantic_fields(names)
    created: Any = create_model(name, __base__=(base, EngineSettings), __validators__=validators, **fields)
    created.engine_field_names = names
    model: type[M] = created
    return model
