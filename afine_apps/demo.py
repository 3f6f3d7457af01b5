"""The A-FINE demo (the ``spaces/afine-demo`` Space): one app, four tabs, every number lower is better.

* **Score a pair** (``api_name="/score"``): the image under test and its reference → the five A-FINE numbers
  (4 decimals) and an explanation; the two images side by side in a comparison slider; clickable examples.
* **A vs B** (``"/compare"``): two candidates against one reference → verdict, P(A better), decomposition.
* **Rank a gallery** (``"/rank"``): N candidates and one reference (encoded once) → a sorted table, a bar
  chart and a CSV file.
* **Naturalness only** (``"/naturalness"``): one image → calibrated naturalness N in (-2, 2).

Uploads are file paths decoded by the project's one image loader; images with more than
``$AFINE_MAX_IMAGE_PIXELS`` pixels are refused from their header, before decoding. The queue runs ``$AFINE_CONCURRENCY`` requests at
once. Handlers are wrapped with ``@spaces.GPU`` when Hugging Face's ``spaces`` package is importable
(ZeroGPU), see :mod:`afine_apps.zerogpu`.

Launch: ``python spaces/afine-demo/app.py`` (settings from the environment) or ``python -m afine_apps demo
--model ./afine``. In Python, :func:`build_demo` takes an already loaded :class:`~modeling_afine.AfineScorer`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from .compare import compare_pair, verdict_markdown  # noqa: E402
from .gallery import COLUMNS, rank_gallery, ranking_csv  # noqa: E402
from .launching import (  # noqa: E402
    LOWER_IS_BETTER,
    base_parser,
    image_input,
    launch,
    load_scorer,
    max_pixels,
    queue,
    user_error,
)
from .pair import FIELDS, RESIZE_LABEL, explain, naturalness_only, score_pair  # noqa: E402
from .zerogpu import gpu  # noqa: E402

__all__ = ["build_demo", "main", "example_pairs", "TITLE"]

TITLE = "A-FINE image quality"
_INPUT_ERRORS = (ValueError, OSError)  # ImageLoadError is a ValueError


def example_pairs(folder: Optional[os.PathLike] = None) -> list[list[str]]:
    """``[[distorted, reference]]`` from ``folder/examples/`` (default: the current directory's), if present."""
    root = Path(folder) if folder is not None else Path.cwd()
    dis, ref = root / "examples" / "distorted.png", root / "examples" / "reference.png"
    return [[str(dis), str(ref)]] if dis.is_file() and ref.is_file() else []


def _image_input(label: str):
    return image_input(label)


def build_demo(scorer, *, title: str = TITLE, examples: Optional[Sequence[Sequence[str]]] = None):
    """Build (do not launch) the demo ``gr.Blocks`` around an already loaded ``AfineScorer``.

    ``examples``: ``[[distorted, reference], ...]`` for the clickable examples of the first tab.
    The returned app has its queue configured (see :func:`afine_apps.launching.queue`).
    """
    import gradio as gr
    import pandas as pd

    @gpu
    def _score(distorted, reference, resize_reference):
        try:
            v = score_pair(scorer, distorted, reference, resize_reference)
        except _INPUT_ERRORS as exc:
            raise user_error(exc) from exc
        return tuple(v[f] for f in FIELDS) + (explain(v), (distorted, reference))

    @gpu
    def _compare(a, b, ref, resize, name_a, name_b):
        try:
            result = compare_pair(scorer, a, b, ref, resize, name_a, name_b)
        except _INPUT_ERRORS as exc:
            raise user_error(exc) from exc
        return verdict_markdown(result), result

    @gpu
    def _rank(files, ref, resize):
        try:
            rows = rank_gallery(scorer, files or [], ref, resize)
        except _INPUT_ERRORS as exc:
            raise user_error(exc) from exc
        table = pd.DataFrame([[r[c] for c in COLUMNS] for r in rows], columns=list(COLUMNS))
        chart = pd.DataFrame({"candidate": [f"{r['rank']}. {r['name']}" for r in rows],
                              "score": [r["score"] for r in rows]})
        fd, path = tempfile.mkstemp(prefix="afine-ranking-", suffix=".csv")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(ranking_csv(rows))
        return table.round(4), chart, path

    @gpu
    def _natural(image):
        try:
            n = naturalness_only(scorer, image)
        except _INPUT_ERRORS as exc:
            raise user_error(exc) from exc
        return n, f"### Naturalness N = {n:.4f}\n\nCalibrated to (-2, 2); lower is more natural."

    limit = max_pixels()
    with gr.Blocks(title=title) as demo:
        gr.Markdown(
            f"# {title}\n\nA-FINE (CVPR 2025) judges an image under test against a reference that may itself be "
            "imperfect: it mixes **fidelity** to the reference with the **naturalness** of both images. "
            "The order matters: the image under test goes first, the reference second.\n\n"
            f"{LOWER_IS_BETTER}\n\nUploads up to {limit:,} pixels."
        )
        with gr.Tab("Score a pair"):
            with gr.Row():
                dis = _image_input("Distorted / enhanced image (under test)")
                ref = _image_input("Reference image")
            resize = gr.Checkbox(value=False, label=RESIZE_LABEL)
            button = gr.Button("Score", variant="primary")
            with gr.Row():
                outs = [
                    gr.Number(label="score (0–100)", precision=4),
                    gr.Number(label="score_raw", precision=4),
                    gr.Number(label="fidelity F (-2..2)", precision=4),
                    gr.Number(label="naturalness of the test image (-2..2)", precision=4),
                    gr.Number(label="naturalness of the reference (-2..2)", precision=4),
                ]
            text = gr.Markdown()
            slider = gr.ImageSlider(label="Test image | reference (drag to compare)", type="filepath",
                                    image_mode=None, interactive=False)
            button.click(_score, inputs=[dis, ref, resize], outputs=outs + [text, slider], api_name="score")
            if examples:
                gr.Examples(examples=[list(e) for e in examples], inputs=[dis, ref], outputs=outs + [text, slider],
                            fn=lambda d, r: _score(d, r, False), cache_examples=False, run_on_click=True,
                            label="Examples (click to score)")
        with gr.Tab("A vs B"):
            with gr.Row():
                a = _image_input("Candidate A")
                b = _image_input("Candidate B")
                cref = _image_input("Reference")
            with gr.Row():
                name_a = gr.Textbox(value="A", label="Name of A")
                name_b = gr.Textbox(value="B", label="Name of B")
                cresize = gr.Checkbox(value=False, label=RESIZE_LABEL)
            cbutton = gr.Button("Compare", variant="primary")
            verdict = gr.Markdown()
            details = gr.JSON(label="Details")
            cbutton.click(_compare, inputs=[a, b, cref, cresize, name_a, name_b], outputs=[verdict, details],
                          api_name="compare")
        with gr.Tab("Rank a gallery"):
            with gr.Row():
                files = gr.File(file_count="multiple", file_types=["image"], type="filepath",
                                label="Candidates (the images under test)")
                gref = _image_input("Reference")
            gresize = gr.Checkbox(value=False, label=RESIZE_LABEL)
            gbutton = gr.Button("Rank", variant="primary")
            table = gr.Dataframe(headers=list(COLUMNS), label="Ranking (best first)", interactive=False)
            chart = gr.BarPlot(x="candidate", y="score", sort=None, label="A-FINE score per candidate",
                               x_label_angle=-30)
            csv_file = gr.File(label="Download the ranking (CSV)")
            gbutton.click(_rank, inputs=[files, gref, gresize], outputs=[table, chart, csv_file], api_name="rank")
        with gr.Tab("Naturalness only"):
            image = _image_input("Image (no reference)")
            nbutton = gr.Button("Naturalness", variant="primary")
            nout = gr.Number(label="naturalness N (-2..2)", precision=4)
            ntext = gr.Markdown()
            nbutton.click(_natural, inputs=[image], outputs=[nout, ntext], api_name="naturalness")
    return queue(demo)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m afine_apps demo [--model M] [--device D] [--port P] [--share]``."""
    parser = base_parser("A-FINE demo: score a pair, A vs B, rank a gallery, naturalness; lower is better.")
    parser.add_argument("--examples-dir", default=None, help="folder holding examples/distorted.png and "
                        "examples/reference.png (default: the current directory)")
    args = parser.parse_args(argv)
    launch(build_demo(load_scorer(args), examples=example_pairs(args.examples_dir)), args)


if __name__ == "__main__":
    main()
