"""Loading decoder-only models and tokenizers, once per process per weights/device/dtype."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import threading
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import safetensors.torch
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from kvemb_rag.engine import attention
from kvemb_rag.engine.models import (
    GGUFFileError,
    ModelSource,
    cache_directory,
    file_sha256,
    gguf_architecture,
    resolve_source,
)
from kvemb_rag.engine.precision import resolve_dtype
from kvemb_rag.errors import ConfigError, ModelLoadError, UnsupportedModelError

__all__ = [
    "ENCODER_MODEL_TYPES",
    "VERIFIED_MODEL_TYPES",
    "LoadedModel",
    "attach_model",
    "clear_model_cache",
    "load_causal_lm",
    "load_model",
    "resolve_device",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)

#: Model types whose re-routing the test-suite verifies against an independent reference.
VERIFIED_MODEL_TYPES: frozenset[str] = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma3_text"})
#: Model types that are not decoders; refused with a pointer to sentence-transformers.
ENCODER_MODEL_TYPES: frozenset[str] = frozenset(
    {
        "bert",
        "roberta",
        "xlm-roberta",
        "distilbert",
        "electra",
        "deberta",
        "deberta-v2",
        "mpnet",
        "albert",
        "modernbert",
        "nomic_bert",
        "camembert",
        "t5",
        "mt5",
        "bart",
        "mbart",
        "pegasus",
    }
)


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
    weights_id: str | None = None
    attached: bool = False  # a user's model wrapped by attach_model (cannot be reloaded by name)

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
        """Stable identity of the weights: the GGUF file's hash, the hub commit, or a hash of the files.

        Returns:
            ``"sha256:<hex>"`` of a GGUF file (or of an attached model's parameters), ``"<name>@<commit>"``
            for hub models with a resolved commit, else ``"sha256:<hex>"`` of the local directory's config and
            weight files (cached per path, size and mtime).
        """
        if self.weights_id is not None:
            return self.weights_id
        return _fingerprint(self.source, self.name, self.revision, self.model.config)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to run on: the given one, else CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device={device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:0'.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} was requested but CUDA is not available here; use device='cpu'.")
    return resolved


def _offline_hint(name: str) -> str:
    return (
        f"Could not load {name!r}. If it is a local directory, check that the path exists and holds "
        "config.json, the tokenizer and the weights. If it is a hub name, this machine could not reach the hub "
        "and has no cached copy: download it once where the hub is reachable (`hf download "
        f"{name}`) and run with HF_HUB_OFFLINE=1, or pass the local directory instead."
    )


def _load_config(source: ModelSource, revision: str | None, trust_remote_code: bool) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(
            source.location, revision=revision, trust_remote_code=trust_remote_code, gguf_file=source.gguf_file
        )
    except OSError as exc:
        raise ModelLoadError(_offline_hint(source.name)) from exc


def _check_gguf_architecture(source: ModelSource) -> None:
    architecture = gguf_architecture(source.path)
    supported = attention.gguf_architectures()
    if supported and architecture not in supported:
        raise UnsupportedModelError(
            f"{str(source.path)!r} is a GGUF file of architecture {architecture!r}, which transformers "
            f"{transformers.__version__} cannot load from GGUF. Supported GGUF architectures: "
            f"{', '.join(sorted(supported))}. Use the model's transformers checkpoint (a hub name or folder) instead."
        )


# The dequantised copy of a GGUF file is kept when its fp32 weights fit this many bytes.
_CONVERTED_MAX_BYTES = 4 << 30
_CONVERTED_MARKER = "kvemb-gguf-source.json"


def _gguf_folder(source: ModelSource, digest: str, cache_dir: str | None) -> Path | None:
    """A transformers folder holding the dequantised GGUF model, converted once per file (None: too large).

    Reading a GGUF file costs transformers three passes over its metadata in Python (config, weights,
    tokenizer), seconds per pass; the converted folder (fp32 safetensors, tokenizer.json) loads in a fraction
    of that. It lives in ``<cache>/gguf/<sha256>``, keyed by the file's content.
    """
    folder = cache_directory(cache_dir) / "gguf" / digest[:32]
    if (folder / _CONVERTED_MARKER).is_file():
        return folder
    if os.environ.get("KVEMB_GGUF_CACHE", "1") == "0":
        return None
    logger.info("Converting %s (dequantising; once per file) into %s", source.path, folder)
    model, tokenizer = _read_gguf(source, AutoModelForCausalLM, torch.float32)
    n_bytes = sum(p.numel() * 4 for p in model.parameters())
    if n_bytes > _CONVERTED_MAX_BYTES:
        logger.info("Not caching the conversion of %s (%.1f GiB in fp32)", source.path, n_bytes / 2**30)
        return None
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + "."))
    try:
        # save_pretrained refuses a model loaded through the GGUF quantizer; the dequantised weights are plain
        # tensors, so they are written directly (tied embeddings once) with a config free of quantisation.
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        safetensors.torch.save_file(_untied_state(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        (tmp / _CONVERTED_MARKER).write_text(
            json.dumps({"gguf": str(source.path), "sha256": digest, "transformers": transformers.__version__}),
            encoding="utf-8",
        )
        if folder.exists():  # a stale, unmarked attempt
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except FileExistsError:  # another process converted it at the same time
        pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _untied_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor once, under its base-model name (a tied LM head is dropped)."""
    state = model.state_dict()
    kept: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for key in sorted(state, key=lambda k: (not k.startswith("model."), k)):  # base-model names first
        tensor = state[key]
        tag = (tensor.data_ptr(), tuple(tensor.shape))
        if tag in seen:
            continue
        seen.add(tag)
        kept[key] = tensor.detach().contiguous()
    return kept


def _read_gguf(source: ModelSource, cls: Any, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        model = cls.from_pretrained(source.location, gguf_file=source.gguf_file, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    except (ValueError, OSError, IndexError, KeyError, TypeError, struct.error) as exc:
        size = source.path.stat().st_size
        raise GGUFFileError(
            f"Could not read the GGUF file {str(source.path)!r} ({size:,} bytes): {type(exc).__name__}: {exc}. "
            "It may be truncated or corrupt (download or copy it again), or hold tensors transformers cannot "
            "dequantise."
        ) from exc
    return model, tokenizer


def _open(
    source: ModelSource,
    cls: Any,
    *,
    revision: str | None,
    dtype: torch.dtype,
    trust_remote_code: bool,
    cache_dir: str | None,
    allow_unverified: bool,
    **model_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str | None]:
    """Load ``cls`` (AutoModel / AutoModelForCausalLM) and the tokenizer; returns them and the weights id."""
    weights_id = None
    location, gguf_file = source.location, source.gguf_file
    if source.kind == "gguf":
        _check_gguf_architecture(source)
        digest = file_sha256(source.path, cache_dir)
        weights_id = "sha256:" + digest
        folder = _gguf_folder(source, digest, cache_dir)
        if folder is not None:
            location, gguf_file = str(folder), None
    config = _load_config(replace(source, location=location, gguf_file=gguf_file), revision, trust_remote_code)
    _check_architecture(config, source.name, allow_unverified)
    try:
        if gguf_file is not None:
            model, tokenizer = _read_gguf(source, cls, dtype)  # conversion not cached: straight from the file
            return model, tokenizer, weights_id
        model = cls.from_pretrained(
            location, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code, **model_kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(location, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelLoadError(_offline_hint(source.name)) from exc
    return model, tokenizer, weights_id


def _check_architecture(config: PretrainedConfig, name: str, allow_unverified: bool) -> None:
    model_type = getattr(config, "model_type", "?")
    if getattr(config, "is_encoder_decoder", False) or model_type in ENCODER_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{name!r} is a {model_type!r} model, which is not a decoder-only LLM; KV-Embedding needs a causal "
            f"decoder such as {', '.join(sorted(VERIFIED_MODEL_TYPES))}. Use sentence-transformers for encoders."
        )
    if model_type not in VERIFIED_MODEL_TYPES and not allow_unverified:
        raise UnsupportedModelError(
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
    cache_dir: str | None = None,
) -> LoadedModel:
    """Load a decoder's base model (``AutoModel``, no LM head) and tokenizer, or reuse a loaded one.

    Models are shared per process, keyed by every setting that changes the weights, device or dtype
    (source, revision, device, dtype, trust_remote_code), so two pipelines built with the same settings load
    the model once.

    Args:
        name: Hub name, local directory, GGUF file (or a folder holding one), or a bundled model name
            (:data:`kvemb_rag.engine.models.BUNDLED_MODELS`); see :func:`kvemb_rag.engine.models.resolve_source`.
        revision: Hub revision.
        device: Torch device; ``None`` picks CUDA when available, else CPU.
        dtype: Compute dtype; ``None`` picks bfloat16 where it runs natively (CUDA, a bf16-capable CPU), else float32.
        trust_remote_code: Passed to transformers.
        allow_unverified_architecture: Allow model types outside :data:`VERIFIED_MODEL_TYPES`.
        cache_dir: kvemb-rag's cache (GGUF hashes and conversions); default ``$KVEMB_CACHE_DIR`` or
            ``~/.cache/kvemb-rag``.

    Returns:
        The loaded model, in eval mode on ``device``, with its attention routed through
        :func:`kvemb_rag.engine.attention.kv_reroute_attention`.

    Raises:
        FileNotFoundError: A local path that does not exist, or a bundled model that is not installed.
        OSError: A hub name that cannot be reached or found in the local cache.
        ValueError: An encoder or unverified architecture, a GGUF architecture transformers cannot read, a
            damaged GGUF file (:class:`~kvemb_rag.engine.models.GGUFFileError`), or a bad device / dtype.
    """
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    source = resolve_source(name, cache_dir)
    key = (str(source.path), revision, str(resolved_device), resolved_dtype, trust_remote_code)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        attention.register()
        logger.info("Loading %s (%s, %s)", name, resolved_device, resolved_dtype)
        try:
            model, tokenizer, weights_id = _open(
                source,
                AutoModel,
                revision=revision,
                dtype=resolved_dtype,
                trust_remote_code=trust_remote_code,
                cache_dir=cache_dir,
                allow_unverified=allow_unverified_architecture,
                attn_implementation=attention.ATTENTION_NAME,
            )
        except KeyError as exc:
            if attention.ATTENTION_NAME not in str(exc):
                raise
            raise UnsupportedModelError(
                f"{name!r} picks attention classes from its own table instead of transformers' attention "
                "registry, so KV-Embedding cannot re-route it. Verified types: "
                f"{', '.join(sorted(VERIFIED_MODEL_TYPES))}."
            ) from exc
        attention.route(model)
        model.to(resolved_device).eval()  # type: ignore[arg-type]
        model.requires_grad_(False)
        _prepare_tokenizer(tokenizer, name)
        loaded = LoadedModel(
            model, tokenizer, name, str(source.path), revision, resolved_device, resolved_dtype, weights_id
        )
        _CACHE[key] = loaded
        return loaded


def load_causal_lm(
    name: str,
    *,
    revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM for generation from any source :class:`~kvemb_rag.KVEmbedder` accepts.

    Pass the result to :meth:`KVEmbedder.from_model <kvemb_rag.KVEmbedder.from_model>` to embed with the
    same weights (no second copy): one model in memory for retrieval and generation. A GGUF model keeps its
    file's SHA-256 as the weights identity, so stores built by ``KVEmbedder("file.gguf")`` accept it.

    Returns:
        ``(model, tokenizer)``, the model in eval mode on ``device``.
    """
    resolved_device = resolve_device(device)
    source = resolve_source(name, cache_dir)
    model, tokenizer, weights_id = _open(
        source,
        AutoModelForCausalLM,
        revision=revision,
        dtype=resolve_dtype(dtype, resolved_device),
        trust_remote_code=trust_remote_code,
        cache_dir=cache_dir,
        allow_unverified=True,
    )
    model.to(resolved_device).eval()  # type: ignore[arg-type]
    _WEIGHTS_IDS[model] = (name, str(source.path), weights_id)
    return model, tokenizer


# Models loaded by load_causal_lm: their name, source and weights id, for KVEmbedder.from_model.
_WEIGHTS_IDS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[str, str, str | None]] = weakref.WeakKeyDictionary()


def attach_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    name: str | None = None,
    weights_id: str | None = None,
    allow_unverified_architecture: bool = False,
) -> LoadedModel:
    """Wrap an already-loaded model (a causal LM or its base model) for embedding, sharing its weights.

    The model's attention is routed through kvemb-rag's registered function, which runs transformers' SDPA
    attention whenever no re-routing state is passed: generation with the same model is unchanged. The
    tokenizer is copied (the engine pads on the right) and the user's is left as it was.

    Args:
        model: The loaded model.
        tokenizer: Its fast tokenizer.
        name: Name recorded in the embedder's identity; default the model's ``name_or_path``.
        weights_id: Identity of the weights; default the one :func:`load_causal_lm` recorded, else a hash of
            the parameters.
        allow_unverified_architecture: Allow model types outside :data:`VERIFIED_MODEL_TYPES`.
    """
    known = _WEIGHTS_IDS.get(model)
    base = cast(PreTrainedModel, model.base_model)
    config = base.config
    display = name or (known[0] if known else None) or str(getattr(config, "name_or_path", "") or type(model).__name__)
    _check_architecture(config, display, allow_unverified_architecture)
    attention.register()
    attention.route(model)
    first = next(base.parameters())
    tokenizer = copy.deepcopy(tokenizer)
    _prepare_tokenizer(tokenizer, display)
    source = known[1] if known else f"memory:{id(base)}"
    loaded = LoadedModel(
        base,
        tokenizer,
        display,
        source,
        None,
        first.device,
        first.dtype,
        weights_id or (known[2] if known else None),
        attached=True,
    )
    if loaded.weights_id is None:
        object.__setattr__(loaded, "weights_id", _parameters_digest(base))
    return loaded


def _parameters_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:32]


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    if not tokenizer.is_fast:
        raise UnsupportedModelError(
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
        p
        for p in path.iterdir()
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
