"""DiffIQA as a ``datasets`` builder (spec section 3.1).

Configs (each with the splits present in the folder: ``train``/``validation``/``test`` from
``Train``/``Validation``/``Test`` subfolders, or one split ``full`` for an unsplit folder):

* ``annotations`` - one row per raw judgement (annotator x enhanced image): pair columns plus
  ``variant``, ``annotator``, ``start``, ``end``, ``time_total`` (seconds), ``label_file``.
* ``pairs`` - majority-labelled (enhanced, reference) pairs (three-way disagreements dropped) with the
  ``votes`` in ``annotators`` order.
* ``triplets`` - training triplets (``Triplet.txt`` construction) with their ``type``.
* ``PSY``, ``PNY``, ``SNY``, ``PYY``, ``NYY`` (the test types) and ``SSY``, ``SYY`` - per-type subsets.

Labels: ``label`` compares the enhanced image with the reference (Positive = enhanced better);
``g``/``g12``/``g1ref``/``g2ref`` are P(first better), higher quality = better.
"""

from __future__ import annotations

from pathlib import Path

import datasets

from ..labels import ALL_TYPES, majority_pairs
from ..layouts import ANNOTATORS_PART, coverage_warning, diffiqa_labels_dir, diffiqa_split_folders, scan_diffiqa_folder
from ..pairing import diffiqa_triplets, filter_types
from ..problems import CheckReport
from ..schema import LABEL_TO_G, label_feature, pair_features, triplet_features
from .base import BUILDER_VERSION, AfineBuilder, AfineDataConfig, _warn, opt_str, require_data_dir, shards_of

_DESCRIPTIONS = {
    "images": "unlabelled (enhanced, reference) pairs: every enhanced image with its reference, no labels needed",
    "annotations": "raw annotations: one row per annotator and enhanced image",
    "pairs": "majority-labelled (enhanced, reference) pairs",
    "triplets": "training triplets (img1, img2, ref, g12, g1ref, g2ref)",
}
_DESCRIPTIONS.update({t: f"per-type subset {t}" for t in ALL_TYPES})


def scan_diffiqa(data_dir, report: CheckReport, require_labels: bool = True) -> dict:
    """``{split: DiffIQAScan}`` for every split folder of ``data_dir``."""
    return {
        split: scan_diffiqa_folder(folder, report, require_labels=require_labels)
        for split, folder in diffiqa_split_folders(data_dir).items()
    }


class DiffIQA(AfineBuilder):
    """DiffIQA builder; instantiate with ``data_dir=`` (see module doc for the configs)."""

    BUILDER_CONFIGS = [AfineDataConfig(name=n, version=datasets.Version(BUILDER_VERSION), description=d)
                       for n, d in _DESCRIPTIONS.items()]
    DEFAULT_CONFIG_NAME = "pairs"

    @classmethod
    def fingerprint_sources(cls, root: Path) -> tuple[list[Path], list[Path]]:
        folders = list(diffiqa_split_folders(root).values())
        # an unlabelled generator tree keeps 01..06/ and Original/ directly in the folder
        return ([diffiqa_labels_dir(f) for f in folders],
                [f / "images" if (f / "images").is_dir() else f for f in folders])

    def _info(self) -> datasets.DatasetInfo:
        name = self.config.name
        if name == "images":
            # the shared pair schema with `label`/`g` left empty: these pairs are not labelled yet
            features = pair_features({"variant": datasets.Value("string")})
        elif name == "annotations":
            features = pair_features({
                "variant": datasets.Value("string"),
                "annotator": datasets.Value("string"),
                "start": datasets.Value("string"),
                "end": datasets.Value("string"),
                "time_total": datasets.Value("float32"),
                "label_file": datasets.Value("string"),
            })
        elif name == "pairs":
            features = pair_features({
                "variant": datasets.Value("string"),
                "votes": datasets.List(label_feature()),
                "annotators": datasets.Sequence(datasets.Value("string")),
            })
        else:
            features = triplet_features()
        return datasets.DatasetInfo(description=f"DiffIQA: {_DESCRIPTIONS.get(name, name)}", features=features)

    def _split_generators(self, dl_manager):
        root = require_data_dir(self.config, "DiffIQA")
        report = CheckReport(str(root), "diffiqa")
        scans = scan_diffiqa(root, report, require_labels=self.config.name != "images")
        if self.config.name == "images":
            self.preflight(report, {"images"})
        else:
            # an annotator who did not label every pair does not stop the folder: warned about by name, and
            # left out of the majority views (see DiffIQAScan.panel)
            coverage = [p for p in report.problems if p.part == ANNOTATORS_PART]
            rest = CheckReport(report.root, report.dataset, [p for p in report.problems if p.part != ANNOTATORS_PART],
                               dict(report.stats))
            self.preflight(rest, {"images", "labels"})
            if coverage:
                msg = coverage_warning(report, scans, coverage, self.config.name)
                _warn(msg)
                self._side_warning = "\n".join(m for m in (self._side_warning, msg) if m)
        # shared out by reference: a reference's rows do not depend on the other references
        return [datasets.SplitGenerator(name=split, gen_kwargs={"scan": scan, "shards": shards_of(scan.references)})
                for split, scan in scans.items()]

    def _generate_examples(self, scan, shards):
        name = self.config.name
        refs = [r for chunk in shards for r in chunk]
        if name == "images":
            key = 0
            for ref in refs:
                refp = scan.reference_path(ref)
                for variant in scan.variants:
                    enh = scan.enhanced_path(ref, variant)
                    if enh is None:
                        continue
                    yield key, {
                        "group": ref,
                        "distorted": str(enh),
                        "reference": opt_str(refp),
                        "distorted_name": enh.name,
                        "reference_name": refp.name if refp else f"{ref}.png",
                        "label": None,
                        "g": None,
                        "variant": variant,
                    }
                    key += 1
            return
        if name == "annotations":
            key = 0
            for ref in refs:
                for variant in sorted(scan.labels.get(ref, {})):
                    for annot in sorted(scan.labels[ref][variant]):
                        lab = scan.labels[ref][variant][annot]
                        enh = scan.enhanced_path(ref, variant)
                        refp = scan.reference_path(ref)
                        yield key, {
                            "group": ref,
                            "distorted": opt_str(enh),
                            "reference": opt_str(refp),
                            "distorted_name": enh.name if enh else f"{ref}_{variant}.png",
                            "reference_name": refp.name if refp else f"{ref}.png",
                            "label": lab.label,
                            "g": LABEL_TO_G[lab.label],
                            "variant": variant,
                            "annotator": annot,
                            "start": lab.start,
                            "end": lab.end,
                            "time_total": lab.time_total,
                            "label_file": str(scan.label_files[(ref, variant, annot)]),
                        }
                        key += 1
            return
        pairs = _majority(scan, refs)
        if name == "pairs":
            for key, p in enumerate(pairs):
                variant = p.distorted_name.rsplit(".", 1)[0].rsplit("_", 1)[1]
                yield key, {
                    "group": p.group,
                    "distorted": str(scan.enhanced_path(p.group, variant)),
                    "reference": str(scan.reference_path(p.group)),
                    "distorted_name": p.distorted_name,
                    "reference_name": p.reference_name,
                    "label": p.label,
                    "g": p.g,
                    "variant": variant,
                    "votes": list(p.votes),
                    "annotators": [a for a in scan.panel if a in scan.labels[p.group][variant]],
                }
            return
        triplets = diffiqa_triplets(pairs)
        if name != "triplets":
            triplets = filter_types(triplets, [name])[name]
        for key, t in enumerate(triplets):
            yield key, _triplet_row(scan, t)


def _majority(scan, refs):
    panel = set(scan.panel)
    votes = {ref: {v: {a: lab.label for a, lab in by_a.items() if a in panel} for v, by_a in scan.labels[ref].items()}
             for ref in refs if ref in scan.labels}

    def enhanced_name(ref, variant):
        p = scan.enhanced_path(ref, variant)
        return p.name if p else f"{ref}_{variant}.png"

    def reference_name(ref):
        p = scan.reference_path(ref)
        return p.name if p else f"{ref}.png"

    return majority_pairs(votes, enhanced_name=enhanced_name, reference_name=reference_name)


def _image_path(scan, name: str) -> str:
    stem = name.rsplit(".", 1)[0]
    if "_" in stem:
        ref, variant = stem.rsplit("_", 1)
        p = scan.enhanced_path(ref, variant)
        if p is not None:
            return str(p)
    return str(scan.reference_path(stem))


def _triplet_row(scan, t) -> dict:
    return {
        "group": t.group,
        "img1": _image_path(scan, t.img1_name),
        "img2": _image_path(scan, t.img2_name),
        "ref": _image_path(scan, t.ref_name),
        "img1_name": t.img1_name,
        "img2_name": t.img2_name,
        "ref_name": t.ref_name,
        "g12": t.g12,
        "g1ref": t.g1ref,
        "g2ref": t.g2ref,
        "type": t.type or None,
    }
