"""The compute dtype: names, the machine's default, and whether a dtype runs natively here.

``dtype=None`` means ``$KVEMB_DTYPE`` when set, else bfloat16 where the hardware computes it natively (CUDA,
and CPUs with AMX, AVX512-BF16 or Arm's BF16 extension, detected rather than guessed) and float32 elsewhere.
On the bundled models bfloat16 scores as float32 within dev noise and embeds about 2.5x faster on such a CPU
(``docs/method.md``, "Precision and speed").
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import subprocess
from pathlib import Path

import torch

from kvemb_rag.engine.config import DTYPE_ALIASES, DTYPES
from kvemb_rag.errors import ConfigError

__all__ = ["cpu_bf16_feature", "default_dtype", "dtype_name", "resolve_dtype", "runs_natively"]

logger = logging.getLogger(__name__)

_TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPES}


@functools.cache
def cpu_bf16_feature() -> str | None:
    """The CPU feature that gives this machine native bfloat16 arithmetic, or ``None`` when it has none.

    Checked in order: Intel AMX and AVX512-BF16 (as torch detects them), then Arm's BF16 extension
    (``bf16`` in ``/proc/cpuinfo`` on Linux, ``hw.optional.arm.FEAT_BF16`` on macOS).
    """
    for feature, probe in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported")):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return feature
        except RuntimeError:  # a torch build without the probe's backend
            continue
    if platform.machine().lower() not in ("arm64", "aarch64"):
        return None
    if platform.system() == "Darwin":
        try:
            found = subprocess.run(
                ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5, check=False
            ).stdout.strip()
        except OSError:
            return None
        return "Arm BF16" if found == "1" else None
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    flags = {flag for line in cpuinfo.splitlines() if line.lower().startswith("features") for flag in line.split()}
    return "Arm BF16" if "bf16" in flags else None


def runs_natively(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether ``device`` computes ``dtype`` in hardware (float32 always; half types on CUDA or a capable CPU)."""
    if dtype == torch.float32 or device.type == "cuda":
        return True
    return dtype == torch.bfloat16 and device.type == "cpu" and cpu_bf16_feature() is not None


@functools.cache
def _announce(device_type: str, dtype: torch.dtype) -> None:
    if device_type == "cpu" and dtype == torch.bfloat16:
        logger.info(
            "This CPU computes bfloat16 natively (%s): embedding in bfloat16; pass dtype='float32' for full precision.",
            cpu_bf16_feature(),
        )
    elif device_type == "cpu":
        logger.info("This CPU has no native bfloat16 (AMX, AVX512-BF16 or Arm BF16): embedding in float32.")


def default_dtype(device: torch.device) -> torch.dtype:
    """The dtype ``dtype=None`` means on ``device`` (logged once).

    ``$KVEMB_DTYPE`` when set, else bfloat16 where it runs natively, else float32.

    Raises:
        ConfigError: ``$KVEMB_DTYPE`` names no supported dtype.
    """
    chosen = os.environ.get("KVEMB_DTYPE")
    if chosen:
        try:
            return resolve_dtype(chosen, device)
        except ConfigError as exc:
            raise ConfigError(f"$KVEMB_DTYPE: {exc} Fix or unset the environment variable.") from exc
    dtype = torch.bfloat16 if runs_natively(torch.bfloat16, device) else torch.float32
    _announce(device.type, dtype)
    return dtype


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute dtype: the given one (a name, short name or torch dtype), else :func:`default_dtype`.

    Raises:
        ConfigError: The dtype is not one of :data:`~kvemb_rag.engine.config.DTYPES` or their short names.
    """
    if dtype is None:
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        if dtype not in _TORCH_DTYPES.values():
            raise ConfigError(f"dtype={dtype} is not supported; use one of {', '.join(DTYPES)}.")
        return dtype
    name = DTYPE_ALIASES.get(dtype, dtype)
    if name not in _TORCH_DTYPES:
        valid = ", ".join([*DTYPES, *DTYPE_ALIASES])
        raise ConfigError(f"dtype={dtype!r} is not supported; use one of: {valid} (or None for the default).")
    return _TORCH_DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")
