"""Access to the project's one image loader (``modeling_afine.image_io``) without importing torch.

``modeling_afine/__init__.py`` imports transformers and the torch model code, which data tools must not
pull in (and which costs seconds). ``modeling_afine/image_io.py`` itself needs only Pillow and numpy, so
when ``modeling_afine`` has not been imported yet we load that one file under a private module name. If
``modeling_afine`` is already imported, its own ``image_io`` is used. Either way the rules (RGB 8-bit,
EXIF orientation, 16-bit high byte, size limits, errors naming the file) are the project's.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import lru_cache
from types import ModuleType

__all__ = ["image_io"]


@lru_cache(maxsize=1)
def image_io() -> ModuleType:
    """The ``image_io`` module (``load_image``, ``ImageLoadError``)."""
    if "modeling_afine" in sys.modules:
        return importlib.import_module("modeling_afine.image_io")
    spec = importlib.util.find_spec("modeling_afine")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the modeling_afine package (project image loader) is not installed")
    for location in spec.submodule_search_locations:
        path = f"{location}/image_io.py"
        file_spec = importlib.util.spec_from_file_location("dataset_scripts._afine_image_io", path)
        if file_spec is not None and file_spec.loader is not None:
            try:
                module = importlib.util.module_from_spec(file_spec)
                file_spec.loader.exec_module(module)
            except FileNotFoundError:
                continue
            sys.modules["dataset_scripts._afine_image_io"] = module
            return module
    raise ImportError("modeling_afine/image_io.py not found")
