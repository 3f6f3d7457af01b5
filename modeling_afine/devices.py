"""Device and dtype names for A-FINE (torch only, no transformers): checked, with one-line errors."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["DeviceNotAvailableError", "resolve_device", "resolve_dtype"]


class DeviceNotAvailableError(RuntimeError):
    """The requested device does not exist in this PyTorch build or on this machine."""


def _device_problem(dev: torch.device) -> Optional[str]:
    """Why ``dev`` cannot be used here, or None when it can."""
    if dev.type == "cpu":
        return None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
                return f"this PyTorch build ({torch.__version__}) has no CUDA support"
            return "no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES)"
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            return f"only {count} CUDA device(s) are visible (cuda:0 to cuda:{count - 1})"
        return None
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return "MPS is not available (it needs Apple silicon and a macOS build of PyTorch)"
        if dev.index not in (None, 0):
            return "there is only one MPS device (mps or mps:0)"
        return None
    backend = getattr(torch, dev.type, None)
    is_available = getattr(backend, "is_available", None)
    if callable(is_available) and not is_available():
        return f"{dev.type} is not available in this PyTorch build or on this machine"
    if callable(getattr(backend, "device_count", None)) and dev.index is not None and dev.index >= backend.device_count():
        return f"only {backend.device_count()} {dev.type} device(s) are visible"
    return None


def resolve_device(device: Optional[str | torch.device] = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA if available, else MPS, else CPU; a name is checked to exist here.

    Raises:
        DeviceNotAvailableError: an unknown name, a device type this PyTorch build lacks (``cuda`` on a
            CPU-only build), or an index out of range (``cuda:3`` with one GPU). The message is one line.
    """
    if device is None or str(device).strip().lower() == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(str(device).strip().lower())
        except (RuntimeError, ValueError):
            raise DeviceNotAvailableError(
                f"unknown device {str(device)!r}; use cpu, cuda, cuda:N, mps or auto"
            ) from None
    problem = _device_problem(dev)
    if problem:
        raise DeviceNotAvailableError(f"device {str(dev)!r} is not available: {problem}")
    return dev


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_dtype(dtype: Optional[str | torch.dtype]) -> torch.dtype:
    """Backbone dtype from a name (``float32``, ``bfloat16``/``bf16``, ``float16``/``fp16``). Heads stay fp32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16") from None
