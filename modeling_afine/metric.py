"""A-FINE as a ``torchmetrics`` metric: :class:`AfineMetric` (needs the ``[metrics]`` extra).

Importing this module never fails: without torchmetrics, :class:`AfineMetric` is a placeholder whose
construction raises ImportError naming the extra to install (``pip install afine-hf[metrics]``).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch

from .loss import OUTPUTS, AfineLoss, ModelArg, check_pair

__all__ = ["AfineMetric", "METRICS_EXTRA_HINT"]

METRICS_EXTRA_HINT = (
    "AfineMetric needs torchmetrics, which is not installed: pip install afine-hf[metrics] "
    "(or pip install 'torchmetrics>=1.4')"
)

def _warn_if_unsynchronised() -> None:
    """Under torchrun/accelerate (``WORLD_SIZE`` > 1) without a process group torchmetrics cannot synchronise."""
    import os
    import warnings

    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            warnings.warn(
                f"AfineMetric: WORLD_SIZE={world} but torch.distributed is not initialised, so this mean covers this "
                "process's images only; call torch.distributed.init_process_group() first (Lightning and accelerate do)",
                stacklevel=3,
            )


try:
    from torchmetrics import Metric as _Metric
except ImportError:  # the optional extra is missing
    _Metric = None


if _Metric is None:

    class AfineMetric:  # type: ignore[no-redef]
        """Placeholder: torchmetrics is not installed (``pip install afine-hf[metrics]``)."""

        higher_is_better = False
        is_differentiable = True
        full_state_update = False

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError(METRICS_EXTRA_HINT)

else:

    class AfineMetric(_Metric):  # type: ignore[no-redef]
        r"""Mean A-FINE over everything passed to :meth:`update`, synchronised across processes.

        ``update(preds, target)`` takes ``[B, 3, H, W]`` tensors (``target`` may be ``[1, 3, H, W]``, shared) in
        ``input_range``; images of different sizes go in different ``update`` calls. ``compute()`` returns the
        mean of ``output`` (a 0-dim tensor; **lower is better**) or, with ``output="all"``, a dict of the five
        means (``score`` 0–100, ``score_raw``, ``fidelity``, ``naturalness_distorted``,
        ``naturalness_reference``, see the README's table). The preprocessing and the values are those of
        :class:`~modeling_afine.AfineLoss` (the same code), which equal the scorer's.

        States: ``sums`` (the five per-image sums, float64) and ``count``, both reduced with ``sum`` across
        processes, so under DDP every rank gets the mean over all ranks' images.

        Args:
            model: as :class:`~modeling_afine.AfineLoss` (an :class:`AfineModel`, a converted directory, a Hub id,
                an ``afine.pth``; ``None`` = the default weights). Its weights stay out of the state dict.
            output: one of the five names, or ``"all"``.
            input_range: ``(0, 1)`` (default) or ``(-1, 1)``.
            dtype: precision of the CLIP backbone (heads fp32).
            kwargs: passed to :class:`torchmetrics.Metric` (``sync_on_compute``, ``dist_sync_fn``, ...).
        """

        higher_is_better = False
        is_differentiable = True
        full_state_update = False

        def __init__(
            self,
            model: ModelArg = None,
            output: str = "score",
            input_range: Sequence[float] = (0, 1),
            dtype: Optional[Union[str, torch.dtype]] = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            if output != "all" and output not in OUTPUTS:
                raise ValueError(f"output must be 'all' or one of {', '.join(OUTPUTS)}; got {output!r}")
            self.output = output
            # The shared preprocessing and model call; its A-FINE weights stay outside the module tree.
            self.afine = AfineLoss(model, output="score", reduction="none", input_range=input_range, dtype=dtype)
            self.add_state("sums", default=torch.zeros(len(OUTPUTS), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

        def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
            """Add a batch: ``preds`` (the images under test) ``[B, 3, H, W]``, ``target`` ``[B or 1, 3, H, W]``."""
            check_pair(preds, target)
            out = self.afine.outputs(preds.to(self.device), target.to(self.device))
            values = torch.stack([getattr(out, name).to(torch.float64) for name in OUTPUTS], dim=1)
            self.sums = self.sums + values.sum(0)
            self.count = self.count + preds.shape[0]

        def compute(self) -> Union[torch.Tensor, dict[str, torch.Tensor]]:
            """The mean ``output`` (float32; lower is better), or a dict of the five means for ``"all"``."""
            _warn_if_unsynchronised()
            means = (self.sums / self.count).to(torch.float32)
            if self.output == "all":
                return {name: means[i] for i, name in enumerate(OUTPUTS)}
            return means[OUTPUTS.index(self.output)]

        def plot(self, val: Any = None, ax: Any = None) -> Any:
            """torchmetrics' plot of the current value (or ``val``, one value or a list); needs matplotlib."""
            return self._plot(val, ax)
