"""Access to the project's one image loader (``modeling_afine.image_io``) from the data tools.

``import modeling_afine`` is lazy (it imports neither torch nor transformers until a model name is used), and
``modeling_afine/image_io.py`` needs only Pillow and numpy, so the data tools import it directly: one
``ImageLoadError`` class in the whole process, the same rules everywhere (RGB 8-bit, EXIF orientation, 16-bit
high byte, pixel limit, truncation checks, errors naming the file).
"""

from __future__ import annotations

from types import ModuleType

__all__ = ["image_io"]


def image_io() -> ModuleType:
    """The ``modeling_afine.image_io`` module (``load_image``, ``probe_image``, ``ImageLoadError``)."""
    from modeling_afine import image_io as module

    return module
