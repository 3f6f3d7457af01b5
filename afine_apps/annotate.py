"""Human annotation in the DiffIQA protocol (the ``spaces/afine-annotate`` Space; no model needed).

Launch::

    python spaces/afine-annotate/app.py                   # settings from AFINE_ANNOTATE_DATA / _LABELS / _SEED
    python -m afine_apps annotate --data-dir /data/MyDiffIQA --port 7862 [--labels-dir DIR] [--seed 0]

``--data-dir`` is a DiffIQA-style folder: ``images/{01..06}/{ref}_{NN}.png`` (enhanced images; any variant
folder names work) and ``images/Original/{ref}.png`` (references; names without ``_``). A folder holding
``{NN}/`` and ``Original/`` directly (the enhancer's ``generate-diffiqa`` output) works too.

The annotator enters a name and presses *Start / resume*. Each (enhanced, reference) pair is shown side by
side in random left/right order **without saying which one is the reference**; the annotator answers
"Left is better", "Similar" or "Right is better". Each answer is written at once as one JSON file in the
official DiffIQA label schema::

    {labels}/{annotator}/{variant}/{ref}_{variant}.json
    {"Picture_AI":       {"Name": "{ref}_{variant}.png", "File": "{variant}", "ImageSize": [], "Label": L},
     "picture_Original": {"Name": "{ref}.png", "File": "Original", "ImageSize": [], "Label": null},
     "Time_cost":        {"Start": "YYYY-MM-DD HH:MM:SS", "End": "...", "Total": seconds}}

``L`` compares the **enhanced** image with the reference whatever side it was shown on: ``Positive`` =
enhanced better, ``Similar``, ``Negative`` = enhanced worse. ``{labels}`` defaults to ``labels/`` next to
``images/``, so ``dataset_scripts.load("diffiqa", data_dir=..., name="annotations")`` reads the result.
Sessions are resumable: pairs this annotator already labelled (a label file exists) are skipped.

Concurrency: each label is its own file, written to a unique temporary file and then hard-linked into place,
which fails if the label already exists; so any number of annotators (or two browser tabs of the same one)
can answer at once, no answer is lost or half-written, and a label is never overwritten.

In Python, :class:`AnnotationStore` does the work and :func:`build_annotate` builds the ``gr.Blocks``.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional, Sequence, Union

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from .launching import base_parser, launch, queue  # noqa: E402

__all__ = ["AnnotationStore", "Pair", "Task", "CHOICES", "build_annotate", "main", "default_dirs", "store_from_env"]

PathLike = Union[str, os.PathLike]
CHOICES = ("left", "similar", "right")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_ANNOTATOR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Pair:
    """One (enhanced, reference) pair: ``{images}/{variant}/{ref}_{variant}.png`` vs ``{images}/Original/{ref}.png``."""

    ref: str
    variant: str
    enhanced: Path
    reference: Path


@dataclass
class Task:
    """A pair being shown: which side holds the enhanced image, and when it was shown."""

    pair: Pair
    enhanced_side: str  # "left" or "right"
    start: datetime

    def label_for(self, choice: str) -> str:
        """Official label of an answer: the side chosen is mapped back to enhanced-vs-reference."""
        if choice not in CHOICES:
            raise ValueError(f"answer must be one of {', '.join(CHOICES)}, got {choice!r}")
        if choice == "similar":
            return "Similar"
        return "Positive" if choice == self.enhanced_side else "Negative"


def check_annotator(name: str) -> str:
    name = (name or "").strip()
    if not _ANNOTATOR_RE.match(name):
        raise ValueError("Enter an annotator name: letters, digits, '_', '-' or '.', starting with a letter or digit "
                         f"(at most 64 characters); got {name!r}.")
    return name


class AnnotationStore:
    """Finds the pairs of a DiffIQA-style folder and reads/writes one annotator's label files.

    Args:
        data_dir: folder with ``images/`` (or with the variant folders and ``Original/`` directly).
        labels_dir: where labels go (default: ``{data_dir}/labels``).
        seed: seed for the left/right order (default: unseeded); with a seed, the side of a pair is a
            fixed function of (seed, annotator, reference, variant).
    """

    def __init__(self, data_dir: PathLike, labels_dir: Optional[PathLike] = None, seed: Optional[int] = None):
        self.data_dir = Path(data_dir)
        if (self.data_dir / "images" / "Original").is_dir():
            self.images_dir = self.data_dir / "images"
        elif (self.data_dir / "Original").is_dir():
            self.images_dir = self.data_dir
        else:
            raise FileNotFoundError(f"{self.data_dir}: no images/Original/ (or Original/) folder with the references")
        self.labels_dir = Path(labels_dir) if labels_dir is not None else self.data_dir / "labels"
        self.seed = seed
        self._pairs = self._scan()
        if not self._pairs:
            raise FileNotFoundError(f"{self.images_dir}: no enhanced images {{variant}}/{{ref}}_{{variant}}.png "
                                    "with a matching Original/{ref}.png")

    def _scan(self) -> list[Pair]:
        refs = {}
        for entry in os.scandir(self.images_dir / "Original"):
            stem, ext = os.path.splitext(entry.name)
            if entry.is_file() and ext.lower() in _IMAGE_EXTS:
                refs[stem] = Path(entry.path)
        pairs = []
        subdirs = [e for e in os.scandir(self.images_dir) if e.is_dir() and e.name != "Original"]
        for vdir in sorted(subdirs, key=lambda e: e.name):
            if self.images_dir == self.data_dir and not vdir.name.isdigit():
                continue  # an images-at-top folder: only numeric variant folders (labels/ etc. live here too)
            for entry in os.scandir(vdir.path):
                stem, ext = os.path.splitext(entry.name)
                if not entry.is_file() or ext.lower() not in _IMAGE_EXTS or "_" not in stem:
                    continue
                ref, variant = stem.rsplit("_", 1)
                if variant == vdir.name and ref in refs:
                    pairs.append(Pair(ref, variant, Path(entry.path), refs[ref]))
        return sorted(pairs, key=lambda p: (p.ref, p.variant))

    @property
    def pairs(self) -> list[Pair]:
        return list(self._pairs)

    def label_path(self, annotator: str, pair: Pair) -> Path:
        return self.labels_dir / check_annotator(annotator) / pair.variant / f"{pair.ref}_{pair.variant}.json"

    def pending(self, annotator: str) -> list[Pair]:
        """Pairs this annotator has not labelled yet (no label file), in (reference, variant) order."""
        return [p for p in self._pairs if not self.label_path(annotator, p).is_file()]

    def progress(self, annotator: str) -> tuple[int, int]:
        """``(done, total)`` for this annotator."""
        return len(self._pairs) - len(self.pending(annotator)), len(self._pairs)

    def side_for(self, annotator: str, pair: Pair) -> str:
        rng = random.Random(f"{self.seed}|{annotator}|{pair.ref}|{pair.variant}") if self.seed is not None \
            else random.SystemRandom()
        return "left" if rng.random() < 0.5 else "right"

    def next_task(self, annotator: str, now: Optional[datetime] = None) -> Optional[Task]:
        """The next unlabelled pair with its random side, or ``None`` when this annotator is done."""
        annotator = check_annotator(annotator)
        pending = self.pending(annotator)
        if not pending:
            return None
        pair = pending[0]
        return Task(pair, self.side_for(annotator, pair), now or datetime.now())

    def images_of(self, task: Task):
        """``(left, right)`` PIL images of a task (loaded with the project's one image loader)."""
        from modeling_afine.image_io import load_image

        enh, ref = load_image(task.pair.enhanced), load_image(task.pair.reference)
        return (enh, ref) if task.enhanced_side == "left" else (ref, enh)

    def record(self, annotator: str, task: Task, choice: str, end: Optional[datetime] = None) -> Path:
        """Write the label JSON of one answer (official schema); returns its path. Never overwrites a label."""
        from dataset_scripts.formats import write_diffiqa_label

        label = task.label_for(choice)
        path = self.label_path(annotator, task.pair)
        if path.is_file():
            return path
        end = end or datetime.now()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            write_diffiqa_label(
                tmp, task.pair.enhanced.name, task.pair.reference.name, label, variant=task.pair.variant,
                start=task.start.strftime(TIME_FORMAT), end=end.strftime(TIME_FORMAT),
                total=round(max(0.0, (end - task.start).total_seconds()), 3),
            )
            try:
                os.link(tmp, path)  # atomic, and refuses to replace a label written meanwhile
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links: fall back to an atomic replace
                if not path.exists():
                    os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


# --------------------------------------------------------------------------------------------------- UI


def _task_state(task: Optional[Task]) -> Optional[dict]:
    if task is None:
        return None
    p = task.pair
    return {"ref": p.ref, "variant": p.variant, "enhanced": str(p.enhanced), "reference": str(p.reference),
            "enhanced_side": task.enhanced_side, "start": task.start.isoformat()}


def _task_from_state(state: Optional[dict]) -> Optional[Task]:
    if not state:
        return None
    pair = Pair(state["ref"], state["variant"], Path(state["enhanced"]), Path(state["reference"]))
    return Task(pair, state["enhanced_side"], datetime.fromisoformat(state["start"]))


def start_session(store: AnnotationStore, annotator: str):
    """``(left, right, progress_markdown, state)`` for the annotator's next pair (resumes where they stopped)."""
    annotator = check_annotator(annotator)
    task = store.next_task(annotator)
    done, total = store.progress(annotator)
    if task is None:
        return None, None, f"**{annotator}: all {total} pairs are labelled. Thank you!**", None
    left, right = store.images_of(task)
    text = (f"**{annotator}**: pair {done + 1} of {total} ({done} done). Which image looks better? "
            "Judge overall visual quality; the two images are shown in random order.")
    return left, right, text, _task_state(task)


def answer(store: AnnotationStore, annotator: str, choice: str, state: Optional[dict]):
    """Record ``choice`` ("left", "similar", "right") for the pair in ``state`` and move to the next pair."""
    annotator = check_annotator(annotator)
    task = _task_from_state(state)
    if task is None:
        raise ValueError("Press 'Start / resume' first.")
    store.record(annotator, task, choice)
    return start_session(store, annotator)


def build_annotate(store: AnnotationStore, *, title: str = "Which image looks better?"):
    """Build (do not launch) the annotation ``gr.Blocks`` for an :class:`AnnotationStore`."""
    import gradio as gr

    def _guard(fn, *args):
        try:
            return fn(store, *args)
        except (ValueError, OSError) as exc:
            raise gr.Error(str(exc)) from exc

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\n\nEnter your name and press *Start / resume*. For each pair, say which image "
                    "has the better visual quality, or that they are similar. Your answers are saved at once; "
                    "you can stop and resume later.")
        with gr.Row():
            annotator = gr.Textbox(label="Annotator name", placeholder="e.g. A")
            start = gr.Button("Start / resume", variant="primary")
        progress = gr.Markdown()
        with gr.Row():
            left = gr.Image(type="pil", label="Left image", interactive=False, format="png")
            right = gr.Image(type="pil", label="Right image", interactive=False, format="png")
        with gr.Row():
            b_left = gr.Button("Left is better")
            b_similar = gr.Button("Similar")
            b_right = gr.Button("Right is better")
        state = gr.State(None)
        outputs = [left, right, progress, state]
        start.click(lambda a: _guard(start_session, a), inputs=[annotator], outputs=outputs, api_name="start")
        for button, choice in ((b_left, "left"), (b_similar, "similar"), (b_right, "right")):
            button.click(lambda a, s, c=choice: _guard(answer, a, c, s), inputs=[annotator, state], outputs=outputs,
                         api_name=f"answer_{choice}")
    return queue(demo, concurrency=8)  # no model: answers are cheap file writes


def default_dirs(data_dir: Optional[PathLike] = None, labels_dir: Optional[PathLike] = None,
                 persistent: PathLike = "/data") -> tuple[Path, Optional[Path]]:
    """Where the annotation Space reads images and writes labels.

    ``data_dir``: the argument, else ``$AFINE_ANNOTATE_DATA``, else ``{persistent}/afine-annotate`` when the
    Space's persistent storage ``persistent`` (``/data``) exists, else ``./data``.
    ``labels_dir``: the argument, else ``$AFINE_ANNOTATE_LABELS``, else ``None`` (= ``{data_dir}/labels``, where
    ``dataset_scripts`` reads them). Keep the data folder on persistent storage so labels survive restarts.
    """
    data = data_dir or os.environ.get("AFINE_ANNOTATE_DATA")
    if not data:
        data = Path(persistent) / "afine-annotate" if Path(persistent).is_dir() else Path("data")
    labels = labels_dir or os.environ.get("AFINE_ANNOTATE_LABELS") or None
    return Path(data), (Path(labels) if labels else None)


def store_from_env() -> AnnotationStore:
    """The store the annotation Space uses (see :func:`default_dirs`; ``$AFINE_ANNOTATE_SEED`` seeds the sides)."""
    data, labels = default_dirs()
    seed = os.environ.get("AFINE_ANNOTATE_SEED")
    return AnnotationStore(data, labels, seed=int(seed) if seed not in (None, "") else None)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m afine_apps annotate [--data-dir DIR] [--labels-dir DIR] [--seed N] [--port P] [--share]``."""
    parser = base_parser("DiffIQA-protocol annotation: which of two images looks better?", model=False, port=7862)
    parser.add_argument("--data-dir", default=None, help="folder with images/{variant}/ and images/Original/ "
                        "(default: $AFINE_ANNOTATE_DATA, else /data/afine-annotate when /data exists, else ./data)")
    parser.add_argument("--labels-dir", default=None, help="where label JSONs go (default: DATA_DIR/labels)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the left/right order (default: random)")
    args = parser.parse_args(argv)
    data, labels = default_dirs(args.data_dir, args.labels_dir)
    store = AnnotationStore(data, labels, seed=args.seed)
    launch(build_annotate(store), args)


if __name__ == "__main__":
    main()
