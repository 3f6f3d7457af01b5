"""A-FINE as a differentiable training loss: :class:`AfineLoss`, and the pixel preparation it shares with the metric.

``AfineLoss(pred, target)`` takes images as a network produces them (``[B, 3, H, W]`` in [0, 1] or [-1, 1]) and
returns the number the scorer (``afine score`` / :class:`~modeling_afine.AfineScorer`) gives for the same
tensors, computed inside the autograd graph. **Lower is better**, like every A-FINE number, so it can be
minimised directly. See ``docs/loss-and-metric.md`` for a fine-tuning example and the safeguards.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .image_processing_afine import AfineImageProcessor
from .modeling_afine import SCORE_FIELDS, AfineModel, AfineOutput, stretch_to_multiple, target_size

__all__ = ["AfineLoss", "OUTPUTS", "INPUT_RANGES", "REDUCTIONS", "prepare_pixels", "check_pair"]

#: The five A-FINE numbers (every one lower-is-better), in :class:`AfineOutput`'s order.
OUTPUTS = SCORE_FIELDS
REDUCTIONS = ("mean", "sum", "none")
#: The value ranges an image tensor may come in: (0, 1) (``ToTensor``) or (-1, 1) (diffusion and GAN outputs).
INPUT_RANGES = ((0.0, 1.0), (-1.0, 1.0))

ModelArg = Union[None, str, os.PathLike, AfineModel]


def check_input_range(input_range: Sequence[float]) -> tuple[float, float]:
    """``input_range`` as a float pair; ValueError unless it is (0, 1) or (-1, 1)."""
    try:
        low, high = (float(v) for v in input_range)
    except (TypeError, ValueError):
        raise ValueError(f"input_range must be (0, 1) or (-1, 1), got {input_range!r}") from None
    if (low, high) not in INPUT_RANGES:
        raise ValueError(f"input_range must be (0, 1) or (-1, 1), got {input_range!r}")
    return low, high


def check_pair(pred: Any, target: Any, *, target_optional: bool = False) -> None:
    """One-line ValueError/TypeError unless ``pred`` is ``[B, 3, H, W]`` float and ``target`` is ``[B or 1, 3, H, W]``."""
    for name, t in (("pred", pred), ("target", target)):
        if t is None and name == "target" and target_optional:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [B, 3, H, W], got {type(t).__name__}")
        if t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"{name} must have shape [B, 3, H, W] (RGB), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor in the input range, got {t.dtype}")
        if t.shape[0] == 0 or t.shape[-1] == 0 or t.shape[-2] == 0:
            raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    if target is None:
        return
    if tuple(pred.shape[-2:]) != tuple(target.shape[-2:]):
        raise ValueError(
            f"pred is {pred.shape[-1]}x{pred.shape[-2]} (WxH) but target is {target.shape[-1]}x{target.shape[-2]}; "
            "A-FINE compares images of the same size"
        )
    if target.shape[0] not in (1, pred.shape[0]):
        raise ValueError(f"target batch must be 1 (shared) or {pred.shape[0]} (pred's), got {target.shape[0]}")
    if pred.device != target.device:
        raise ValueError(f"pred is on {pred.device} but target is on {target.device}")


def prepare_pixels(
    images: torch.Tensor,
    processor: AfineImageProcessor,
    input_range: tuple[float, float],
    size: tuple[int, int],
) -> torch.Tensor:
    """``[B, 3, H, W]`` images in ``input_range`` -> the model's input ``[B, 3, size]``, inside the autograd graph.

    The scorer's preprocessing on tensors: map to [0, 1], CLIP-normalise with the processor's constants (in
    float32, or float64 for float64 input), then bicubically stretch to ``size`` (multiples of 32) exactly as
    the processor does. Values outside the range are not clipped. Returns a new tensor; ``images`` is untouched.
    """
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    x = images.to(dtype)
    if input_range == (-1.0, 1.0):
        x = (x + 1) * 0.5
    return stretch_to_multiple(processor.normalize_tensor(x), processor.size_multiple, size=size)


def _load(model: ModelArg, dtype: Any) -> tuple[AfineModel, AfineImageProcessor]:
    if isinstance(model, AfineModel):
        if dtype is not None:
            from .devices import resolve_dtype

            model.vision_model.to(resolve_dtype(dtype))  # the heads stay in their precision (fp32)
        return model, AfineImageProcessor.for_config(model.config)
    if isinstance(model, nn.Module):
        raise TypeError(f"model must be an AfineModel, a model directory, Hub id or afine.pth, got {type(model).__name__}")
    from .scoring import load_afine

    return load_afine(model, device="cpu", dtype=dtype)


@contextlib.contextmanager
def _checkpointed_blocks(model: AfineModel, enabled: bool) -> Iterator[None]:
    """Per-block activation checkpointing of the CLIP encoder for this call only, with the model in eval mode.

    transformers' layers checkpoint only when ``training`` is set; the model must stay in eval mode, so the flag
    is raised on the encoder layers alone for the duration of the call (CLIP's layers have no dropout or other
    train-mode behaviour; ``attention_dropout`` is asserted to be 0).
    """
    if not enabled or not torch.is_grad_enabled():
        yield
        return
    if model.config.vision_config.attention_dropout:
        raise ValueError("gradient_checkpointing=True needs a backbone without attention dropout")
    layers = list(model.vision_model.encoder.layers)
    saved = [(layer.training, layer.gradient_checkpointing, layer.__dict__.get("_gradient_checkpointing_func")) for layer in layers]
    func = functools.partial(checkpoint, use_reentrant=False)
    try:
        for layer in layers:
            layer.training, layer.gradient_checkpointing, layer._gradient_checkpointing_func = True, True, func
        yield
    finally:
        for layer, (training, enabled_before, func_before) in zip(layers, saved):
            layer.training, layer.gradient_checkpointing = training, enabled_before
            if func_before is None:
                layer.__dict__.pop("_gradient_checkpointing_func", None)
            else:
                layer._gradient_checkpointing_func = func_before


class AfineLoss(nn.Module):
    r"""A-FINE as a loss: ``loss = AfineLoss()(pred, target)``; **lower is better**, minimise it.

    Args:
        model: an :class:`AfineModel`, or anything :func:`modeling_afine.load_afine` accepts (a converted model
            directory, a Hub repo id of converted weights, an official ``afine.pth``); ``None`` (default) loads
            the default weights (:data:`modeling_afine.DEFAULT_MODEL_ID`). An instance is used as is (not
            copied): it is frozen (``requires_grad=False``) and put in eval mode.
        output: which of the five numbers to return (all lower-is-better):

            - ``"fidelity"`` (default): F in (−2, 2), the calibrated full-reference term (a DISTS-style
              comparison of CLIP features and pixels). The default because it is bounded, smooth and cannot be
              lowered by making the output "look natural" at the expense of the reference. Evidence
              (tests/modeling/test_loss_safeguards.py, tiny model with the official k = 5, output starting close
              to its reference): ten Adam steps on the pixels with ``fidelity`` + L1 lower fidelity and MSE and
              keep score_raw bounded, while ``score`` or ``score_raw`` with the same L1 term push the
              naturalness term to its floor (score 0, score_raw below −1,000, fidelity worse).
            - ``"score"``: the 0–100 A-FINE score, as ``afine score`` prints it; it includes the naturalness
              reward, so it can prefer an output that beats a soft reference. Bounded, but it **saturates**:
              100·σ((A − η3)/|η4|) flattens to 0 as A → −∞ (outputs judged far more natural than the reference
              all look alike), and naturalness can be gamed there. Use with a small weight next to a pixel or
              fidelity loss, and watch fidelity/MSE on validation.
            - ``"score_raw"``: A = λ·N_dis + F with λ = exp(softplus(k)·(N_ref − N_dis)), k ≈ 5: **unbounded
              below** (down to about −1e9), and its gradient grows exponentially once N_dis falls below N_ref.
              Minimising it drives images towards whatever the naturalness head likes at any cost to fidelity
              (with random weights, five Adam steps on pixels took it to −11,574). Do not use it as a loss.
            - ``"naturalness_distorted"``: N of ``pred`` in (−2, 2), no reference needed (``target`` may be
              None); a no-reference regulariser. Never alone: pair it with a pixel or fidelity loss.
            - ``"naturalness_reference"``: N of ``target``; constant with respect to ``pred`` (for logging).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (shape ``(B,)``).
        input_range: ``(0, 1)`` (default) or ``(-1, 1)`` (diffusion/GAN outputs): the range of ``pred`` and
            ``target``; they are mapped to [0, 1] and CLIP-normalised inside the graph. Never normalise them
            yourself. Values outside the range are used as they are (not clipped).
        dtype: precision of the CLIP backbone (``None``/``"float32"``, ``"bfloat16"``, ``"float16"``); the heads
            always run in fp32. ``torch.autocast`` also works.
        gradient_checkpointing: recompute each CLIP block in the backward pass instead of storing its activations
            (same values and gradients, less memory, about one more forward of time).

    ``forward(pred, target)``: ``pred`` ``[B, 3, H, W]`` (the image under test, e.g. a network's output) and
    ``target`` ``[B, 3, H, W]`` or ``[1, 3, H, W]`` (shared), the same H and W, in ``input_range``. Sides that
    are not multiples of 32 are bicubically stretched up, exactly as the scorer does, so values equal the
    scorer's on the same tensors (a PNG read as uint8 and divided by 255 gives the CLI's numbers).
    Gradients flow to ``pred`` only: the reference side is encoded under ``torch.no_grad`` (none of its
    activations are kept beyond the 12 block outputs the fidelity term reads) and ``target`` gets no gradient.
    Inputs are never modified.

    In a parent model: A-FINE's weights are **not** submodules of this loss. They are kept outside the module
    tree, so a parent's ``state_dict()``/checkpoints, ``parameters()`` (optimisers, DDP's all-reduce and its
    unused-parameter check, ``requires_grad_``) and ``.train()`` never see them, while ``.to(device)`` /
    ``.cuda()`` on the parent still move them (a parent's ``.half()``/``.to(dtype)`` does not change A-FINE's
    precision: use ``dtype=``). The loss always stays in eval mode and its weights frozen (its own
    ``requires_grad_`` is a no-op); ``loss.parameters()`` lists them (all frozen) for inspection, and
    ``loss.state_dict()`` is empty. Reach the model as ``loss.model``.

    Safeguards against "naturalness hacking" (docs/loss-and-metric.md): the default ``"fidelity"`` cannot be
    gamed through naturalness; never minimise ``"score_raw"``; when you want the naturalness reward
    (``"score"``), keep a pixel loss and the fidelity term in the objective with most of the weight (e.g.
    ``l1 + 0.1 * fidelity + 0.001 * score``) and monitor fidelity and MSE.
    """

    def __init__(
        self,
        model: ModelArg = None,
        output: str = "fidelity",
        reduction: str = "mean",
        input_range: Sequence[float] = (0, 1),
        dtype: Optional[Union[str, torch.dtype]] = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}; got {output!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")
        self.input_range = check_input_range(input_range)
        self.output = output
        self.reduction = reduction
        self.gradient_checkpointing = bool(gradient_checkpointing)
        net, processor = _load(model, dtype)
        net.requires_grad_(False)
        net.eval()
        # Outside the module tree on purpose (see the class docstring): not in state_dict(), parameters(), train().
        object.__setattr__(self, "_afine", net)
        self.processor = processor
        self.training = False

    @property
    def model(self) -> AfineModel:
        """The frozen :class:`AfineModel` (not a registered submodule)."""
        return self._afine

    def extra_repr(self) -> str:
        return (
            f"output={self.output!r}, reduction={self.reduction!r}, input_range={self.input_range}, "
            f"gradient_checkpointing={self.gradient_checkpointing}, model={type(self._afine).__name__} (frozen, eval)"
        )

    def train(self, mode: bool = True) -> "AfineLoss":
        """No-op: the loss and its model always stay in eval mode (a parent's ``.train()`` lands here)."""
        self.training = False
        self._afine.eval()
        return self

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """A-FINE's frozen parameters (named ``model.*``), listed for inspection when asked of the loss itself.

        A parent's ``parameters()``/``named_parameters()`` walk registered submodules and never reach these.
        """
        if not recurse:
            return iter(())
        return self._afine.named_parameters(
            prefix=f"{prefix}.model" if prefix else "model", recurse=True, remove_duplicate=remove_duplicate
        )

    def requires_grad_(self, requires_grad: bool = True) -> "AfineLoss":
        """No-op: A-FINE's weights stay frozen (``requires_grad=False``)."""
        return self

    def _apply(self, fn: Any, recurse: bool = True) -> "AfineLoss":
        super()._apply(fn, recurse)
        # Follow the parent's device moves; precision is the model's own business (dtype=).
        device = fn(torch.empty(0)).device
        if next(self._afine.parameters()).device != device:
            self._afine.to(device)
        return self

    # ---------------------------------------------------------------- computation (shared with AfineMetric)

    def _check_device(self, pred: torch.Tensor) -> None:
        device = next(self._afine.parameters()).device
        if pred.device != device:
            raise ValueError(f"pred is on {pred.device} but A-FINE is on {device}: call .to({str(pred.device)!r}) on the loss or its parent")

    def _warn_range(self, target: torch.Tensor) -> None:
        if self.input_range == (0.0, 1.0) and bool((target.detach().amin() < -0.05).item()):
            warnings.warn(
                "AfineLoss: target has values below 0 but input_range=(0, 1); pass input_range=(-1, 1) for images in [-1, 1]",
                stacklevel=3,
            )

    def encode_target(self, target: torch.Tensor, size: tuple[int, int]):
        """The reference side, without gradient: :meth:`AfineModel.encode_reference` of the prepared ``target``."""
        with torch.no_grad():
            pixels = prepare_pixels(target.detach(), self.processor, self.input_range, size)
            encoding = self._afine.encode_reference(pixels)
        encoding.image_size = tuple(size)
        return encoding

    def outputs(self, pred: torch.Tensor, target: Optional[torch.Tensor]) -> AfineOutput:
        """All A-FINE outputs for ``pred`` against ``target`` (fields ``(B,)``, lower is better), in the graph.

        ``target`` may be None only for the naturalness of ``pred`` (then only the naturalness fields are set).
        """
        check_pair(pred, target, target_optional=True)
        self._check_device(pred)
        size = target_size(*pred.shape[-2:], self.processor.size_multiple)
        with _checkpointed_blocks(self._afine, self.gradient_checkpointing):
            pixels = prepare_pixels(pred, self.processor, self.input_range, size)
            if target is None:
                nat = self._afine.naturalness(pixels)
                return AfineOutput(naturalness_distorted=nat.naturalness, naturalness_distorted_raw=nat.naturalness_raw)
            self._warn_range(target)
            encoding = self.encode_target(target, size)
            return self._afine(distorted=pixels, reference_encoding=encoding)

    def forward(self, pred: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The chosen output for ``pred`` ``[B, 3, H, W]`` against ``target`` ``[B or 1, 3, H, W]``, reduced.

        Returns a scalar (``mean``/``sum``) or ``(B,)`` (``none``), float32; lower is better.
        """
        if target is None and self.output != "naturalness_distorted":
            raise ValueError(f"output={self.output!r} needs a target (only 'naturalness_distorted' works without one)")
        if self.output == "naturalness_reference":
            check_pair(pred, target)
            size = target_size(*pred.shape[-2:], self.processor.size_multiple)
            value = self.encode_target(target, size).naturalness.expand(pred.shape[0])
        elif self.output == "naturalness_distorted":
            value = self.outputs(pred, None).naturalness_distorted  # the reference plays no part in it
            if target is not None:
                check_pair(pred, target)
        else:
            value = getattr(self.outputs(pred, target), self.output)
        if self.reduction == "mean":
            return value.mean()
        if self.reduction == "sum":
            return value.sum()
        return value
