"""Leaderboards of methods scored with A-FINE: the project's one statistics module (scipy underneath).

:func:`summarize` turns per-pair records (dicts with ``method``, ``score``, ``fidelity``,
``naturalness_distorted``, ``naturalness_reference`` and an image identity) into a :class:`Leaderboard`:

* per method: ``n``, ``n_total``, ``mean``, ``median``, ``std`` (sample, ddof=1), ``ci95_low``/``ci95_high``
  (percentile bootstrap of the mean over images, :func:`scipy.stats.bootstrap`, seeded), ``rank``
  (1 = lowest mean score, :func:`scipy.stats.rankdata` with ties sharing the best rank), the means of
  ``fidelity``, ``naturalness_distorted`` and ``naturalness_reference``, ``common_set``, and
  ``win_rate_vs_best`` / ``p_value_vs_best`` against the rank-1 method (empty for that method itself);
* per pair of methods, on the images both have: ``n``, ``win_rate`` (fraction of those images where ``a``
  scores strictly lower than ``b``, i.e. better), ``tie_rate`` and ``p_value`` (two-sided Wilcoxon signed-rank
  test, :func:`scipy.stats.wilcoxon`; 1.0 when every difference is zero, empty with no shared image).

Every A-FINE number is **lower = better** (score 0-100; fidelity and naturalness terms in about (-2, 2)).
When methods cover different image sets, the per-method statistics and ranks are computed over the images
every method has (``common_set`` is true, ``n`` is that count, ``n_total`` each method's own count). A
single method is summarised over all its pairs. Error records (with an ``error`` field) are left out.

The image identity of a record is its ``image`` field (folder runs: the relative path without extension),
else ``reference_path``, else ``reference``. numpy and scipy are imported when a summary is computed, not
when this module is imported.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

__all__ = ["Leaderboard", "summarize", "METHOD_COLUMNS", "COMPARISON_COLUMNS", "DEFAULT_METHOD"]

#: the method name of records that carry none (``method`` absent or null)
DEFAULT_METHOD = "all"

METHOD_COLUMNS = (
    "rank",
    "method",
    "n",
    "n_total",
    "mean",
    "median",
    "std",
    "ci95_low",
    "ci95_high",
    "fidelity_mean",
    "naturalness_distorted_mean",
    "naturalness_reference_mean",
    "common_set",
    "win_rate_vs_best",
    "p_value_vs_best",
)
COMPARISON_COLUMNS = ("a", "b", "n", "win_rate", "tie_rate", "p_value")
_TERMS = ("fidelity", "naturalness_distorted", "naturalness_reference")


@dataclass
class Leaderboard:
    """Methods ranked by mean A-FINE score (lower is better), with pairwise comparisons.

    ``methods``: one dict per method in rank order (keys :data:`METHOD_COLUMNS`); ``comparisons``: one dict per
    pair of methods (keys :data:`COMPARISON_COLUMNS`), ``a`` ranked above or level with ``b``. ``common_set``:
    statistics were restricted to the ``n_common`` images every method has. ``unmatched``: optional report
    of inputs that could not be paired (folder runs), kept in the JSON form.
    """

    methods: list[dict[str, Any]]
    comparisons: list[dict[str, Any]]
    common_set: bool = False
    n_common: int = 0
    confidence_level: float = 0.95
    n_resamples: int = 9999
    seed: int = 0
    unmatched: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ forms

    def to_dict(self) -> dict[str, Any]:
        """``{"methods": [...], "comparisons": [...], ...}``; NaN becomes None (JSON null)."""
        out: dict[str, Any] = {
            "methods": [{k: _json_value(r.get(k)) for k in METHOD_COLUMNS} for r in self.methods],
            "comparisons": [{k: _json_value(c.get(k)) for k in COMPARISON_COLUMNS} for c in self.comparisons],
            "common_set": self.common_set,
            "n_common": self.n_common,
            "score": "A-FINE score 0-100, lower is better",
            "ci": f"{self.confidence_level:.0%} percentile bootstrap of the mean over images, {self.n_resamples} resamples, seed {self.seed}",
            "p_value": "two-sided Wilcoxon signed-rank test on the images both methods have",
        }
        if self.unmatched:
            out["unmatched"] = self.unmatched
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self) -> str:
        """One row per method (rank order), columns :data:`METHOD_COLUMNS`; empty cells for missing values."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METHOD_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for r in self.methods:
            writer.writerow({k: "" if _json_value(r.get(k)) is None else _csv_value(r.get(k)) for k in METHOD_COLUMNS})
        return buf.getvalue()

    def to_markdown(self) -> str:
        """A Markdown table (rank order) with the CI, the terms, and the comparison against the best method."""
        head = ["Rank", "Method", "n", "Mean ↓", "Median", "Std", f"{self.confidence_level:.0%} CI", "Fidelity", "N(dis)", "N(ref)", "Win vs best", "p vs best"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * 1 + [":---"] + ["---:"] * (len(head) - 2)) + "|"]
        for r in self.methods:
            cells = [
                str(r["rank"]),
                _md_escape(r["method"]),
                str(r["n"]) if r["n"] == r["n_total"] else f"{r['n']} of {r['n_total']}",
                _fmt(r["mean"], 3),
                _fmt(r["median"], 3),
                _fmt(r["std"], 3),
                f"[{_fmt(r['ci95_low'], 3)}, {_fmt(r['ci95_high'], 3)}]",
                _fmt(r["fidelity_mean"], 4),
                _fmt(r["naturalness_distorted_mean"], 4),
                _fmt(r["naturalness_reference_mean"], 4),
                "—" if _missing(r.get("win_rate_vs_best")) else f"{r['win_rate_vs_best']:.0%}",
                "—" if _missing(r.get("p_value_vs_best")) else _fmt_p(r["p_value_vs_best"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        note = "A-FINE score 0-100, lower is better. CI: percentile bootstrap of the mean over images."
        if self.common_set:
            note += f" Methods cover different images: statistics over the {self.n_common} images all of them have."
        return "\n".join(lines) + "\n\n" + note + "\n"

    def to_pandas(self):
        """The methods table as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame([{k: r.get(k) for k in METHOD_COLUMNS} for r in self.methods], columns=list(METHOD_COLUMNS))

    def save(self, path: str | os.PathLike) -> None:
        """Write the leaderboard as ``.csv``, ``.json`` or ``.md`` (chosen by the extension)."""
        ext = os.path.splitext(os.fspath(path))[1].lower()
        writers = {".csv": self.to_csv, ".json": self.to_json, ".md": self.to_markdown, ".markdown": self.to_markdown}
        if ext not in writers:
            raise ValueError(f"{path}: summary file must end in .csv, .json or .md")
        text = writers[ext]()
        with open(path, "w", encoding="utf-8", newline="") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")

    def format_text(self, max_comparisons: int = 10) -> str:
        """The leaderboard for a terminal: a fixed-width table, the flag for different image sets, comparisons."""
        title = (
            f"Leaderboard: A-FINE score, lower is better ({self.confidence_level:.0%} CI: bootstrap over images, "
            f"seed {self.seed})"
        )
        width = max([6, *(len(str(r["method"])) for r in self.methods)])
        header = (
            f"{'rank':>4}  {'method':<{width}}  {'n':>6}  {'mean':>8}  {'median':>8}  {'std':>7}  "
            f"{'ci95':>19}  {'fidelity':>9}  {'N(dis)':>8}  {'N(ref)':>8}"
        )
        lines = [title, header]
        for r in self.methods:
            n = str(r["n"]) if r["n"] == r["n_total"] else f"{r['n']}/{r['n_total']}"
            ci = f"[{_fmt(r['ci95_low'], 3)}, {_fmt(r['ci95_high'], 3)}]"
            lines.append(
                f"{r['rank']:>4}  {str(r['method']):<{width}}  {n:>6}  {_fmt(r['mean'], 3):>8}  {_fmt(r['median'], 3):>8}  "
                f"{_fmt(r['std'], 3):>7}  {ci:>19}  {_fmt(r['fidelity_mean'], 4):>9}  "
                f"{_fmt(r['naturalness_distorted_mean'], 4):>8}  {_fmt(r['naturalness_reference_mean'], 4):>8}"
            )
        if self.common_set:
            lines.append(
                f"note: the methods cover different images; statistics and ranks use the {self.n_common} images "
                "all of them have (n/n_total)"
            )
        elif len(self.methods) > 1 and self.n_common == 0:
            lines.append("note: no image is shared by all the methods; each row uses the method's own images")
        if self.comparisons:
            lines.append("pairwise, on shared images (wins: lower score; p: Wilcoxon signed-rank, two-sided):")
            for c in self.comparisons[:max_comparisons]:
                if c["n"] == 0:
                    lines.append(f"  {c['a']} vs {c['b']}: no shared image")
                    continue
                lines.append(
                    f"  {c['a']} vs {c['b']}: n={c['n']}, {c['a']} better on {c['win_rate']:.0%}, "
                    f"ties {c['tie_rate']:.0%}, p={_fmt_p(c['p_value'])}"
                )
            if len(self.comparisons) > max_comparisons:
                lines.append(f"  ... {len(self.comparisons) - max_comparisons} more in --summary FILE.json")
        return "\n".join(lines)


# ------------------------------------------------------------------ computation


def summarize(
    records: Iterable[dict[str, Any]],
    *,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    unmatched: Optional[dict[str, Any]] = None,
    method_order: Optional[Sequence[str]] = None,
) -> Leaderboard:
    """Leaderboard of the methods in ``records`` (see the module doc for every column).

    Args:
        records: per-pair dicts; those with an ``error`` field or no ``score`` are skipped. ``method`` absent
            or None counts as :data:`DEFAULT_METHOD`.
        confidence_level: of the bootstrap interval (``ci95_*`` columns keep their names).
        n_resamples, seed: of the bootstrap (a fresh ``numpy.random.default_rng(seed)`` per method, so the
            interval of a method does not depend on the others).
        unmatched: kept as is in :meth:`Leaderboard.to_dict`.
        method_order: break rank ties (and order methods without records) by this order; default first seen.

    A leaderboard without methods comes back when no record has a score.
    """
    import numpy as np

    per_method: dict[str, dict[Any, dict[str, float]]] = {}
    counts: dict[tuple[str, Any], int] = {}
    for rec in records:
        if "error" in rec or rec.get("score") is None:
            continue
        method = rec.get("method")
        method = DEFAULT_METHOD if method is None else str(method)
        ident = rec.get("image") or rec.get("reference_path") or rec.get("reference")
        k = counts.get((method, ident), 0)
        counts[(method, ident)] = k + 1
        # a method with several outputs for one reference (a pairs CSV): the k-th of them pairs with the k-th
        per_method.setdefault(method, {})[(ident, k)] = {f: float(rec[f]) for f in ("score", *_TERMS) if rec.get(f) is not None}
    if not per_method:
        return Leaderboard([], [], confidence_level=confidence_level, n_resamples=n_resamples, seed=seed, unmatched=dict(unmatched or {}))
    order = list(method_order or []) + [m for m in per_method if m not in (method_order or [])]
    names = [m for m in order if m in per_method]

    image_sets = [set(per_method[m]) for m in names]
    common = set.intersection(*image_sets)
    use_common = len(names) > 1 and any(s != common for s in image_sets) and bool(common)
    rows = []
    for m in names:
        keys = [k for k in per_method[m] if k in common] if use_common else list(per_method[m])
        scores = np.array([per_method[m][k]["score"] for k in keys], dtype=np.float64)
        row: dict[str, Any] = {"method": m, "n": len(keys), "n_total": len(per_method[m])}
        row.update(_describe(scores, confidence_level, n_resamples, seed))
        for term in _TERMS:
            vals = [per_method[m][k][term] for k in keys if term in per_method[m][k]]
            row[f"{term}_mean"] = float(np.mean(vals)) if vals else math.nan
        row["common_set"] = use_common
        rows.append(row)

    from scipy.stats import rankdata

    ranks = rankdata([r["mean"] for r in rows], method="min")
    for r, rank in zip(rows, ranks):
        r["rank"] = int(rank)
    rows.sort(key=lambda r: (r["rank"], names.index(r["method"])))

    comparisons = []
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            comparisons.append(_compare(a["method"], b["method"], per_method[a["method"]], per_method[b["method"]]))
    best = rows[0]["method"]
    by_pair = {(c["a"], c["b"]): c for c in comparisons}
    for r in rows:
        if r["method"] == best:
            r["win_rate_vs_best"] = r["p_value_vs_best"] = None
            continue
        c = by_pair[(best, r["method"])]
        r["win_rate_vs_best"] = None if c["n"] == 0 else _b_win_rate(c)
        r["p_value_vs_best"] = c["p_value"]
    return Leaderboard(
        methods=rows,
        comparisons=comparisons,
        common_set=use_common,
        n_common=len(common),
        confidence_level=confidence_level,
        n_resamples=n_resamples,
        seed=seed,
        unmatched=dict(unmatched or {}),
    )


def _b_win_rate(c: dict[str, Any]) -> float:
    """Fraction of the shared images where ``b`` scores strictly lower than ``a``."""
    return 1.0 - c["win_rate"] - c["tie_rate"]


def _describe(scores, confidence_level: float, n_resamples: int, seed: int) -> dict[str, float]:
    import numpy as np

    n = scores.size
    mean = float(np.mean(scores))
    out = {"mean": mean, "median": float(np.median(scores)), "std": float(np.std(scores, ddof=1)) if n > 1 else 0.0}
    if n < 2 or np.all(scores == scores[0]):
        out["ci95_low"] = out["ci95_high"] = mean  # no spread to resample
        return out
    from scipy.stats import bootstrap

    options = dict(n_resamples=n_resamples, confidence_level=confidence_level, method="percentile", vectorized=True)
    try:
        res = bootstrap((scores,), np.mean, rng=np.random.default_rng(seed), **options)
    except TypeError:  # scipy < 1.15 names the generator random_state
        res = bootstrap((scores,), np.mean, random_state=np.random.default_rng(seed), **options)
    out["ci95_low"] = float(res.confidence_interval.low)
    out["ci95_high"] = float(res.confidence_interval.high)
    return out


def _compare(a: str, b: str, sa: dict[Any, dict[str, float]], sb: dict[Any, dict[str, float]]) -> dict[str, Any]:
    import numpy as np

    keys = [k for k in sa if k in sb]
    out: dict[str, Any] = {"a": a, "b": b, "n": len(keys), "win_rate": None, "tie_rate": None, "p_value": None}
    if not keys:
        return out
    x = np.array([sa[k]["score"] for k in keys], dtype=np.float64)
    y = np.array([sb[k]["score"] for k in keys], dtype=np.float64)
    out["win_rate"] = float(np.mean(x < y))
    out["tie_rate"] = float(np.mean(x == y))
    if np.all(x == y):
        out["p_value"] = 1.0  # no evidence either way (wilcoxon has no non-zero difference to rank)
        return out
    from scipy.stats import wilcoxon

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(wilcoxon(x, y).pvalue)
    out["p_value"] = None if math.isnan(p) else p
    return out


# ------------------------------------------------------------------ formatting helpers


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _json_value(v: Any) -> Any:
    if _missing(v):
        return None
    if hasattr(v, "item"):  # numpy scalars
        v = v.item()
    return v


def _csv_value(v: Any) -> Any:
    v = _json_value(v)
    return repr(v) if isinstance(v, float) else v


def _fmt(v: Any, digits: int) -> str:
    return "—" if _missing(v) else f"{v:.{digits}f}"


def _fmt_p(p: Any) -> str:
    if _missing(p):
        return "—"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|")
