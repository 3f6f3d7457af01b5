"""Label tools: majority vote over annotators and comparison of two labels.

Vocabulary (:data:`dataset_scripts.schema.LABELS`): Positive / Similar / Negative. For DiffIQA a label
compares an enhanced image with its reference (Positive = enhanced better); for SRIQA-Bench each picture
of a shown pair carries its own label and the higher label wins.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping, Optional, Sequence

from .schema import LABEL_RANK, LABEL_TO_G, LABELS, TYPE_LETTER, PairRecord

__all__ = ["majority_vote", "compare_labels", "type_name", "majority_pairs", "TYPE_ORDER", "ALL_TYPES", "TEST_TYPES"]

#: Letter order used to spell a type name: P, S, N, then Y (the reference).
TYPE_ORDER = "PSNY"
#: Every DiffIQA triplet type (spec section 3.1).
ALL_TYPES: tuple[str, ...] = ("PSY", "PNY", "SNY", "SSY", "PYY", "SYY", "NYY")
#: The types used for validation and test (SSY and SYY are excluded as too ambiguous).
TEST_TYPES: tuple[str, ...] = ("PSY", "PNY", "SNY", "PYY", "NYY")


def majority_vote(votes: Sequence[str]) -> Optional[str]:
    """The label with a strict plurality among ``votes``, or ``None`` when there is none.

    With DiffIQA's three annotators this is the official rule: a label with at least two votes wins, a
    three-way disagreement (Positive, Similar, Negative) gives ``None`` and the image is dropped.
    Raises ``ValueError`` for a label outside the vocabulary.
    """
    for v in votes:
        if v not in LABELS:
            raise ValueError(f"label {v!r} is not one of {', '.join(LABELS)}")
    if not votes:
        return None
    counts = Counter(votes).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None
    return counts[0][0]


def compare_labels(label1: str, label2: str) -> float:
    """P(first better than second) from two labels: 1 if rank1 > rank2, 0 if lower, 0.5 if equal."""
    r1, r2 = LABEL_RANK[label1], LABEL_RANK[label2]
    return 1.0 if r1 > r2 else 0.0 if r1 < r2 else 0.5


def type_name(*labels: str) -> str:
    """Type name of a triplet from its members' labels, e.g. ("Similar", "Positive", "Original") -> "PSY".

    ``"Original"`` stands for the reference (letter Y). Letters are ordered P, S, N, Y.
    """
    letters = [TYPE_LETTER[label] for label in labels]
    return "".join(sorted(letters, key=TYPE_ORDER.index))


def majority_pairs(
    votes: Mapping[str, Mapping[str, Mapping[str, str]]],
    *,
    enhanced_name=lambda ref, variant: f"{ref}_{variant}.png",
    reference_name=lambda ref: f"{ref}.png",
    annotators: Optional[Iterable[str]] = None,
) -> list[PairRecord]:
    """Majority-labelled (enhanced, reference) pairs of DiffIQA.

    Args:
        votes: ``{reference: {variant: {annotator: label}}}``, e.g. ``{"000006x0y770": {"01": {"A":
            "Positive", "B": "Similar", "C": "Positive"}}}``.
        enhanced_name / reference_name: file-name builders (official: ``{ref}_{idx}.png`` and ``{ref}.png``).
        annotators: annotator order for the ``votes`` field (default: sorted).

    Returns pairs sorted by reference then variant; three-way disagreements are dropped. ``g`` is
    P(enhanced better than reference): Positive 1, Similar 0.5, Negative 0.
    """
    out = []
    for ref in sorted(votes):
        for variant in sorted(votes[ref]):
            by_annot = votes[ref][variant]
            order = list(annotators) if annotators is not None else sorted(by_annot)
            vote_list = tuple(by_annot[a] for a in order if a in by_annot)
            label = majority_vote(vote_list)
            if label is None:
                continue
            out.append(
                PairRecord(ref, enhanced_name(ref, variant), reference_name(ref), label, LABEL_TO_G[label], vote_list)
            )
    return out
