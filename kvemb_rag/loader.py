"""Loading decoder-only models and tokenizers, once per process per weights/device/dtype."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from kvemb_rag import attention

__all__ = [
    "ENCODER_MODEL_TYPES",
    "VERIFIED_MODEL_TYPES",
    "LoadedModel",
    "clear_model_cache",
    "load_model",
    "resolve_device",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)

#: Model types whose re-routing the test-suite verifies against an independent reference.
VERIFIED_MODEL_TYPES: frozenset[str] = frozenset({"llama", "mistral", "qwen2", "qwen3"})
#: Model types that are not decoders; refused with a pointer to sentence-transformers.
ENCODER_MODEL_TYPES: frozenset[str] = frozenset(
    {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "deberta", "deberta-v2", "mpnet", "albert",
     "modernbert", "nomic_bert", "camembert", "t5", "mt5", "bart", "mbart", "pegasus"}
)
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@dataclass(frozen=True)
class LoadedModel:
    """A loaded base model (no LM head) with its tokenizer and identity."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    source: str
    revision: str | None
    device: torch.device
    dtype: torch.dtype

    @property
    def num_layers(self) -> int:
        """Number of decoder layers."""
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        """Width of the final hidden state (the embedding size)."""
        return int(self.model.config.hidden_size)

    @property
    def context_size(self) -> int | None:
        """The model's maximum position count, when its config states one."""
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if value else None

    def fingerprint(self) -> str:
        """Stable identity of the weights: the hub commit, or a hash of config and weight files.

        Returns:
            ``"<name>@<commit>"`` for hub models with a resolved commit, else ``"sha256:<hex>"`` of the
            local directory's config and weight files (cached per path, size and mtime).
        """
        return _fingerprint(self.source, self.name, self.revision, self.model.config)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on: the given one, else CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:0'.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available here; use device='cpu'.")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute dtype: the given one, else bfloat16 on CUDA and float32 elsewhere."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype={dtype} is not supported; use one of float32, bfloat16, float16.")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of: {', '.join(sorted(_DTYPES))}.")
    return _DTYPES[dtype]


def _offline_hint(name: str) -> str:
    return (
        f"Could not load {name!r}. If it is a local directory, check that the path exists and holds "
        "config.json, the tokenizer and the weights. If it is a hub name, this machine could not reach the hub "
        "and has no cached copy: download it once where the hub is reachable (`hf download "
        f"{name}`) and run with HF_HUB_OFFLINE=1, or pass the local directory instead."
    )


def _load_config(name: str, revision: str | None, trust_remote_code: bool) -> PretrainedConfig:
    looks_local = name.startswith((".", "/", "~")) or os.sep + os.sep in name or name.count("/") > 1
    if looks_local and not Path(name).expanduser().exists():
        raise FileNotFoundError(f"Model directory {name!r} does not exist. " + _offline_hint(name))
    try:
        return AutoConfig.from_pretrained(
            str(Path(name).expanduser()) if looks_local else name,
            revision=revision,
            trust_remote_code=trust_remote_code,
        )
    except OSError as exc:
        raise OSError(_offline_hint(name)) from exc


def _check_architecture(config: PretrainedConfig, name: str, allow_unverified: bool) -> None:
    model_type = getattr(config, "model_type", "?")
    if getattr(config, "is_encoder_decoder", False) or model_type in ENCODER_MODEL_TYPES:
        raise ValueError(
            f"{name!r} is a {model_type!r} model, which is not a decoder-only LLM; KV-Embedding needs a causal "
            f"decoder such as {', '.join(sorted(VERIFIED_MODEL_TYPES))}. Use sentence-transformers for encoders."
        )
    if model_type not in VERIFIED_MODEL_TYPES and not allow_unverified:
        raise ValueError(
            f"Model type {model_type!r} of {name!r} is not verified by kvemb-rag's test-suite (verified: "
            f"{', '.join(sorted(VERIFIED_MODEL_TYPES))}). Pass allow_unverified_architecture=True to try it; the "
            "engine still refuses to run if re-routing does not reach every selected layer."
        )


_CACHE: dict[tuple[object, ...], LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def load_model(
    name: str,
    *,
    revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    allow_unverified_architecture: bool = False,
) -> LoadedModel:
    """Load a decoder's base model (``AutoModel``, no LM head) and tokenizer, or reuse a loaded one.

    Models are shared per process, keyed by every setting that changes the weights, device or dtype
    (name, revision, device, dtype, trust_remote_code), so two pipelines built with the same settings load
    the model once.

    Args:
        name: Hub name or local directory.
        revision: Hub revision.
        device: Torch device; ``None`` picks CUDA when available, else CPU.
        dtype: Compute dtype; ``None`` picks bfloat16 on CUDA, float32 elsewhere.
        trust_remote_code: Passed to transformers.
        allow_unverified_architecture: Allow model types outside :data:`VERIFIED_MODEL_TYPES`.

    Returns:
        The loaded model, in eval mode on ``device``, with its attention routed through
        :func:`kvemb_rag.attention.kv_reroute_attention`.

    Raises:
        FileNotFoundError: A local path that does not exist.
        OSError: A hub name that cannot be reached or found in the local cache.
        ValueError: An encoder or unverified architecture, or a bad device / dtype.
    """
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    local = Path(name).expanduser()
    source = str(local.resolve()) if local.is_dir() else name
    key = (source, revision, str(resolved_device), resolved_dtype, trust_remote_code)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        config = _load_config(source, revision, trust_remote_code)
        _check_architecture(config, name, allow_unverified_architecture)
        attention.register()
        logger.info("Loading %s (%s, %s)", name, resolved_device, resolved_dtype)
        try:
            model = AutoModel.from_pretrained(
                source,
                revision=revision,
                dtype=resolved_dtype,
                attn_implementation=attention.ATTENTION_NAME,
                trust_remote_code=trust_remote_code,
            )
            tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)
        except OSError as exc:
            raise OSError(_offline_hint(name)) from exc
        except KeyError as exc:
            if attention.ATTENTION_NAME not in str(exc):
                raise
            raise ValueError(
                f"{name!r} ({config.model_type}) picks attention classes from its own table instead of "
                "transformers' attention registry, so KV-Embedding cannot re-route it. Verified types: "
                f"{', '.join(sorted(VERIFIED_MODEL_TYPES))}."
            ) from exc
        model.to(resolved_device).eval()
        model.requires_grad_(False)
        _prepare_tokenizer(tokenizer, name)
        loaded = LoadedModel(model, tokenizer, name, source, revision, resolved_device, resolved_dtype)
        _CACHE[key] = loaded
        return loaded


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    if not tokenizer.is_fast:
        raise ValueError(
            f"The tokenizer of {name!r} is a slow (Python) tokenizer; kvemb-rag needs a fast tokenizer for "
            "character offsets (chunk spans, echo pooling). Install `tokenizers` and a checkpoint with "
            "tokenizer.json."
        )
    # Right padding: pads come after every real token, so causal attention never lets them reach one.
    tokenizer.padding_side = "right"
    # The engine enforces its own max_length (chunking / truncation); silence the tokenizer's length warning.
    tokenizer.model_max_length = 1 << 30
    if tokenizer.pad_token_id is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is not None:
            tokenizer.pad_token = fallback
        else:
            # Pads are never attended by real tokens (right padding + causal mask), so any id is safe.
            tokenizer.pad_token_id = 0
        logger.debug("%s has no pad token; padding with %r", name, tokenizer.pad_token)


def clear_model_cache() -> None:
    """Forget every shared model (they are freed once no embedder holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


_FINGERPRINTS: dict[tuple[object, ...], str] = {}


def _fingerprint(source: str, name: str, revision: str | None, config: PretrainedConfig) -> str:
    path = Path(source)
    if not path.is_dir():
        commit = getattr(config, "_commit_hash", None) or revision or "main"
        return f"{name}@{commit}"
    files = sorted(
        p for p in path.iterdir()
        if p.is_file() and (p.name == "config.json" or p.suffix in {".safetensors", ".bin", ".pt"})
    )
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    cached = _FINGERPRINTS.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode())
        with p.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 22), b""):  # type: ignore[misc]
                digest.update(block)
    result = "sha256:" + digest.hexdigest()[:32]
    _FINGERPRINTS[key] = result
    return result
