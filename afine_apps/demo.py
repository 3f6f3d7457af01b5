"""The A-FINE demo (the ``spaces/afine-demo`` Space): one app, four tabs, every number lower is better.

* **Score a pair** (``api_name="/score"``): the image under test and its reference → the five A-FINE numbers
  (4 decimals) and an explanation; the two images side by side in a comparison slider; clickable examples.
* **A vs B** (``"/compare"``): two candidates against one reference → verdict, P(A better), decomposition.
* **Rank a gallery** (``"/rank"``): N candidates and one reference (encoded once) → a sorted table, a bar
  chart and a CSV file.
* **Naturalness only** (``"/naturalness"``): one image → calibrated naturalness N in (-2, 2).

Hosting a stranger's requests safely:

* every image a handler reads is the request's own upload, an example, or a URL gradio itself vetted; anything
  else gets one message, whether or not the path exists (:mod:`afine_apps.upload_guard`, wrapped around every
  event of the app); errors name files by their upload name, never by a server path or a setting;
* images with more pixels than the hardware's budget (``$AFINE_MAX_IMAGE_PIXELS``, default
  :func:`afine_apps.launching.hardware_pixel_budget`: 2,097,152 on a free 2-vCPU Space) are refused from their
  header, before any image of the request is decoded; a gallery takes at most ``$AFINE_MAX_GALLERY_IMAGES``
  candidates (16), counted before anything is read; names are at most 100 characters (checked on the server);
* one model run at a time across all endpoints (``$AFINE_CONCURRENCY``, one shared gradio concurrency id);
* gradio deletes uploads and results older than ``$AFINE_CACHE_TTL`` seconds (``delete_cache``); ranking CSVs
  are written into the app's own folder inside that cache, pruned the same way and removed at exit;
* names are escaped in the Markdown and CSV outputs (no HTML rendering, no spreadsheet formulas).

Handlers are wrapped with ``@spaces.GPU`` when Hugging Face's ``spaces`` package is importable
(ZeroGPU), see :mod:`afine_apps.zerogpu`.

Launch: ``python spaces/afine-demo/app.py`` (settings from the environment) or ``python -m afine_apps demo
--model ./afine``. In Python, :func:`build_demo` takes an already loaded :class:`~modeling_afine.AfineScorer`.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from .compare import compare_pair, verdict_markdown  # noqa: E402
from .gallery import COLUMNS, rank_gallery, ranking_csv  # noqa: E402
from .launching import (  # noqa: E402
    LOWER_IS_BETTER,
    base_parser,
    cache_ttl,
    files_input,
    image_input,
    launch,
    load_scorer,
    max_gallery_images,
    max_pixels,
    model_queue,
    queue,
    user_error,
)
from .pair import FIELDS, RESIZE_LABEL, explain, naturalness_only, score_pair  # noqa: E402
from .upload_guard import guard_uploads  # noqa: E402
from .zerogpu import gpu  # noqa: E402

__all__ = ["build_demo", "main", "example_pairs", "TITLE", "NAME_MAX_LENGTH", "ResultFolder"]

TITLE = "A-FINE image quality"
#: Longest name accepted for the A vs B candidates (enforced on the server, not only in the browser).
NAME_MAX_LENGTH = 100
_INPUT_ERRORS = (ValueError, OSError)  # ImageLoadError is a ValueError


def example_pairs(folder: Optional[os.PathLike] = None) -> list[list[str]]:
    """``[[distorted, reference]]`` from ``folder/examples/`` (default: the current directory's), if present."""
    root = Path(folder) if folder is not None else Path.cwd()
    dis, ref = root / "examples" / "distorted.png", root / "examples" / "reference.png"
    return [[str(dis), str(ref)]] if dis.is_file() and ref.is_file() else []


class ResultFolder:
    """The folder the demo writes its result files (ranking CSVs) into: its own, inside gradio's cache.

    Files there are returned to gradio without a copy (they already are in its cache), so gradio's
    ``delete_cache`` removes them with the uploads; :meth:`new_file` also prunes files older than ``ttl``
    seconds itself, and the folder is removed when the process exits. Nothing is left in ``/tmp``.
    """

    def __init__(self, ttl: int, root: Optional[str] = None):
        from gradio.utils import get_upload_folder

        base = Path(root or get_upload_folder())
        base.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix="afine-demo-results-", dir=base))
        self.ttl = ttl
        atexit.register(shutil.rmtree, self.path, True)

    def prune(self, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        for entry in os.scandir(self.path):
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > self.ttl:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.remove(entry.path)
            except FileNotFoundError:
                pass

    def new_file(self, name: str, text: str) -> str:
        """Write ``text`` to a fresh ``<folder>/<random>/name`` (downloads keep a plain name) and return its path."""
        self.prune()
        folder = self.path / secrets.token_hex(8)
        folder.mkdir()
        path = folder / name
        path.write_text(text, encoding="utf-8")
        return str(path)


def build_demo(scorer, *, title: str = TITLE, examples: Optional[Sequence[Sequence[str]]] = None):
    """Build (do not launch) the demo ``gr.Blocks`` around an already loaded ``AfineScorer``.

    ``examples``: ``[[distorted, reference], ...]`` for the clickable examples of the first tab.
    The returned app has its queue configured (see :func:`afine_apps.launching.queue`): every event shares one
    model concurrency id (:func:`afine_apps.launching.model_queue`), and its inputs pass the upload boundary of
    :mod:`afine_apps.upload_guard`.
    """
    import gradio as gr
    import pandas as pd

    device = getattr(scorer, "device", None)
    limit = max_pixels(device)  # for the page; handlers read it at each call ($AFINE_MAX_IMAGE_PIXELS may change)
    gallery_limit = max_gallery_images()
    ttl = cache_ttl()
    results = ResultFolder(ttl)

    @gpu
    def _score(distorted, reference, resize_reference):
        try:
            v = score_pair(scorer, distorted, reference, resize_reference, max_pixels=max_pixels(device))
        except _INPUT_ERRORS as exc:
            raise user_error(exc) from exc
        return tuple(v[f] for f in FIELDS) + (explain(v), (distorted, reference))

    def score_example(distorted, reference):
        return _score(distorted, reference, False)

    @gpu
    def _compare(a, b, ref, resize, name_a, name_b):
        try:
            result = compare_pair(scorer, a, b, ref, resize, name_a, name_b, max_pixels=max_pixels(device))
        except _INPUT_ERRORS as exc:
            raise user_error(exc) from exc
        return verdict_markdown(result), result

    @gpu
    def _rank(files, ref, resize):
        try:
            rows = rank_gallery(scorer, files or [], ref, resize, max_images=max_gallery_images(),
                                max_pixels=max_pixels(device))
        except _INPUT_ERRORS as exc:
            raise user_error(exc) from exc
        table = pd.DataFrame([[r[c] for c in COLUMNS] for r in rows], columns=list(COLUMNS))
        chart = pd.DataFrame({"candidate": [f"{r['rank']}. {r['name']}" for r in rows],
                              "score": [r["score"] for r in rows]})
        return table.round(4), chart, results.new_file("afine-ranking.csv", ranking_csv(rows))

    @gpu
    def _natural(image):
        try:
            n = naturalness_only(scorer, image, max_pixels=max_pixels(device))
        except _INPUT_ERRORS as exc:
            raise user_error(exc) from exc
        return n, f"### Naturalness N = {n:.4f}\n\nCalibrated to (-2, 2); lower is more natural."

    def number(label: str):
        """A result box that is empty, not 0, until there is a result (0 reads as a perfect score on a
        lower-is-better scale). gradio 6.31's Number front end turns a null value into 0 (``value ??= 0``), so
        the initial value sent to the page is an empty string, which the browser's number input shows as empty;
        results and the API are ordinary floats."""
        box = gr.Number(value=None, label=label, precision=4, interactive=False)
        box.value = ""
        return box

    example_sets = []
    with gr.Blocks(title=title, delete_cache=(min(ttl, 600), ttl)) as demo:
        gr.Markdown(
            f"# {title}\n\nA-FINE (CVPR 2025) judges an image under test against a reference that may itself be "
            "imperfect: it mixes **fidelity** to the reference with the **naturalness** of both images. "
            "The order matters: the image under test goes first, the reference second.\n\n"
            f"{LOWER_IS_BETTER}\n\nUploads up to {limit:,} pixels each; up to {gallery_limit} gallery candidates. "
            "One image is scored at a time for everyone; uploads are deleted after "
            f"{ttl // 60} minutes."
        )
        with gr.Tab("Score a pair"):
            with gr.Row():
                dis = image_input("Distorted / enhanced image (under test)")
                ref = image_input("Reference image")
            resize = gr.Checkbox(value=False, label=RESIZE_LABEL)
            button = gr.Button("Score", variant="primary")
            with gr.Row():
                outs = [
                    number("score (0–100)"),
                    number("score_raw"),
                    number("fidelity F (-2..2)"),
                    number("naturalness of the test image (-2..2)"),
                    number("naturalness of the reference (-2..2)"),
                ]
            text = gr.Markdown()
            slider = gr.ImageSlider(label="Test image | reference (drag to compare)", type="filepath",
                                    image_mode=None, interactive=False)
            button.click(_score, inputs=[dis, ref, resize], outputs=outs + [text, slider], api_name="score")
            if examples:
                example_sets.append(gr.Examples(
                    examples=[list(e) for e in examples], inputs=[dis, ref], outputs=outs + [text, slider],
                    fn=score_example, cache_examples=False, run_on_click=True, label="Examples (click to score)"))
        with gr.Tab("A vs B"):
            with gr.Row():
                a = image_input("Candidate A")
                b = image_input("Candidate B")
                cref = image_input("Reference")
            with gr.Row():
                name_a = gr.Textbox(value="A", label="Name of A", max_length=NAME_MAX_LENGTH)
                name_b = gr.Textbox(value="B", label="Name of B", max_length=NAME_MAX_LENGTH)
                cresize = gr.Checkbox(value=False, label=RESIZE_LABEL)
            cbutton = gr.Button("Compare", variant="primary")
            verdict = gr.Markdown()
            details = gr.JSON(label="Details", value=None)
            cbutton.click(_compare, inputs=[a, b, cref, cresize, name_a, name_b], outputs=[verdict, details],
                          api_name="compare")
        with gr.Tab("Rank a gallery"):
            with gr.Row():
                files = files_input(f"Candidates (the images under test; at most {gallery_limit})")
                gref = image_input("Reference")
            gresize = gr.Checkbox(value=False, label=RESIZE_LABEL)
            gbutton = gr.Button("Rank", variant="primary")
            table = gr.Dataframe(headers=list(COLUMNS), label="Ranking (best first)", interactive=False)
            chart = gr.BarPlot(x="candidate", y="score", sort=None, label="A-FINE score per candidate",
                               x_label_angle=-30)
            csv_file = gr.File(label="Download the ranking (CSV)")
            gbutton.click(_rank, inputs=[files, gref, gresize], outputs=[table, chart, csv_file], api_name="rank")
        with gr.Tab("Naturalness only"):
            image = image_input("Image (no reference)")
            nbutton = gr.Button("Naturalness", variant="primary")
            nout = number("naturalness N (-2..2)")
            ntext = gr.Markdown()
            nbutton.click(_natural, inputs=[image], outputs=[nout, ntext], api_name="naturalness")
    guard_uploads(demo, examples=example_sets)
    demo._afine_results = results
    return model_queue(queue(demo))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m afine_apps demo [--model M] [--device D] [--port P] [--share]``."""
    parser = base_parser("A-FINE demo: score a pair, A vs B, rank a gallery, naturalness; lower is better.")
    parser.add_argument("--examples-dir", default=None, help="folder holding examples/distorted.png and "
                        "examples/reference.png (default: the current directory)")
    args = parser.parse_args(argv)
    launch(build_demo(load_scorer(args), examples=example_pairs(args.examples_dir)), args)


if __name__ == "__main__":
    main()
