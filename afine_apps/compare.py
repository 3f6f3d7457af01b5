"""A vs B: which of two candidates (e.g. two super-resolution methods) does A-FINE prefer against one reference?

The demo's "A vs B" tab. Both candidates are scored against the reference (encoded once) and the result has

* the verdict: the candidate with the **lower** A-FINE score is preferred (a tie when the scores are equal);
* both score sets (score 0–100, score_raw, fidelity, naturalness of the candidate and of the reference);
* the decomposition ``score_raw = λ·N(candidate) + F`` with the adaptive weight λ, and whether the
  difference comes mostly from fidelity or from naturalness;
* ``p_a_better``: the Thurstone (Case V) probability Φ((A_B − A_A)/√2) on the raw scores, the pairing rule
  A-FINE was trained with.

:func:`compare_pair` returns a dict with ``preferred``
("A", "B" or "tie"), ``p_a_better``, ``A`` and ``B`` (each the five outputs plus ``adaptive_weight`` and
``weighted_naturalness`` = λ·N), and ``differences`` (B minus A for score, fidelity, weighted naturalness).
"""

from __future__ import annotations

import math
from typing import Optional

from .launching import load_upload, markdown_text, probe_uploads
from .pair import FIELDS, RESIZE_LABEL

__all__ = ["compare_pair", "verdict_markdown", "p_first_better"]


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def p_first_better(raw_first: float, raw_second: float) -> float:
    """Thurstone Case V probability that the first image is better: Φ((A_second − A_first)/√2) on raw scores."""
    diff = raw_second - raw_first
    return _phi(diff / math.sqrt(2.0)) if math.isfinite(diff) else (1.0 if diff > 0 else 0.0)


def compare_pair(scorer, candidate_a, candidate_b, reference, resize_reference: bool = False,
                 name_a: str = "A", name_b: str = "B", *, max_pixels: Optional[int] = None) -> dict:
    """Score two candidates against one reference; the lower ``score`` wins.

    Returns ``{"preferred": "A"|"B"|"tie", "preferred_name", "p_a_better", "A": {...}, "B": {...},
    "differences": {...}, "names": {"A": name_a, "B": name_b}}``. Raises ``ValueError`` for missing images
    or a size mismatch (each candidate must have the reference's size unless ``resize_reference``).
    """
    probe_uploads([(candidate_a, "candidate A"), (candidate_b, "candidate B"), (reference, "reference")], max_pixels)
    a = load_upload(candidate_a, "candidate A", limit=max_pixels)
    b = load_upload(candidate_b, "candidate B", limit=max_pixels)
    ref = load_upload(reference, "reference", limit=max_pixels)
    if not resize_reference:
        for tag, img in (("A", a), ("B", b)):
            if img.size != ref.size:
                raise ValueError(
                    f"Size mismatch: candidate {tag} is {img.size[0]}x{img.size[1]} (WxH) but the reference is "
                    f"{ref.size[0]}x{ref.size[1]}. A-FINE compares images of the same size; tick "
                    f"'{RESIZE_LABEL}' to stretch the reference."
                )
    out = scorer.score([a, b], ref, resize_reference=bool(resize_reference))  # shared reference: encoded once
    sets = {}
    for j, tag in enumerate(("A", "B")):
        v = {f: float(getattr(out, f)[j]) for f in FIELDS}
        v["adaptive_weight"] = float(out.adaptive_weight[j])
        v["weighted_naturalness"] = v["adaptive_weight"] * v["naturalness_distorted"]
        sets[tag] = v
    sa, sb = sets["A"]["score"], sets["B"]["score"]
    preferred = "tie" if sa == sb else ("A" if sa < sb else "B")
    ra, rb = sets["A"]["score_raw"], sets["B"]["score_raw"]
    diff = rb - ra
    p_a = p_first_better(ra, rb)
    names = {"A": name_a or "A", "B": name_b or "B"}
    return {
        "preferred": preferred,
        "preferred_name": names.get(preferred, "tie"),
        "p_a_better": p_a,
        "A": sets["A"],
        "B": sets["B"],
        "differences": {
            "score": sb - sa,
            "score_raw": diff,
            "fidelity": sets["B"]["fidelity"] - sets["A"]["fidelity"],
            "weighted_naturalness": sets["B"]["weighted_naturalness"] - sets["A"]["weighted_naturalness"],
        },
        "names": names,
    }


def verdict_markdown(result: dict) -> str:
    """Human-readable verdict and decomposition table for :func:`compare_pair`'s result."""
    names = {k: markdown_text(v) for k, v in result["names"].items()}  # user text: shown, never rendered
    d = result["differences"]
    if result["preferred"] == "tie":
        head = f"### Tie: {names['A']} and {names['B']} get the same A-FINE score"
    else:
        w = result["preferred"]
        l = "B" if w == "A" else "A"
        head = f"### A-FINE prefers **{names[w]}** ({result[w]['score']:.4f} vs {result[l]['score']:.4f})"
    driver = "fidelity" if abs(d["fidelity"]) >= abs(d["weighted_naturalness"]) else "naturalness"
    rows = [
        ("score (0–100)", "score"), ("score_raw A = λ·N + F", "score_raw"), ("fidelity F", "fidelity"),
        ("naturalness N (candidate)", "naturalness_distorted"), ("naturalness N (reference)", "naturalness_reference"),
        ("adaptive weight λ", "adaptive_weight"), ("λ·N (candidate)", "weighted_naturalness"),
    ]
    table = [f"| | {names['A']} (A) | {names['B']} (B) |", "|---|---|---|"]
    table += [f"| {label} | {result['A'][k]:.4f} | {result['B'][k]:.4f} |" for label, k in rows]
    return (
        f"{head}\n\nP(A better) by Thurstone on the raw scores: {result['p_a_better']:.3f}. "
        f"The difference in raw score comes mostly from **{driver}** "
        f"(ΔF = {d['fidelity']:+.4f}, Δ(λ·N) = {d['weighted_naturalness']:+.4f}, B minus A).\n\n"
        + "\n".join(table)
    )
