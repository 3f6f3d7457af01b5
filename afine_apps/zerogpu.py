"""ZeroGPU support: ``@spaces.GPU`` from Hugging Face's ``spaces`` package when it is importable.

On ZeroGPU hardware a Space gets a GPU only inside functions decorated with ``spaces.GPU``. Elsewhere (a
CPU or dedicated-GPU Space, a laptop) that package's decorator returns the function unchanged, and when the
package is not installed :func:`gpu` is the identity too, so the apps run the same everywhere.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, TypeVar

F = TypeVar("F", bound=Callable)

__all__ = ["hf_spaces", "on_zerogpu", "gpu"]


def hf_spaces():
    """Hugging Face's ``spaces`` module, or ``None`` when it is not installed (or something else has the name)."""
    try:
        import spaces
    except Exception:  # not installed, or it refuses to import (e.g. after a broken gradio import)
        return None
    return spaces if callable(getattr(spaces, "GPU", None)) else None


def on_zerogpu() -> bool:
    """True on ZeroGPU hardware (the ``spaces`` package's own test: ``SPACES_ZERO_GPU`` is set to a true value)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true", "yes", "on")


def gpu(fn: Optional[F] = None, *, duration: int = 60):
    """Decorate a handler with ``spaces.GPU(duration=...)`` when Hugging Face's ``spaces`` is importable;
    otherwise return it unchanged. Usable as ``@gpu`` or ``@gpu(duration=120)``."""

    def wrap(f: F) -> F:
        module = hf_spaces()
        if module is None:
            return f
        return module.GPU(f, duration=duration)

    return wrap(fn) if fn is not None else wrap
