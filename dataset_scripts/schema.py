"""The one record schema for pairs, triplets and MOS tables.

Every builder in :mod:`dataset_scripts` yields rows with these columns, and training and evaluation code
import the same definitions, so a model sees the same field names whatever dataset it is fed.

Conventions (read these before using a field):

* **Quality labels are about perceived quality, higher = better.** ``g``, ``g12``, ``g1ref`` and
  ``g2ref`` are probabilities in {0, 0.5, 1} (a plain float in [0, 1] is allowed for soft labels) that the
  *first* image of the pair is **better** than the second: 1 = first better, 0 = second better,
  0.5 = similar / tie. This is the convention of the official ``Triplet.txt`` files.
* **Dataset MOS is higher = better** (KADID-10k, PIPAL, TID2013, SRIQA-Bench 0-100). A-FINE scores are
  lower = better; :mod:`dataset_scripts.agreement` takes the score direction as an argument.
* Image columns are :class:`datasets.Image` features; builders yield file paths and ``datasets``
  decodes them to ``PIL.Image`` on access. ``*_name`` columns hold the bare file names as written in the
  official label files (for example ``000006x0y770_01.png``).
* **Fixed vocabularies are** :class:`datasets.ClassLabel` **features**: ``label`` (and ``label1``/``label2``,
  ``votes``) with names :data:`LABEL_NAMES` = Negative, Similar, Positive, so the stored integer is the
  quality rank (0 < 1 < 2, higher = better) and ``g = code / 2``; ``type`` with names :data:`TRIPLET_TYPES`
  (None where a view has no type). Rows hold the integer; ``ds.features["label"].int2str(code)`` gives the
  name, and ``str2int`` the code.
* ``group`` is the reference-image identifier that ties rows together (DiffIQA reference name,
  SRIQA-Bench prefix such as ``online15``, classic-dataset MOS file stem such as ``I01``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Mapping, Optional

if TYPE_CHECKING:
    import datasets

__all__ = [
    "LABELS",
    "LABEL_NAMES",
    "TRIPLET_TYPES",
    "label_feature",
    "type_feature",
    "LABEL_RANK",
    "LABEL_TO_G",
    "TYPE_LETTER",
    "PAIR_COLUMNS",
    "TRIPLET_COLUMNS",
    "MOS_COLUMNS",
    "pair_features",
    "triplet_features",
    "mos_features",
    "PairRecord",
    "TripletRecord",
    "MosRecord",
    "format_g",
]

#: The label vocabulary of DiffIQA and SRIQA-Bench JSON files. For DiffIQA, the label compares the
#: enhanced image with its reference: Positive = enhanced better, Similar, Negative = enhanced worse.
LABELS: tuple[str, ...] = ("Positive", "Similar", "Negative")
#: Ordinal value of a label (official ``fetch_number_for_label``): Positive 1 > Similar 0 > Negative -1.
LABEL_RANK: dict[str, int] = {"Positive": 1, "Similar": 0, "Negative": -1}
#: Probability that the labelled image is better than its comparison image: P 1, S 0.5, N 0.
LABEL_TO_G: dict[str, float] = {"Positive": 1.0, "Similar": 0.5, "Negative": 0.0}
#: One-letter codes used in the DiffIQA type names (PSY, PNY, ...). ``Y`` is the reference itself.
TYPE_LETTER: dict[str, str] = {"Positive": "P", "Similar": "S", "Negative": "N", "Original": "Y"}

#: Class names of the ``label`` ClassLabel, in code order: the code is the quality rank (higher = better),
#: i.e. ``LABEL_RANK[name] + 1``, and ``LABEL_TO_G[name] == code / 2``.
LABEL_NAMES: tuple[str, ...] = ("Negative", "Similar", "Positive")
#: Class names of the triplet ``type`` ClassLabel: the DiffIQA types (training order of the official
#: ``TripletEachType`` files) and the classic sets' NNY (two distorted images) / NYY (one is the reference).
TRIPLET_TYPES: tuple[str, ...] = ("PSY", "PNY", "SNY", "SSY", "PYY", "SYY", "NYY", "NNY")


def label_feature() -> "datasets.ClassLabel":
    import datasets

    """The ``ClassLabel`` of Positive / Similar / Negative labels (names :data:`LABEL_NAMES`, code = rank)."""
    return datasets.ClassLabel(names=list(LABEL_NAMES))


def type_feature() -> "datasets.ClassLabel":
    import datasets

    """The ``ClassLabel`` of triplet types (names :data:`TRIPLET_TYPES`)."""
    return datasets.ClassLabel(names=list(TRIPLET_TYPES))


@lru_cache(maxsize=1)
def _columns() -> dict[str, dict]:
    # built on first use, so that the label tools (which never build a dataset) do not import `datasets`
    import datasets

    _STR = datasets.Value("string")
    _F32 = datasets.Value("float32")
    out = {}
    #: Core columns of a (distorted, reference) pair record.
    out["PAIR_COLUMNS"] = {
        "group": _STR,
        "distorted": datasets.Image(),
        "reference": datasets.Image(),
        "distorted_name": _STR,
        "reference_name": _STR,
        # ClassLabel Negative 0 / Similar 1 / Positive 2: distorted compared with its reference (higher = better).
        "label": label_feature(),
        # P(distorted better than reference) in [0, 1]: Positive 1, Similar 0.5, Negative 0.
        "g": _F32,
    }

    #: Core columns of a (img1, img2, ref) triplet record; the official ``Triplet.txt`` row.
    out["TRIPLET_COLUMNS"] = {
        "group": _STR,
        "img1": datasets.Image(),
        "img2": datasets.Image(),
        "ref": datasets.Image(),
        "img1_name": _STR,
        "img2_name": _STR,
        "ref_name": _STR,
        # P(img1 better than img2), P(img1 better than ref), P(img2 better than ref); each in [0, 1].
        # g1ref / g2ref are None where the data does not determine them.
        "g12": _F32,
        "g1ref": _F32,
        "g2ref": _F32,
        # ClassLabel of TRIPLET_TYPES: DiffIQA type such as "PSY" (letters in P, S, N, Y order), "NNY"/"NYY" for
        # the classic sets; None where the view has no type (SRIQA-Bench).
        "type": type_feature(),
    }

    #: Core columns of a MOS-table record (one image with its mean opinion score, higher = better).
    out["MOS_COLUMNS"] = {
        "group": _STR,
        "image": datasets.Image(),
        "reference": datasets.Image(),
        "image_name": _STR,
        "reference_name": _STR,
        "mos": _F32,
    }
    return out


#: Module attributes built lazily (they need ``datasets``): core columns of the (distorted, reference) pair
#: record, of the (img1, img2, ref) triplet record (the official ``Triplet.txt`` row) and of the MOS-table
#: record, and the ready-made core ``datasets.Features``.
def __getattr__(name: str):
    if name in ("PAIR_COLUMNS", "TRIPLET_COLUMNS", "MOS_COLUMNS"):
        return _columns()[name]
    if name in ("PAIR_FEATURES", "TRIPLET_FEATURES", "MOS_FEATURES"):
        return _merge(_columns()[name.replace("FEATURES", "COLUMNS")], None)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _merge(core: Mapping, extra: Optional[Mapping]) -> "datasets.Features":
    import datasets

    cols = dict(core)
    for key, value in (extra or {}).items():
        if key in cols:
            raise ValueError(f"extra column {key!r} clashes with a core schema column")
        cols[key] = value
    return datasets.Features(cols)


def pair_features(extra: Optional[Mapping] = None) -> datasets.Features:
    """``datasets.Features`` for pair records: :data:`PAIR_COLUMNS` plus builder-specific ``extra`` columns."""
    return _merge(_columns()["PAIR_COLUMNS"], extra)


def triplet_features(extra: Optional[Mapping] = None) -> datasets.Features:
    """``datasets.Features`` for triplet records: :data:`TRIPLET_COLUMNS` plus ``extra`` columns."""
    return _merge(_columns()["TRIPLET_COLUMNS"], extra)


def mos_features(extra: Optional[Mapping] = None) -> datasets.Features:
    """``datasets.Features`` for MOS tables: :data:`MOS_COLUMNS` plus ``extra`` columns."""
    return _merge(_columns()["MOS_COLUMNS"], extra)


def format_g(value: float) -> str:
    """Format a label probability as the official files do: ``1``, ``0`` or ``0.5``."""
    if value == 1:
        return "1"
    if value == 0:
        return "0"
    return repr(float(value))


@dataclass(frozen=True)
class PairRecord:
    """A (distorted, reference) pair by file name. ``g`` = P(distorted better than reference)."""

    group: str
    distorted_name: str
    reference_name: str
    label: str
    g: float
    votes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TripletRecord:
    """A training/evaluation triplet by file name, the row of an official ``Triplet.txt``.

    ``g12`` = P(img1 better than img2); ``g1ref`` / ``g2ref`` = P(img1 / img2 better than ref);
    each in [0, 1] (higher quality = better), ``None`` where unknown.
    """

    group: str
    img1_name: str
    img2_name: str
    ref_name: str
    g12: float
    g1ref: Optional[float] = None
    g2ref: Optional[float] = None
    type: str = ""

    def to_line(self, columns: int = 6) -> str:
        """The official text line: 6 columns ``img1,img2,ref,g12,g1ref,g2ref`` or 4 columns ``img1,img2,ref,g12``."""
        parts = [self.img1_name, self.img2_name, self.ref_name, format_g(self.g12)]
        if columns == 6:
            if self.g1ref is None or self.g2ref is None:
                raise ValueError(f"triplet {self} has no g1ref/g2ref; write it with columns=4")
            parts += [format_g(self.g1ref), format_g(self.g2ref)]
        elif columns != 4:
            raise ValueError("columns must be 4 or 6")
        return ",".join(parts)


@dataclass(frozen=True)
class MosRecord:
    """One image of a MOS table. ``mos`` is higher = better; ``extra`` holds e.g. KADID's variance."""

    group: str
    image_name: str
    reference_name: str
    mos: float
    extra: dict = field(default_factory=dict, compare=False)


__all__ += ["PAIR_FEATURES", "TRIPLET_FEATURES", "MOS_FEATURES"]
