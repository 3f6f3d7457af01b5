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

A registration itself imports modules (``AfineModel`` pulls in ``image_processing_auto``, the pipeline pulls in
``modeling_auto``), so a registry can become due while the registrations run: :func:`_flush` keeps draining
until nothing is due, whatever the order in which the user imports and uses the Auto classes.

Registered: ``AutoConfig``, ``AutoModel``, ``AutoImageProcessor`` (``AutoProcessor`` falls back to these two)
and the ``"image-quality-assessment"`` task of ``transformers.pipeline`` (:mod:`modeling_afine.pipeline_afine`).
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


def _register_pipeline() -> None:
    from transformers.models.auto.modeling_auto import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    from .configuration_afine import AfineConfig
    from .pipeline_afine import TASK, ImageQualityAssessmentPipeline

    current = PIPELINE_REGISTRY.supported_tasks.get(TASK)
    if current is not None and current.get("impl") is not ImageQualityAssessmentPipeline:
        return  # someone else (a later transformers?) serves this task: leave it, and keep the folders' own pipeline
    if current is None:
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=ImageQualityAssessmentPipeline, pt_model=AutoModel,
                                            type="image")
    # A converted folder names its own copy of the pipeline in `custom_pipelines`, which transformers would load as
    # remote code (and ask for trust_remote_code); the package's config class hides that entry, so the registered
    # local pipeline serves the task (see AfineConfig.custom_pipelines).
    AfineConfig._local_pipeline_tasks = frozenset({TASK})


# registry module -> registration, in the order they are flushed
_REGISTRATIONS: dict[str, Callable[[], None]] = {
    _AUTO + "configuration_auto": _register_config,
    _AUTO + "modeling_auto": _register_model,
    _AUTO + "image_processing_auto": _register_image_processor,
    "transformers.pipelines": _register_pipeline,
}

_lock = threading.RLock()
_pending: set[str] = set()
_done: set[str] = set()
_state = threading.local()  # depth of watched imports in progress on this thread, and a re-entrancy flag


def _depth() -> int:
    return getattr(_state, "depth", 0)


def _flush() -> None:
    """Run the registrations whose registry module is loaded, unless a watched import is still in progress.

    Registries that get imported while the registrations run (they import transformers modules) are picked up
    by the same loop: it drains until nothing is pending. A nested call (from the end of an import made by a
    registration) returns at once and leaves them to that loop.
    """
    if _depth() or getattr(_state, "flushing", False):
        return
    with _lock:
        _state.flushing = True
        try:
            while True:
                name = next((n for n in _REGISTRATIONS if n in _pending), None)
                if name is None:
                    return
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
