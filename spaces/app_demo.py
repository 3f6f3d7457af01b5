"""A-FINE demo Space: score an image under test against a reference, or its naturalness alone.

Launch::

    python -m spaces.app_demo --model ./afine-model --port 7860      # --share for a public link (off by default)

Two tabs:

* **Score a pair**: upload the *distorted / enhanced* image (the one under test) and its *reference*; the app
  shows the five A-FINE numbers (all lower-is-better): ``score`` 0–100, ``score_raw``, ``fidelity``,
  ``naturalness_distorted``, ``naturalness_reference``, plus a short explanation with the adaptive weight.
  A reference of a different size is an error unless "Resize the reference" is ticked.
  API: ``Client(url).predict(handle_file(dis), handle_file(ref), False, api_name="/score")`` returns
  ``(score, score_raw, fidelity, naturalness_distorted, naturalness_reference, explanation_markdown)``.
* **Naturalness only**: one image, no reference: calibrated naturalness N in (-2, 2), lower is better.
  API: ``api_name="/naturalness"`` returns ``(naturalness, explanation_markdown)``.

In Python, :func:`build_demo` takes an already loaded :class:`~modeling_afine.scoring.AfineScorer`.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from .launching import LOWER_IS_BETTER, base_parser, launch, load_scorer, user_error  # noqa: E402

__all__ = ["score_pair", "naturalness_only", "build_demo", "main"]

FIELDS = ("score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference")
RESIZE_LABEL = "Resize the reference to the distorted image's size"


def _load(path, what: str):
    from modeling_afine.image_io import load_image

    if path is None or (isinstance(path, str) and not path):
        raise ValueError(f"Please upload the {what} image.")
    return load_image(path)


def score_pair(scorer, distorted, reference, resize_reference: bool = False) -> dict:
    """Score one pair; returns the five outputs plus ``adaptive_weight`` as floats.

    ``distorted`` / ``reference``: file paths (what Gradio hands over) or PIL images.
    Raises ``ValueError`` (missing image, size mismatch without ``resize_reference``) or ``ImageLoadError``.
    """
    dis = _load(distorted, "distorted (test)")
    ref = _load(reference, "reference")
    if dis.size != ref.size and not resize_reference:
        raise ValueError(
            f"Size mismatch: the distorted image is {dis.size[0]}x{dis.size[1]} (WxH) but the reference is "
            f"{ref.size[0]}x{ref.size[1]}. A-FINE compares images of the same size; tick "
            f"'{RESIZE_LABEL}' to stretch the reference."
        )
    out = scorer.score([dis], [ref], resize_reference=bool(resize_reference))
    values = {f: float(getattr(out, f)[0]) for f in FIELDS}
    values["adaptive_weight"] = float(out.adaptive_weight[0]) if out.adaptive_weight is not None else float("nan")
    return values


def explain(values: dict) -> str:
    """Markdown explaining one result (lower is better everywhere)."""
    nd, nr = values["naturalness_distorted"], values["naturalness_reference"]
    if nd < nr:
        nat = "A-FINE finds the **test image more natural than its reference**, so naturalness weighs more (λ > 1)."
    else:
        nat = "A-FINE finds the **reference at least as natural** as the test image, so fidelity dominates (λ ≤ 1)."
    return (
        f"### A-FINE score: {values['score']:.2f} / 100 (lower is better)\n\n"
        f"- fidelity F = {values['fidelity']:.4f} (distance to the reference, lower = closer)\n"
        f"- naturalness N(test) = {nd:.4f}, N(reference) = {nr:.4f} (lower = more natural)\n"
        f"- adaptive weight λ = {values['adaptive_weight']:.4f}; "
        f"raw score A = λ·N(test) + F = {values['score_raw']:.4f}\n\n"
        f"{nat}\n\n{LOWER_IS_BETTER}"
    )


def naturalness_only(scorer, image) -> float:
    """Calibrated no-reference naturalness N in (-2, 2) of one image; lower is better."""
    return float(scorer.naturalness([_load(image, "input")])[0])


def build_demo(scorer, *, title: str = "A-FINE image quality (lower is better)"):
    """Build (do not launch) the demo ``gr.Blocks`` around an already loaded ``AfineScorer``."""
    import gradio as gr

    def _score(distorted, reference, resize_reference):
        try:
            v = score_pair(scorer, distorted, reference, resize_reference)
        except (ValueError, OSError) as exc:  # ImageLoadError is a ValueError
            raise user_error(exc) from exc
        return (v["score"], v["score_raw"], v["fidelity"], v["naturalness_distorted"], v["naturalness_reference"],
                explain(v))

    def _natural(image):
        try:
            n = naturalness_only(scorer, image)
        except (ValueError, OSError) as exc:
            raise user_error(exc) from exc
        return n, f"### Naturalness N = {n:.4f}\n\nCalibrated to (-2, 2); **lower is more natural (better)**."

    with gr.Blocks(title=title) as demo:
        gr.Markdown(
            f"# {title}\n\nA-FINE (CVPR 2025) judges an image under test against a reference that may itself be "
            "imperfect: it mixes **fidelity** to the reference with the **naturalness** of both images. "
            "The order matters: the *distorted / enhanced* image goes first, the *reference* second.\n\n"
            + LOWER_IS_BETTER
        )
        with gr.Tab("Score a pair"):
            with gr.Row():
                dis = gr.Image(type="filepath", label="Distorted / enhanced image (under test)")
                ref = gr.Image(type="filepath", label="Reference image")
            resize = gr.Checkbox(value=False, label=RESIZE_LABEL)
            button = gr.Button("Score", variant="primary")
            with gr.Row():
                outs = [
                    gr.Number(label="score (0–100, lower is better)"),
                    gr.Number(label="score_raw (lower is better)"),
                    gr.Number(label="fidelity F (-2..2, lower is better)"),
                    gr.Number(label="naturalness of distorted (-2..2, lower is better)"),
                    gr.Number(label="naturalness of reference (-2..2, lower is better)"),
                ]
            text = gr.Markdown()
            button.click(_score, inputs=[dis, ref, resize], outputs=outs + [text], api_name="score")
        with gr.Tab("Naturalness only"):
            image = gr.Image(type="filepath", label="Image (no reference)")
            nbutton = gr.Button("Naturalness", variant="primary")
            nout = gr.Number(label="naturalness N (-2..2, lower is better)")
            ntext = gr.Markdown()
            nbutton.click(_natural, inputs=[image], outputs=[nout, ntext], api_name="naturalness")
    return demo


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m spaces.app_demo [--model M] [--device D] [--port P] [--share]``."""
    args = base_parser("A-FINE demo: score a (distorted, reference) pair; lower is better.").parse_args(argv)
    launch(build_demo(load_scorer(args)), args)


if __name__ == "__main__":
    main()
