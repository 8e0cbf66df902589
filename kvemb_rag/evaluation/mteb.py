"""Run MTEB with a KV-Embedding model: an adapter to the ``mteb`` package's encoder protocol (mteb 2.x).

``mteb.models.EncoderProtocol`` (mteb 2.x) asks for ``encode(inputs: DataLoader[BatchedInput], *,
task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs) -> Array``, ``similarity``,
``similarity_pairwise`` and a ``mteb_model_meta`` property. Each batch of the DataLoader is a dict whose
``"text"`` list holds the texts (for corpora mteb has already joined ``title + " " + text``).
``prompt_type`` ``query`` maps to :meth:`encode_query`, ``document`` to :meth:`encode_document`, and ``None``
(symmetric tasks: STS, classification, clustering...) to the document side, as docs/method.md ("The prompt") decides.

Needs ``pip install "kvemb-rag[eval]"`` (mteb) and hub access for the task datasets.

Example:
    >>> import mteb  # doctest: +SKIP
    >>> from kvemb_rag.evaluation.mteb import MTEBEncoder
    >>> model = MTEBEncoder("Qwen/Qwen3-0.6B", strategy="kv")  # doctest: +SKIP
    >>> results = mteb.evaluate(model, mteb.get_tasks(tasks=["STSBenchmark", "SciFact"]))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kvemb_rag.errors import ConfigError
from kvemb_rag.evaluation.encoders import SENTENCE_TRANSFORMERS_STRATEGY, Encoder, load_encoder

if TYPE_CHECKING:
    import torch

__all__ = ["MTEBEncoder"]


def _texts(inputs: Iterable[Mapping[str, Any]]) -> list[str]:
    texts: list[str] = []
    for batch in inputs:
        if "text" not in batch:
            raise TypeError(f"MTEBEncoder embeds text only; got a batch with keys {sorted(batch)} (no 'text' column).")
        texts.extend(str(t) for t in batch["text"])
    return texts


def _meta_name(model: str) -> str:
    # mteb requires "organization/model_name"; local directories are named by their folder.
    if Path(model).exists():
        return f"local/{Path(model).resolve().name}"
    return model if "/" in model else f"local/{model}"


class MTEBEncoder:
    """An :class:`~kvemb_rag.evaluation.encoders.Encoder` (e.g. a KVEmbedder) as an mteb 2.x encoder.

    Args:
        model_name: A model string for :func:`~kvemb_rag.evaluation.encoders.load_encoder` (hub name, local
            decoder directory or sentence-transformers directory), or an already built encoder to wrap.
        revision: Hub revision (decoder models).
        device: Torch device.
        strategy: KV-Embedding strategy (decoder models).
        **kwargs: Further :class:`kvemb_rag.KVEmbedder` arguments.
    """

    def __init__(
        self,
        model_name: str | Path | Encoder,
        revision: str | None = None,
        *,
        device: str | None = None,
        strategy: str = "kv",
        **kwargs: Any,
    ) -> None:
        if isinstance(model_name, (str, Path)):
            engine_kwargs = dict(kwargs)
            if device is not None:
                engine_kwargs["device"] = device
            if revision is not None:
                engine_kwargs["revision"] = revision
            self.encoder: Encoder = load_encoder(model_name, strategy, **engine_kwargs)
            self.model_name = str(model_name)
        else:
            if kwargs or device is not None:
                raise TypeError("device and engine settings apply only when MTEBEncoder loads the model by name.")
            self.encoder = model_name
            config = getattr(model_name, "config", None)
            self.model_name = str(getattr(config, "model", None) or getattr(model_name, "name", "kvemb"))
        config = getattr(self.encoder, "config", None)
        self.revision = revision or getattr(config, "revision", None)
        self.strategy = str(getattr(self.encoder, "strategy", SENTENCE_TRANSFORMERS_STRATEGY))

    def encode(
        self,
        inputs: Iterable[Mapping[str, Any]],
        *,
        task_metadata: Any = None,
        hf_split: str | None = None,
        hf_subset: str | None = None,
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed the texts of an mteb DataLoader.

        Args:
            inputs: ``DataLoader[BatchedInput]``: batches with a ``"text"`` list.
            task_metadata: The task's metadata (unused: templates come from the strategy).
            hf_split: Split name (unused).
            hf_subset: Subset name (unused).
            prompt_type: ``mteb.types.PromptType.query`` / ``.document`` or ``None`` (document side).
            **kwargs: mteb's encode kwargs; ``batch_size`` and ``show_progress_bar`` are passed on.

        Returns:
            ``float32`` array ``(n, dim)`` of unit rows.

        Raises:
            ValueError: An unknown prompt type.
            TypeError: A batch without texts (image/audio tasks).
        """
        texts = _texts(inputs)
        side = getattr(prompt_type, "value", prompt_type)
        options = {key: kwargs[key] for key in ("batch_size", "show_progress_bar") if key in kwargs}
        if side == "query":
            return np.asarray(self.encoder.encode_query(texts, **options), dtype=np.float32)
        if side in (None, "document"):
            return np.asarray(self.encoder.encode_document(texts, **options), dtype=np.float32)
        raise ConfigError(f"prompt_type={prompt_type!r} is not valid; expected query, document or None.")

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """Cosine similarity matrix ``(n1, n2)``."""
        import torch

        a = torch.nn.functional.normalize(
            torch.as_tensor(np.asarray(embeddings1), dtype=torch.float32).reshape(-1, np.shape(embeddings1)[-1]),
            dim=-1,
        )  # (n1, D)
        b = torch.nn.functional.normalize(
            torch.as_tensor(np.asarray(embeddings2), dtype=torch.float32).reshape(-1, np.shape(embeddings2)[-1]),
            dim=-1,
        )  # (n2, D)
        return a @ b.T  # (n1, n2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """Cosine similarity of corresponding rows ``(n,)``."""
        import torch

        a = torch.nn.functional.normalize(torch.as_tensor(np.asarray(embeddings1), dtype=torch.float32), dim=-1)
        b = torch.nn.functional.normalize(torch.as_tensor(np.asarray(embeddings2), dtype=torch.float32), dim=-1)
        return (a * b).sum(dim=-1)

    @property
    def mteb_model_meta(self) -> Any:
        """``mteb.models.ModelMeta`` describing the model (name, revision, strategy, size, cosine scoring)."""
        try:
            from mteb.models.model_meta import ModelMeta, ScoringFunction
        except ImportError as exc:
            raise ModuleNotFoundError('MTEB metadata needs `pip install "kvemb-rag[eval]"` (mteb>=2).') from exc
        dim = getattr(self.encoder, "dim", None)
        max_tokens = getattr(self.encoder, "max_length", None)
        decoder = self.strategy != SENTENCE_TRANSFORMERS_STRATEGY
        return ModelMeta.create_empty(
            overwrites={
                "name": _meta_name(self.model_name),
                "revision": self.revision,
                "embed_dim": int(dim) if isinstance(dim, int) else None,
                "max_tokens": int(max_tokens) if isinstance(max_tokens, int) else None,
                "similarity_fn_name": ScoringFunction.COSINE,
                "framework": ["PyTorch"],
                "use_instructions": decoder,
                "experiment_kwargs": {"strategy": self.strategy} if decoder else None,
            }
        )

    def __repr__(self) -> str:
        return f"MTEBEncoder({self.encoder!r})"
