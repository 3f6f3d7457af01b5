"""Register A-FINE with the transformers Auto classes without importing transformers up front.

``import modeling_afine`` must stay cheap (the ``afine`` command line and the dataset tools import it, and
transformers + torch take seconds to import), yet ``import modeling_afine`` followed by
``AutoModel.from_pretrained(converted_dir)`` must work. transformers' registries live in
``transformers.models.auto.{configuration,modeling,image_processing}_auto``, and those modules import torch,
so registering eagerly would cost the full import.

Instead, :func:`install` registers at once for the registries that are already imported, and puts a small
finder on ``sys.meta_path`` that notices when one of the others is imported later. Registration needs
``AfineModel``, whose own import goes through transformers modules that may still be half-initialised at
that moment (``modeling_layers`` imports the Auto classes), so it waits until the outermost import of a
``transformers``/``modeling_afine`` module has finished.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
import warnings
from typing import Any, Callable

_AUTO = "transformers.models.auto."
_WATCHED_PREFIXES = ("transformers", "modeling_afine.")


def _register_config() -> None:
    from transformers.models.auto.configuration_auto import AutoConfig

    from .configuration_afine import AfineConfig

    AutoConfig.register("afine", AfineConfig, exist_ok=True)


def _register_model() -> None:
    from transformers.models.auto.modeling_auto import AutoModel

    from .configuration_afine import AfineConfig
    from .modeling_afine import AfineModel

    AutoModel.register(AfineConfig, AfineModel, exist_ok=True)


def _register_image_processor() -> None:
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    from .configuration_afine import AfineConfig
    from .image_processing_afine import AfineImageProcessor

    AutoImageProcessor.register(AfineConfig, image_processor_classes={"pil": AfineImageProcessor}, exist_ok=True)


# registry module -> registration, in the order they are flushed
_REGISTRATIONS: dict[str, Callable[[], None]] = {
    _AUTO + "configuration_auto": _register_config,
    _AUTO + "modeling_auto": _register_model,
    _AUTO + "image_processing_auto": _register_image_processor,
}

_lock = threading.RLock()
_pending: set[str] = set()
_done: set[str] = set()
_state = threading.local()  # depth of watched imports in progress on this thread, and a re-entrancy flag


def _depth() -> int:
    return getattr(_state, "depth", 0)


def _flush() -> None:
    """Run the registrations whose registry module is loaded, unless a watched import is still in progress."""
    if _depth() or getattr(_state, "flushing", False):
        return
    with _lock:
        names = [name for name in _REGISTRATIONS if name in _pending]
        if not names:
            return
        _state.flushing = True
        try:
            for name in names:
                _pending.discard(name)
                _done.add(name)
                try:
                    _REGISTRATIONS[name]()
                except Exception as exc:  # never break the user's transformers import over a registration
                    warnings.warn(f"modeling_afine: could not register A-FINE with {name}: {exc}", stacklevel=2)
        finally:
            _state.flushing = False


class _TrackingLoader(importlib.abc.Loader):
    """Wraps a watched module's loader: counts nested loads and flushes registrations at the outermost end."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module) -> None:
        _state.depth = _depth() + 1
        try:
            self._loader.exec_module(module)
        finally:
            _state.depth -= 1
        name = module.__name__
        if name in _REGISTRATIONS and name not in _done:
            _pending.add(name)
        if _pending:
            _flush()

    def __getattr__(self, item: str) -> Any:  # get_source, is_package, get_resource_reader, ...
        return getattr(self._loader, item)


class _AutoRegistrationFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if not fullname.startswith(_WATCHED_PREFIXES) or getattr(_state, "finding", False):
            return None
        if len(_done) == len(_REGISTRATIONS):
            return None  # everything is registered: stop watching
        _state.finding = True
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            _state.finding = False
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _TrackingLoader(spec.loader)
        return spec


_finder = _AutoRegistrationFinder()


def _initializing(module: Any) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def install() -> None:
    """Register now for the Auto registries already imported; watch for the others."""
    with _lock:
        for name in _REGISTRATIONS:
            if name in sys.modules and name not in _done:
                _pending.add(name)
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
        busy = any(
            _initializing(module) for key, module in list(sys.modules.items()) if key.startswith(_WATCHED_PREFIXES)
        )
    if _pending and not busy:
        _flush()
