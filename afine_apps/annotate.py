"""Human annotation in the DiffIQA protocol (the ``spaces/afine-annotate`` Space; no model needed).

Launch::

    python spaces/afine-annotate/app.py                   # settings from AFINE_ANNOTATE_DATA / _LABELS / _SEED
    python -m afine_apps annotate --data-dir /data/MyDiffIQA --port 7862 [--labels-dir DIR] [--seed 0] [--auth-file F]

``--data-dir`` is a DiffIQA-style folder: ``images/{01..06}/{ref}_{NN}.png`` (enhanced images; any variant
folder names work) and ``images/Original/{ref}.png`` (references; names without ``_``). A folder holding
``{NN}/`` and ``Original/`` directly (the enhancer's ``generate-diffiqa`` output) works too.

Who annotates (:class:`Identity`, from :func:`identity_from_env`): in a Hugging Face Space, the account
signed in with gradio's OAuth (``hf_oauth: true`` in the card, a ``gr.LoginButton``); locally, the name
logged in with gradio's password login (``AFINE_ANNOTATE_AUTH_FILE``), or a name picked from
``AFINE_ANNOTATORS``; with neither, one local annotator (:data:`LOCAL_ANNOTATOR`) and a page that says it is
unprotected. The name never comes from a text box, and names outside the list are refused before anything
is written.

The annotator presses *Start / resume*. Each (enhanced, reference) pair is shown side by side in random
left/right order **without saying which one is the reference** (the images are served as per-session copies
under random names, see :class:`ServedImages`); the annotator answers "Left is better", "Similar" or
"Right is better". Each answer is written at once as one JSON file in the official DiffIQA label schema::

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

import atexit
import hashlib
import html
import logging
import os
import random
import re
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from .launching import base_parser, launch, queue  # noqa: E402

__all__ = ["AnnotationStore", "Pair", "Task", "CHOICES", "Identity", "AnnotatorRefused", "LOCAL_ANNOTATOR",
           "identity_from_env", "ServedImages", "build_annotate", "main", "default_dirs", "store_from_env"]

logger = logging.getLogger("afine_apps.annotate")

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
        raise ValueError("An annotator name has letters, digits, '_', '-' or '.', starts with a letter or digit "
                         f"and has at most 64 characters; got {html.escape(repr(name[:80]))}.")
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
        self._by_key = {(p.ref, p.variant): p for p in self._pairs}
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

    def pair(self, ref: str, variant: str) -> Pair:
        """The pair of reference ``ref`` and variant ``variant`` (``KeyError`` if the folder has none)."""
        return self._by_key[(ref, variant)]

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


# --------------------------------------------------------------------------------------------- identity

#: The one annotator of an app started with neither a login nor an allowlist.
LOCAL_ANNOTATOR = "local"
MODES = ("hf", "password", "allowlist", "local")


class AnnotatorRefused(ValueError):
    """The caller is not signed in, or not one of the app's annotators. Raised before anything is written."""


def parse_annotators(text: Optional[str]) -> frozenset:
    """``"alice, bob"`` -> ``frozenset({"alice", "bob"})`` (each name checked like an annotator folder name)."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    for n in names:
        if not _ANNOTATOR_RE.match(n):
            raise ValueError(f"$AFINE_ANNOTATORS: {html.escape(repr(n))} is not a valid annotator name (letters, "
                             "digits, '_', '-' or '.', starting with a letter or digit, at most 64 characters)")
    return frozenset(names)


def read_auth_file(path: PathLike) -> tuple:
    """``((name, password), ...)`` from a file of ``name:password`` lines (``#`` starts a comment line)."""
    pairs = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not password or not _ANNOTATOR_RE.match(name.strip()):
            raise ValueError(f"{Path(path).name} line {i}: expected 'name:password' with a valid annotator name")
        pairs.append((name.strip(), password))
    if not pairs:
        raise ValueError(f"{Path(path).name}: no 'name:password' line")
    return tuple(pairs)


@dataclass(frozen=True)
class Identity:
    """Who is annotating, and who may.

    ``mode``:

    * ``"hf"``: sign-in with a Hugging Face account (gradio OAuth, ``hf_oauth: true`` in the Space card, a
      ``gr.LoginButton``); the annotator is the HF username. The default inside a Space.
    * ``"password"``: gradio's own username/password login (``auth``); the annotator is the login name.
    * ``"allowlist"``: no login; the annotator picks a name of ``allowed`` (for a trusted local network).
    * ``"local"``: no login and no list: one local annotator, :data:`LOCAL_ANNOTATOR`, and the page says the
      app is unprotected.

    ``allowed``: the names that may annotate (``None``: any signed-in HF account, ``"hf"`` only).
    ``passwords``: ``(name, password)`` pairs handed to gradio's ``launch(auth=...)`` (``"password"`` only).
    """

    mode: str
    allowed: Optional[frozenset] = None
    passwords: tuple = field(default=(), repr=False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"identity mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.allowed is None and self.mode != "hf":
            raise ValueError(f"identity mode {self.mode!r} needs the list of allowed annotators")
        if self.mode == "password" and not self.passwords:
            raise ValueError("identity mode 'password' needs (name, password) pairs")

    @property
    def auth(self) -> Optional[list]:
        """What to pass to gradio's ``launch(auth=...)``: the password pairs, or ``None``."""
        return list(self.passwords) if self.mode == "password" else None

    def resolve(self, chosen: Optional[str] = None, username: Optional[str] = None, profile=None) -> str:
        """The annotator of a request, or :class:`AnnotatorRefused`.

        ``chosen``: the name picked in the page (``"allowlist"`` mode only; ignored otherwise); ``username``:
        gradio's ``request.username`` (``"password"``); ``profile``: the ``gr.OAuthProfile`` (``"hf"``).
        """
        if self.mode == "local":
            return LOCAL_ANNOTATOR
        if self.mode == "hf":
            name = getattr(profile, "username", None) if profile is not None else None
            if not name:
                raise AnnotatorRefused("Sign in with your Hugging Face account first.")
        elif self.mode == "password":
            name = username
            if not name:
                raise AnnotatorRefused("Log in first.")
        else:
            name = chosen.strip() if isinstance(chosen, str) else ""
            if not name:
                raise AnnotatorRefused("Choose your name in the annotator list first.")
        if not _ANNOTATOR_RE.match(name) or (self.allowed is not None and name not in self.allowed):
            # the name is not echoed: it may come from an API caller and would be rendered in the page
            raise AnnotatorRefused("This account is not one of this app's annotators; ask the app's owner to add "
                                   "it to the annotator list.")
        return name

    def notice(self) -> str:
        """One line for the page saying who may annotate here."""
        if self.mode == "hf":
            who = "the listed accounts" if self.allowed is not None else "any signed-in Hugging Face account"
            return f"Sign in with your Hugging Face account to annotate ({who})."
        if self.mode == "password":
            return "Logged in: your answers are saved under your login name."
        if self.mode == "allowlist":
            return ("Choose your name. **No login is configured**: anyone who can open this page can pick a listed "
                    "name; set a password file (AFINE_ANNOTATE_AUTH_FILE) on a shared network.")
        return (f"**Running unprotected for one local annotator** (`{LOCAL_ANNOTATOR}`): no login and no annotator "
                "list are configured (set AFINE_ANNOTATORS, optionally with AFINE_ANNOTATE_AUTH_FILE; on a Space, "
                "annotators sign in with Hugging Face).")


def identity_from_env(environ: Optional[Mapping[str, str]] = None, auth_file: Optional[PathLike] = None) -> Identity:
    """The identity mode of the app from its settings.

    * inside a Hugging Face Space (``$SPACE_ID`` set): ``"hf"``, restricted to ``$AFINE_ANNOTATORS`` if set;
    * ``auth_file`` / ``$AFINE_ANNOTATE_AUTH_FILE`` (``name:password`` lines): ``"password"``, allowed names
      ``$AFINE_ANNOTATORS`` if set, else the names in the file;
    * ``$AFINE_ANNOTATORS=alice,bob`` alone: ``"allowlist"``;
    * nothing: ``"local"``.
    """
    env = os.environ if environ is None else environ
    names = parse_annotators(env.get("AFINE_ANNOTATORS"))
    if env.get("SPACE_ID"):
        return Identity("hf", names or None)
    auth_file = auth_file or env.get("AFINE_ANNOTATE_AUTH_FILE") or None
    if auth_file:
        passwords = read_auth_file(auth_file)
        return Identity("password", names or frozenset(n for n, _ in passwords), passwords)
    if names:
        return Identity("allowlist", names)
    return Identity("local", frozenset({LOCAL_ANNOTATOR}))


# --------------------------------------------------------------------------------------------------- UI


class ServedImages:
    """The PNG files the page shows: per-session copies under random names, each with a random text chunk.

    gradio serves an output file from a folder named by the hash of its bytes, so the same reference shown
    in two pairs had the same URL and gave itself away; here every shown image has its own bytes, name and
    URL. Per-session files also keep two sessions from writing one gradio cache file at once (a gradio race).
    A session keeps only its current pair; folders of sessions idle for ``max_age`` seconds are removed, and
    the whole folder when the process exits.
    """

    def __init__(self, root: Optional[PathLike] = None, max_age: float = 3600.0):
        self.root = Path(tempfile.mkdtemp(prefix="afine-annotate-", dir=root))
        self.max_age = max_age
        atexit.register(shutil.rmtree, self.root, True)

    def publish(self, session: Optional[str], images) -> list[str]:
        """Write ``images`` (PIL) for ``session`` (gradio's session hash); returns their paths."""
        from PIL.PngImagePlugin import PngInfo

        self._sweep()
        key = hashlib.sha256(session.encode()).hexdigest()[:32] if session else secrets.token_hex(16)
        folder = self.root / key
        folder.mkdir(exist_ok=True)
        for old in folder.iterdir():  # gradio has copied them into its own cache by now
            old.unlink(missing_ok=True)
        paths = []
        for img in images:
            info = PngInfo()
            info.add_text("n", secrets.token_hex(16))
            path = folder / f"{secrets.token_hex(16)}.png"
            img.save(path, format="PNG", pnginfo=info, compress_level=1)
            paths.append(str(path))
        return paths

    def _sweep(self) -> None:
        cutoff = time.time() - self.max_age
        for entry in os.scandir(self.root):
            try:
                if entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry.path, ignore_errors=True)
            except OSError:
                pass


def _task_state(annotator: str, task: Optional[Task]) -> Optional[dict]:
    if task is None:
        return None
    return {"annotator": annotator, "ref": task.pair.ref, "variant": task.pair.variant,
            "enhanced_side": task.enhanced_side, "start": task.start.isoformat()}


def _task_from_state(store: AnnotationStore, annotator: str, state: Optional[dict]) -> Optional[Task]:
    if not state or state.get("annotator", annotator) != annotator:
        return None  # nothing shown yet, or shown to another annotator (the name was changed meanwhile)
    pair = store.pair(state["ref"], state["variant"])
    return Task(pair, state["enhanced_side"], datetime.fromisoformat(state["start"]))


def start_session(store: AnnotationStore, annotator: str):
    """``(left, right, progress_markdown, state)`` for the annotator's next pair (resumes where they stopped);
    ``left``/``right`` are PIL images."""
    annotator = check_annotator(annotator)
    task = store.next_task(annotator)
    done, total = store.progress(annotator)
    if task is None:
        return None, None, f"**{annotator}: all {total} pairs are labelled. Thank you!**", None
    left, right = store.images_of(task)
    text = (f"**{annotator}**: pair {done + 1} of {total} ({done} done). Which image looks better? "
            "Judge overall visual quality; the two images are shown in random order.")
    return left, right, text, _task_state(annotator, task)


def answer(store: AnnotationStore, annotator: str, choice: str, state: Optional[dict]):
    """Record ``choice`` ("left", "similar", "right") for the pair in ``state`` and move to the next pair."""
    annotator = check_annotator(annotator)
    if choice not in CHOICES:
        raise ValueError(f"answer must be one of {', '.join(CHOICES)}")
    task = _task_from_state(store, annotator, state)
    if task is None:
        raise ValueError("Press 'Start / resume' first.")
    store.record(annotator, task, choice)
    return start_session(store, annotator)


def build_annotate(store: AnnotationStore, identity: Optional[Identity] = None, *,
                   title: str = "Which image looks better?", served: Optional[ServedImages] = None):
    """Build (do not launch) the annotation ``gr.Blocks`` for an :class:`AnnotationStore`.

    ``identity`` (default: :func:`identity_from_env`) says how the annotator is known; the name never comes
    from a free text box. Launch a ``"password"`` identity with ``auth=identity.auth`` (:func:`main` and the
    Space's ``app.py`` do). The built app keeps it as ``demo.afine_identity`` (and its
    :class:`ServedImages` as ``demo.afine_served``).
    """
    import gradio as gr

    identity = identity or identity_from_env()
    served = served or ServedImages()

    def _run(fn, chosen, request, profile, *args):
        from modeling_afine.image_io import ImageLoadError

        try:
            name = identity.resolve(chosen, getattr(request, "username", None), profile)
            left, right, text, state = fn(store, name, *args)
        except (ImageLoadError, OSError) as exc:  # the server's files: logged here, not shown with their paths
            logger.exception("annotation app: %s", exc)
            raise gr.Error("The server could not read an image or save the answer; the app's owner can see why "
                           "in its log.") from exc
        except ValueError as exc:  # refusals and the app's own messages (names are checked, HTML shown as text)
            raise gr.Error(html.escape(str(exc), quote=False)) from exc
        if left is not None:
            left, right = served.publish(getattr(request, "session_hash", None), (left, right))
        return left, right, text, state

    # gradio injects the request and the HF profile into parameters annotated with these types
    hints = {"request": gr.Request, "profile": Optional[gr.OAuthProfile]}
    with_choice = identity.mode == "allowlist"

    def make(fn, *extra):
        if with_choice:
            def handler(chosen, state, request, profile):
                return _run(fn, chosen, request, profile, *extra, *([state] if extra else []))
        else:
            def handler(state, request, profile):
                return _run(fn, None, request, profile, *extra, *([state] if extra else []))
        handler.__annotations__ = dict(hints)
        return handler

    with gr.Blocks(title=title, delete_cache=(600, 3600)) as demo:
        gr.Markdown(f"# {title}\n\nPress *Start / resume*. For each pair, say which image has the better visual "
                    "quality, or that they are similar. Your answers are saved at once; you can stop and resume "
                    "later.")
        gr.Markdown(identity.notice())
        with gr.Row():
            inputs = []
            if identity.mode == "hf":
                gr.LoginButton()
            if with_choice:
                # custom values pass the dropdown so that the app's own check refuses them (with a message that
                # does not echo what an API caller sent)
                inputs.append(gr.Dropdown(choices=sorted(identity.allowed), value=None, label="Annotator",
                                          allow_custom_value=True))
            start = gr.Button("Start / resume", variant="primary")
        progress = gr.Markdown()
        with gr.Row():
            left = gr.Image(type="filepath", label="Left image", interactive=False)
            right = gr.Image(type="filepath", label="Right image", interactive=False)
        with gr.Row():
            b_left = gr.Button("Left is better")
            b_similar = gr.Button("Similar")
            b_right = gr.Button("Right is better")
        state = gr.State(None)
        outputs = [left, right, progress, state]
        start.click(make(start_session), inputs=inputs + [state], outputs=outputs, api_name="start")
        for button, choice in ((b_left, "left"), (b_similar, "similar"), (b_right, "right")):
            button.click(make(answer, choice), inputs=inputs + [state], outputs=outputs, api_name=f"answer_{choice}")
    demo.afine_identity, demo.afine_served = identity, served
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
    parser.add_argument("--auth-file", default=None, help="file of 'name:password' lines: annotators log in with "
                        "gradio's login page (default: $AFINE_ANNOTATE_AUTH_FILE); AFINE_ANNOTATORS=a,b lists who "
                        "may annotate")
    args = parser.parse_args(argv)
    data, labels = default_dirs(args.data_dir, args.labels_dir)
    store = AnnotationStore(data, labels, seed=args.seed)
    identity = identity_from_env(auth_file=args.auth_file)
    launch(build_annotate(store, identity), args, auth=identity.auth)


if __name__ == "__main__":
    main()
