"""What each A-FINE training stage trains and its loss (spec/afine.md §2.2-2.4).

* Stage 1: the CLIP vision tower (all parameters that get a gradient) and the naturalness head; the sum
  of three fidelity losses on the raw naturalness u of the pairs (img1, img2), (img1, ref), (img2, ref).
* Stage 2: the fidelity head only (CLIP frozen); one loss on the raw fidelity D(img1, ref) vs D(img2, ref).
* Stage 3: the naturalness calibration, the fidelity calibration and the adapter k (everything else frozen);
  one loss on the combined score A(img1, ref) vs A(img2, ref).

:class:`StageModule` wraps an :class:`~modeling_afine.AfineModel` so that its ``forward`` computes the stage
loss from a collated batch. Training prepares the *whole* ``StageModule`` with accelerate, so under DDP the
gradients of every trainable parameter (CLIP included) are all-reduced - the official stage 1 never
synchronised CLIP's gradients across GPUs (spec §6.12).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch
from torch import nn

from .losses import pair_loss

__all__ = ["STAGE_MODULES", "FROZEN_IN_STAGE", "StageModule", "set_trainable", "trainable_parameter_names"]

#: Submodules of AfineModel that each stage trains (default learning-rate groups of the configs).
STAGE_MODULES: dict[int, tuple[str, ...]] = {
    1: ("vision_model", "natural_head"),
    2: ("fidelity_head",),
    3: ("natural_calibration", "fidelity_calibration", "adapter"),
}
#: Parameters inside a trained module that never receive a gradient and are therefore frozen: A-FINE uses
#: the block outputs *before* the post-layernorm (the official optimiser held them but never changed them).
FROZEN_IN_STAGE: tuple[str, ...] = ("vision_model.post_layernorm.",)


def set_trainable(model: nn.Module, modules: tuple[str, ...]) -> "OrderedDict[str, list[nn.Parameter]]":
    """Freeze everything, then unfreeze the named submodules (minus :data:`FROZEN_IN_STAGE`).

    Returns ``{module name: [trainable parameters]}`` in the order given.
    """
    groups: "OrderedDict[str, list[nn.Parameter]]" = OrderedDict((m, []) for m in modules)
    for name, param in model.named_parameters():
        owner = next((m for m in modules if name == m or name.startswith(m + ".")), None)
        train = owner is not None and not name.startswith(FROZEN_IN_STAGE)
        param.requires_grad_(train)
        if train:
            groups[owner].append(param)
    for module, params in groups.items():
        if not params:
            raise ValueError(f"no trainable parameters under {module!r}")
    return groups


def trainable_parameter_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _size_groups(images: list[torch.Tensor], group_by_size: bool) -> list[list[int]]:
    if not group_by_size:
        return [[i] for i in range(len(images))]
    groups: "OrderedDict[tuple, list[int]]" = OrderedDict()
    for i, x in enumerate(images):
        groups.setdefault(tuple(x.shape), []).append(i)
    return list(groups.values())


class StageModule(nn.Module):
    """``forward(batch) -> {"loss", per-term losses}`` for one stage; ``self.model`` is the AfineModel.

    ``batch`` is the output of :func:`training.data.collate_triplets`: lists ``img1``, ``img2``, ``ref`` of
    CLIP-normalised ``[3, H, W]`` tensors (the three images of one triplet share a size; triplets may differ)
    and label tensors ``g12``, ``g1ref``, ``g2ref`` (``nan`` = unknown; such loss terms are skipped).

    Triplets are processed at native size: one backbone pass per size group (``group_by_size=True``) or per
    triplet (``False``, the official per-sample loop). The loss is the sum of per-triplet losses divided by
    the batch size, as the official code; under gradient accumulation the trainer passes the number of
    triplets of the whole accumulated batch as ``num_items_in_batch``, so that the micro-batch losses add up to
    the mean over the effective batch (the same update as one batch of that size).
    """

    def __init__(self, model: nn.Module, stage: int, group_by_size: bool = True) -> None:
        super().__init__()
        if stage not in STAGE_MODULES:
            raise ValueError(f"stage must be 1, 2 or 3, got {stage}")
        self.model = model
        self.stage = int(stage)
        self.group_by_size = bool(group_by_size)

    def _features(self, pixels: torch.Tensor, grad: bool):
        from modeling_afine.modeling_afine import stretch_to_multiple

        pixels = stretch_to_multiple(pixels, self.model.config.size_multiple)
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx:
            feats = self.model.extract_features(pixels)
        return pixels.float(), [f.float() for f in feats]

    @torch.no_grad()
    def triplet_scores(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The stage's scores of img1 and img2 (lower = better), shape ``[b]`` each, for 2AFC validation:
        raw naturalness u (stage 1), raw fidelity D(img, ref) (stage 2), combined score A(img, ref) (stage 3)."""
        m = self.model
        b = len(batch["img1"])
        device = next(m.parameters()).device
        s1, s2 = torch.zeros(b, device=device), torch.zeros(b, device=device)
        for idx in _size_groups(batch["img1"], self.group_by_size):
            k = len(idx)
            stacked = torch.cat([torch.stack([batch[key][i] for i in idx]) for key in ("img1", "img2", "ref")]).to(device)
            pixels, feats = self._features(stacked, grad=False)
            sel = torch.tensor(idx, device=device)
            with torch.autocast(device_type=device.type, enabled=False):
                p1, p2, pr = pixels[:k], pixels[k : 2 * k], pixels[2 * k :]
                f1, f2, fr = [f[:k] for f in feats], [f[k : 2 * k] for f in feats], [f[2 * k :] for f in feats]
                if self.stage == 1:
                    a, c = m.natural_head(p1, f1), m.natural_head(p2, f2)
                else:
                    d1, d2 = m.fidelity_head(p1, pr, f1, fr), m.fidelity_head(p2, pr, f2, fr)
                    if self.stage == 2:
                        a, c = d1, d2
                    else:
                        n = m.natural_calibration(m.natural_head(pixels, feats))
                        nr = n[2 * k :]
                        a = m.adapter(n[:k], nr, m.fidelity_calibration(d1))
                        c = m.adapter(n[k : 2 * k], nr, m.fidelity_calibration(d2))
            s1[sel], s2[sel] = a.float(), c.float()
        return s1, s2

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, every_n_layers: int = 1,
                                        offload: bool = False) -> None:
        """Activation (gradient) checkpointing of the CLIP blocks, for ``--gradient_checkpointing``."""
        self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs,
                                                   every_n_layers=every_n_layers, offload=offload)

    def forward(self, batch: dict, num_items_in_batch: "int | None" = None) -> dict:
        m = self.model
        b = len(batch["img1"])
        divisor = b if num_items_in_batch is None else int(num_items_in_batch)
        device = next(m.parameters()).device
        g12 = batch["g12"].to(device)
        g1ref = batch["g1ref"].to(device)
        g2ref = batch["g2ref"].to(device)
        terms = {"loss_12": torch.zeros((), device=device)}
        if self.stage == 1:
            terms.update(loss_1ref=torch.zeros((), device=device), loss_2ref=torch.zeros((), device=device))
        for idx in _size_groups(batch["img1"], self.group_by_size):
            k = len(idx)
            stacked = torch.cat([torch.stack([batch[key][i] for i in idx]) for key in ("img1", "img2", "ref")]).to(device)
            pixels, feats = self._features(stacked, grad=self.stage == 1)
            sel = torch.tensor(idx, device=device)
            with torch.autocast(device_type=device.type, enabled=False):
                if self.stage == 1:
                    u = m.natural_head(pixels, feats)
                    u1, u2, ur = u[:k], u[k : 2 * k], u[2 * k :]
                    for name, s1, s2, g in (("loss_12", u1, u2, g12[sel]), ("loss_1ref", u1, ur, g1ref[sel]),
                                            ("loss_2ref", u2, ur, g2ref[sel])):
                        known = ~torch.isnan(g)
                        if known.any():
                            terms[name] = terms[name] + pair_loss(s1[known], s2[known], g[known]).sum()
                    continue
                p1, p2, pr = pixels[:k], pixels[k : 2 * k], pixels[2 * k :]
                f1 = [f[:k] for f in feats]
                f2 = [f[k : 2 * k] for f in feats]
                fr = [f[2 * k :] for f in feats]
                if self.stage == 2:
                    d1 = m.fidelity_head(p1, pr, f1, fr)
                    d2 = m.fidelity_head(p2, pr, f2, fr)
                    terms["loss_12"] = terms["loss_12"] + pair_loss(d1, d2, g12[sel]).sum()
                    continue
                with torch.no_grad():
                    u = m.natural_head(pixels, feats)
                    d1 = m.fidelity_head(p1, pr, f1, fr)
                    d2 = m.fidelity_head(p2, pr, f2, fr)
                n = m.natural_calibration(u)
                n1, n2, nr = n[:k], n[k : 2 * k], n[2 * k :]
                a1 = m.adapter(n1, nr, m.fidelity_calibration(d1))
                a2 = m.adapter(n2, nr, m.fidelity_calibration(d2))
                terms["loss_12"] = terms["loss_12"] + pair_loss(a1, a2, g12[sel]).sum()
        terms = {name: value / divisor for name, value in terms.items()}
        terms["loss"] = sum(terms.values())
        return terms
