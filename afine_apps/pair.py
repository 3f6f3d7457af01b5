"""Score one (distorted, reference) pair, or one image's naturalness, for the apps (every number lower is better)."""

from __future__ import annotations

from typing import Optional

from .launching import load_upload, probe_uploads

__all__ = ["FIELDS", "RESIZE_LABEL", "score_pair", "explain", "naturalness_only", "check_same_size"]

FIELDS = ("score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference")
RESIZE_LABEL = "Resize the reference to the distorted image's size"


def check_same_size(image, reference, what: str) -> None:
    """``ValueError`` telling the user how to opt in to stretching when two PIL images differ in size."""
    if image.size != reference.size:
        raise ValueError(
            f"Size mismatch: {what} is {image.size[0]}x{image.size[1]} (WxH) but the reference is "
            f"{reference.size[0]}x{reference.size[1]}. A-FINE compares images of the same size; tick "
            f"'{RESIZE_LABEL}' to stretch the reference."
        )


def score_pair(scorer, distorted, reference, resize_reference: bool = False, *,
               max_pixels: Optional[int] = None) -> dict:
    """Score one pair; returns the five outputs plus ``adaptive_weight`` as floats.

    ``distorted`` / ``reference``: file paths (what Gradio hands over) or PIL images, decoded by the project's
    image loader under the apps' pixel limit (``max_pixels``, default :func:`afine_apps.launching.max_pixels`),
    checked from each header before either image is decoded. Raises ``ValueError`` (missing image, size mismatch without
    ``resize_reference``) or ``ImageLoadError`` (naming the file).
    """
    probe_uploads([(distorted, "distorted (test)"), (reference, "reference")], max_pixels)
    dis = load_upload(distorted, "distorted (test)", limit=max_pixels)
    ref = load_upload(reference, "reference", limit=max_pixels)
    if not resize_reference:
        check_same_size(dis, ref, "the distorted image")
    out = scorer.score([dis], [ref], resize_reference=bool(resize_reference))
    values = {f: float(getattr(out, f)[0]) for f in FIELDS}
    values["adaptive_weight"] = float(out.adaptive_weight[0]) if out.adaptive_weight is not None else float("nan")
    return values


def explain(values: dict) -> str:
    """Markdown explaining one result (the caller shows the "lower is better" note once)."""
    nd, nr = values["naturalness_distorted"], values["naturalness_reference"]
    if nd < nr:
        nat = "A-FINE finds the **test image more natural than its reference**, so naturalness weighs more (λ > 1)."
    else:
        nat = "A-FINE finds the **reference at least as natural** as the test image, so fidelity dominates (λ ≤ 1)."
    return (
        f"### A-FINE score: {values['score']:.4f} / 100\n\n"
        f"- fidelity F = {values['fidelity']:.4f} (distance to the reference)\n"
        f"- naturalness N(test) = {nd:.4f}, N(reference) = {nr:.4f}\n"
        f"- adaptive weight λ = {values['adaptive_weight']:.4f}; "
        f"raw score A = λ·N(test) + F = {values['score_raw']:.4f}\n\n"
        f"{nat}"
    )


def naturalness_only(scorer, image, *, max_pixels: Optional[int] = None) -> float:
    """Calibrated no-reference naturalness N in (-2, 2) of one image; lower is better."""
    return float(scorer.naturalness([load_upload(image, "input", limit=max_pixels)])[0])

