"""Pair and triplet construction (spec sections 3.1, 3.2 and 3.4), deterministic.

* :func:`diffiqa_triplets` - DiffIQA training triplets from majority-labelled pairs.
* :func:`filter_types` - the per-type subsets (PSY, PNY, SNY, SSY, PYY, SYY, NYY).
* :func:`nlogn_triplets` - the "nlogn" triplets of KADID-10k / PIPAL / TID2013 (seeded).
* :func:`all_pairs` - the SRIQA-Bench evaluation pairs (every C(n, 2) pair of a MOS file).

All labels are quality probabilities, higher = better (see :mod:`dataset_scripts.schema`).
"""

from __future__ import annotations

import itertools
import math
import random
from collections import OrderedDict
from typing import Iterable, Optional, Sequence

from .labels import ALL_TYPES, compare_labels, type_name
from .schema import LABEL_TO_G, MosRecord, PairRecord, TripletRecord

__all__ = ["diffiqa_triplets", "filter_types", "nlogn_triplets", "all_pairs", "compare_scores", "REFERENCE_SCORE"]

#: Score given to the reference in the nlogn construction (official: 9999, above any MOS).
REFERENCE_SCORE = 9999.0


def _by_group(items: Iterable, key) -> "OrderedDict[str, list]":
    groups: "OrderedDict[str, list]" = OrderedDict()
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def diffiqa_triplets(pairs: Sequence[PairRecord], *, include_reference: bool = True) -> list[TripletRecord]:
    """DiffIQA training triplets (``Triplet.txt``) from majority-labelled pairs.

    For each reference (in input order), with its labelled enhanced images in input order:

    1. every unordered pair (``itertools.combinations`` order) whose labels differ or are both Similar
       (Positive-Positive and Negative-Negative pairs are dropped): ``g12`` = 1 / 0 / 0.5 from the label
       order Positive > Similar > Negative, ``g1ref`` / ``g2ref`` = Positive 1, Similar 0.5, Negative 0;
    2. if ``include_reference``, every labelled image against the reference itself, ``(img, ref, ref)``,
       with ``g12 = g1ref`` = the image's label probability and ``g2ref = 0.5``.

    ``type`` is the triplet type (PSY, PNY, SNY, SSY from step 1; PYY, SYY, NYY from step 2).
    """
    out: list[TripletRecord] = []
    for group, items in _by_group(pairs, lambda p: p.group).items():
        refs = {p.reference_name for p in items}
        if len(refs) != 1:
            raise ValueError(f"group {group!r} has several references: {sorted(refs)}")
        ref = items[0].reference_name
        for a, b in itertools.combinations(items, 2):
            if a.label != b.label or a.label == "Similar":
                out.append(
                    TripletRecord(
                        group,
                        a.distorted_name,
                        b.distorted_name,
                        ref,
                        compare_labels(a.label, b.label),
                        LABEL_TO_G[a.label],
                        LABEL_TO_G[b.label],
                        type_name(a.label, b.label, "Original"),
                    )
                )
        if include_reference:
            for a in items:
                g = LABEL_TO_G[a.label]
                out.append(TripletRecord(group, a.distorted_name, ref, ref, g, g, 0.5, type_name(a.label, "Original", "Original")))
    return out


def filter_types(triplets: Iterable[TripletRecord], types: Sequence[str] = ALL_TYPES) -> dict[str, list[TripletRecord]]:
    """Split triplets by ``type`` into ``{type: [triplets]}`` (the ``TripletEachType/{type}.txt`` files).

    Every requested type gets a key, possibly with an empty list. Type names are case-insensitive.
    """
    wanted = [t.upper() for t in types]
    for t in wanted:
        if t not in ALL_TYPES:
            raise ValueError(f"unknown DiffIQA type {t!r}; expected one of {', '.join(ALL_TYPES)}")
    out: dict[str, list[TripletRecord]] = {t: [] for t in wanted}
    for trip in triplets:
        if trip.type in out:
            out[trip.type].append(trip)
    return out


def compare_scores(s1: float, s2: float) -> float:
    """P(first better) from two higher-is-better scores: 1 if s1 > s2, 0 if lower, 0.5 if equal."""
    return 1.0 if s1 > s2 else 0.0 if s1 < s2 else 0.5


def nlogn_triplets(
    records: Sequence[MosRecord],
    *,
    seed: int = 0,
    reference_score: float = REFERENCE_SCORE,
) -> list[TripletRecord]:
    """The "nlogn" triplets of a classic FR-IQA dataset (spec section 3.2), seeded.

    Per group (records grouped by ``group``, input order kept): the elements are the distorted images in
    input order plus the reference (score ``reference_score``); n = element count and
    L = round(log2 n) (Python rounding, as the official script). For each element, L distinct partners are
    drawn with ``random.Random`` seeded by ``(seed, group)`` - so a group's triplets do not depend on the
    other groups or on file order. Yields n * L ordered triplets ``(element, partner, reference)``;
    ``g12`` compares MOS (higher = better, equal = 0.5) and ``g1ref``/``g2ref`` compare against the
    reference (0, or 0.5 for the reference itself). ``type`` is ``NNY`` or ``NYY``.

    The reference name is taken from the records (the MOS file's second column), never rebuilt from the
    file stem, so ``.bmp`` references stay ``.bmp``.
    """
    out: list[TripletRecord] = []
    for group, items in _by_group(records, lambda r: r.group).items():
        refs = {r.reference_name for r in items}
        if len(refs) != 1:
            raise ValueError(f"group {group!r} lists several references: {sorted(refs)}")
        ref = items[0].reference_name
        elements = [(r.image_name, float(r.mos)) for r in items] + [(ref, float(reference_score))]
        n = len(elements)
        k = round(math.log2(n))
        if k > n - 1:
            k = n - 1
        rng = random.Random(f"afine-nlogn:{seed}:{group}")
        for i, (name1, s1) in enumerate(elements):
            others = elements[:i] + elements[i + 1 :]
            for name2, s2 in rng.sample(others, k):
                t1 = "Y" if name1 == ref else "N"
                t2 = "Y" if name2 == ref else "N"
                out.append(
                    TripletRecord(
                        group,
                        name1,
                        name2,
                        ref,
                        compare_scores(s1, s2),
                        compare_scores(s1, reference_score),
                        compare_scores(s2, reference_score),
                        "".join(sorted(t1 + t2, key="NY".index)) + "Y",
                    )
                )
    return out


def all_pairs(
    scores: Sequence[tuple[str, float]],
    *,
    group: str,
    ref_name: str,
    ref_score: Optional[float] = None,
) -> list[TripletRecord]:
    """Every C(n, 2) pair of one SRIQA-Bench MOS file, in ``itertools.combinations`` order of the file.

    ``scores`` is ``[(name, MOS)]`` in file order (MOS higher = better). ``g12`` = 1 / 0 / 0.5 as MOS1 is
    greater / smaller / equal. The reference is always ``ref_name`` (the Original), including pairs that
    contain the Original itself. ``g1ref``/``g2ref`` compare with ``ref_score`` (the Original's MOS) when
    given, else ``None``.
    """
    out = []
    for (n1, s1), (n2, s2) in itertools.combinations(scores, 2):
        g1 = compare_scores(s1, ref_score) if ref_score is not None else None
        g2 = compare_scores(s2, ref_score) if ref_score is not None else None
        out.append(TripletRecord(group, n1, n2, ref_name, compare_scores(s1, s2), g1, g2, ""))
    return out
