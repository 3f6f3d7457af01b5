"""Pair method-output folders with a ground-truth folder by relative path, without the model.

``sub/baby.png`` in an output folder pairs with ``sub/baby.<any image extension>`` in the ground-truth folder:
the key is the path relative to the folder, with ``/`` separators and without the extension. Subfolders are
searched recursively; hidden files and folders (names starting with ``.``) are skipped.

SR outputs often carry a suffix (``baby_SwinIR.png``, ``img_001_x4_SR.png``). ``strip_suffix`` removes a
literal suffix from the end of an output's file stem (``"_SwinIR"``) and ``strip_regex`` removes the first match
of a regular expression from it (``"_x4_SR$"``); both apply to outputs only, before matching.

Nothing here imports torch: every check that needs no model (missing paths, empty folders, folders without
images, two files with one key, nothing matched) raises :class:`PairingError` with a one-line message.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

__all__ = [
    "IMAGE_EXTENSIONS",
    "PairingError",
    "check_folder",
    "FolderPair",
    "FolderPlan",
    "scan_images",
    "pair_folders",
    "method_names",
    "glob_mixup",
]

#: file extensions (lower case) taken as images when scanning folders
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm", ".pbm", ".gif", ".tga", ".jp2", ".jfif"}
)


class PairingError(ValueError):
    """An input problem found before the model is loaded (one line, naming the path)."""


@dataclass(frozen=True)
class FolderPair:
    """One output image and its ground truth. ``image``: the matching key (relative path without extension)."""

    method: str
    image: str
    distorted: str
    reference: str


@dataclass
class FolderPlan:
    """The pairs of every method (methods in argument order, images in key order) and what did not match.

    ``unmatched_outputs[method]``: outputs with no ground truth; ``missing_outputs[method]``: ground-truth keys
    that method has no output for. Both lists are sorted. ``ground_truths``: ``{key: path}`` of every ground truth.
    """

    pairs: list[FolderPair]
    methods: list[str]
    ground_truths: dict[str, str] = field(default_factory=dict)
    unmatched_outputs: dict[str, list[str]] = field(default_factory=dict)
    missing_outputs: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n_unmatched(self) -> int:
        return sum(len(v) for v in self.unmatched_outputs.values())

    @property
    def n_missing(self) -> int:
        return sum(len(v) for v in self.missing_outputs.values())


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _strip(stem: str, suffix: Optional[str], pattern: Optional[re.Pattern[str]]) -> str:
    if suffix and stem.endswith(suffix) and len(stem) > len(suffix):
        stem = stem[: -len(suffix)]
    if pattern is not None:
        stripped = pattern.sub("", stem, count=1)
        stem = stripped or stem
    return stem


def check_folder(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path, or :class:`PairingError` if it is missing or not a folder."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.exists():
        raise PairingError(f"{p}: {what} folder does not exist")
    if not p.is_dir():
        raise PairingError(f"{p}: {what} is not a folder")
    return p


def scan_images(
    folder: str | os.PathLike,
    *,
    what: str = "image",
    strip_suffix: Optional[str] = None,
    strip_regex: Optional[str | re.Pattern[str]] = None,
) -> dict[str, str]:
    """``{key: path}`` for every image under ``folder`` (recursively), key = relative path without extension.

    Raises :class:`PairingError` when the folder is missing, empty, holds no image, or two images share a key
    (``a.png`` and ``a.jpg``), which would make the pairing ambiguous.
    """
    root = check_folder(folder, what)
    pattern = re.compile(strip_regex) if isinstance(strip_regex, str) else strip_regex
    found: dict[str, str] = {}
    seen_any = False
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            seen_any = True
            if not _is_image(name):
                continue
            rel_dir = os.path.relpath(dirpath, root)
            stem = _strip(os.path.splitext(name)[0], strip_suffix, pattern)
            key = stem if rel_dir == "." else f"{Path(rel_dir).as_posix()}/{stem}"
            path = os.path.join(dirpath, name)
            if key in found:
                raise PairingError(
                    f"{root}: {os.path.relpath(found[key], root)} and {os.path.relpath(path, root)} both match "
                    f"'{key}'; keep one of them (or change --strip-suffix/--strip-regex)"
                )
            found[key] = path
    if not found:
        reason = "is empty" if not seen_any else f"holds no image ({', '.join(sorted(IMAGE_EXTENSIONS))})"
        raise PairingError(f"{root}: {what} folder {reason}")
    return found


def method_names(folders: Sequence[str | os.PathLike]) -> list[str]:
    """A distinct display name per method folder: its base name, or more of its path when base names repeat."""
    paths = [Path(os.path.abspath(os.path.expanduser(os.fspath(f)))) for f in folders]
    for depth in range(1, max((len(p.parts) for p in paths), default=1) + 1):
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    raise PairingError(f"the same method folder is given twice: {', '.join(map(str, folders))}")


def pair_folders(
    method_folders: Sequence[str | os.PathLike],
    ground_truth: str | os.PathLike,
    *,
    strip_suffix: Optional[str] = None,
    strip_regex: Optional[str] = None,
    names: Optional[Sequence[str]] = None,
) -> FolderPlan:
    """Pair every method folder with ``ground_truth`` by relative path without extension (see module doc).

    Raises :class:`PairingError` (one line) for a missing/empty folder, a folder without images, duplicate
    keys, an invalid regex, or when no output of any method matches a ground truth.
    """
    if not method_folders:
        raise PairingError("no method folder given")
    pattern = None
    if strip_regex:
        try:
            pattern = re.compile(strip_regex)
        except re.error as exc:
            raise PairingError(f"--strip-regex {strip_regex!r}: {exc}") from exc
    gt_root = check_folder(ground_truth, "ground-truth")
    methods = list(names) if names is not None else method_names(method_folders)
    # the ground truth is scanned first: a typo in it is reported before anything else
    gt = scan_images(gt_root, what="ground-truth")
    gt_real = os.path.realpath(gt_root)
    plan = FolderPlan(pairs=[], methods=methods, ground_truths=gt)
    for method, folder in zip(methods, method_folders):
        if os.path.realpath(os.path.expanduser(os.fspath(folder))) == gt_real:
            raise PairingError(f"{folder}: is the ground-truth folder itself, given as a method")
        outputs = scan_images(folder, what="output", strip_suffix=strip_suffix, strip_regex=pattern)
        plan.unmatched_outputs[method] = sorted(outputs[k] for k in outputs if k not in gt)
        plan.missing_outputs[method] = sorted(k for k in gt if k not in outputs)
        for key in sorted(k for k in outputs if k in gt):
            plan.pairs.append(FolderPair(method, key, outputs[key], gt[key]))
    if not plan.pairs:
        hint = ""
        if not strip_suffix and not strip_regex:
            hint = " (outputs named with a suffix such as baby_SwinIR.png? use --strip-suffix _SwinIR or --strip-regex)"
        some = next(iter(gt))
        raise PairingError(
            f"nothing matched: no output in {', '.join(map(str, method_folders))} has the relative name of a "
            f"ground truth in {gt_root} (e.g. '{some}'){hint}"
        )
    return plan


def glob_mixup(images: Sequence[str], reference: str) -> Optional[str]:
    """For ``afine score D1 D2 ... REF``: a one-line reason when the images look like two shell-expanded folders.

    ``afine score blur/*.png GT/*.png`` expands to the outputs, then every ground truth but the last among the
    "distorted" images, all scored against the last ground truth. Flagged when a distorted image lives in the
    reference's folder and a file name (without extension) occurs in two of the folders. None when it looks
    intended.
    """
    ref_dir = os.path.dirname(os.path.abspath(reference))
    folders: dict[str, set[str]] = {}
    for p in [*images, reference]:
        a = os.path.abspath(p)
        folders.setdefault(os.path.dirname(a), set()).add(os.path.splitext(os.path.basename(a))[0])
    if len(folders) < 2 or not any(os.path.dirname(os.path.abspath(p)) == ref_dir for p in images):
        return None
    others = [d for d in folders if d != ref_dir]
    out_dir = others[0]
    common = sorted(folders[ref_dir].intersection(*[folders[d] for d in others[:1]]))
    in_ref_dir = sum(os.path.dirname(os.path.abspath(p)) == ref_dir for p in images)
    if common:
        why = (
            f"these images come from two folders with matching names ({os.path.relpath(out_dir)}/{common[0]}.*, "
            f"{os.path.relpath(ref_dir)}/{common[0]}.*)"
        )
    elif in_ref_dir >= 2:  # outputs named with a suffix (baby_SwinIR.png) do not match, but two globs still do this
        why = (
            f"these images come from two folders ({os.path.relpath(out_dir)}, and {in_ref_dir} from the reference's "
            f"folder {os.path.relpath(ref_dir)})"
        )
    else:
        return None
    return (
        f"{why}, so they would all be scored against the last one, "
        f"{reference}. To score a folder of outputs against a folder of ground truths, give the folders: "
        f"afine score {os.path.relpath(out_dir)} {os.path.relpath(ref_dir)} (or name the reference with -r)"
    )
