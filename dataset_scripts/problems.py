"""Problem reports shared by the checker and the builders."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Optional

__all__ = ["Problem", "CheckReport", "DatasetCheckError", "DatasetProblemWarning", "PROBLEM_KINDS"]

#: Kinds of problem the checker reports.
PROBLEM_KINDS: dict[str, str] = {
    "missing_image": "an image named by a label/MOS file (or needed by the layout) does not exist",
    "unreadable_image": "an image file exists but cannot be decoded",
    "malformed_label": "a label/MOS/triplet file is not valid JSON/text or misses fields",
    "bad_label": "a label value is outside the vocabulary Positive/Similar/Negative",
    "wrong_count": "a group has the wrong number of images, labels, pairs or MOS lines",
    "size_mismatch": "an image and its reference differ in size",
    "layout": "a required folder is missing or the layout is not recognised",
    "inconsistent": "files disagree (e.g. a name in a label file that does not match the file name)",
}


@dataclass(frozen=True)
class Problem:
    """One defect: ``kind`` (see :data:`PROBLEM_KINDS`), the file or folder ``path``, and a message.

    ``part`` names the part(s) of the dataset the defect concerns, comma-separated (e.g. ``labels``,
    ``MOS,labels``, ``images``; empty when it concerns everything), so a builder can still prepare the views
    that read none of them.
    """

    kind: str
    path: str
    message: str
    part: str = field(default="", compare=False)

    def __str__(self) -> str:
        return f"[{self.kind}] {self.path}: {self.message}"


@dataclass
class CheckReport:
    """All problems found in a dataset folder (``ok`` when none), plus counts of what was checked."""

    root: str
    dataset: str
    problems: list[Problem] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    #: part recorded on problems added without an explicit ``part`` (set by the scanners per section)
    current_part: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, path, message: str, part: Optional[str] = None) -> None:
        if kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {kind!r}")
        self.problems.append(Problem(kind, str(path), message, self.current_part if part is None else part))

    def split(self, needed: Iterable[str]) -> "tuple[CheckReport, CheckReport]":
        """``(blocking, other)``: the problems in the ``needed`` parts (or in no particular part), and the rest."""
        needed = set(needed)
        blocking = CheckReport(self.root, self.dataset, stats=dict(self.stats))
        other = CheckReport(self.root, self.dataset, stats=dict(self.stats))
        for p in self.problems:
            (blocking if not p.part or needed & set(p.part.split(",")) else other).problems.append(p)
        return blocking, other

    def by_kind(self) -> dict[str, list[Problem]]:
        out: dict[str, list[Problem]] = {}
        for p in self.problems:
            out.setdefault(p.kind, []).append(p)
        return out

    def format(self, limit: Optional[int] = None) -> str:
        """Human-readable report: a summary line, then every problem (up to ``limit``)."""
        head = f"{self.dataset} at {self.root}: "
        stats = ", ".join(f"{v} {k}" for k, v in self.stats.items())
        if self.ok:
            return head + f"OK ({stats})" if stats else head + "OK"
        counts = Counter(p.kind for p in self.problems)
        lines = [head + f"{len(self.problems)} problem(s): " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))]
        if stats:
            lines.append(f"checked: {stats}")
        shown = self.problems if limit is None else self.problems[:limit]
        lines += [f"  {p}" for p in shown]
        if limit is not None and len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "dataset": self.dataset,
            "ok": self.ok,
            "stats": dict(self.stats),
            "problems": [{"kind": p.kind, "path": p.path, "message": p.message, "part": p.part} for p in self.problems],
        }


class DatasetCheckError(ValueError):
    """Raised by builders when the dataset folder has problems; ``report`` holds all of them."""

    def __init__(self, report: CheckReport, limit: int = 50):
        self.report = report
        super().__init__("the dataset folder has problems; fix them or run 'afine data check'.\n" + report.format(limit))


class DatasetProblemWarning(UserWarning):
    """Warned by builders when the folder has problems in parts the requested view does not read (the view
    is still prepared); the message names every such file."""
