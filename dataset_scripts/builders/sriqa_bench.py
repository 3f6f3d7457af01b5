"""SRIQA-Bench as a ``datasets`` builder (spec sections 3.3, 3.4 and 7). One split: ``test``.

Configs:

* ``MOS``, ``MOS_Reg``, ``MOS_Gen`` - MOS tables read from the folder of the same name: ``image``,
  ``reference`` (the group's Original), ``mos`` (0-100, **higher = better**), ``method`` (e.g. ``SwinIR``),
  ``method_token`` (``SwinIRx4``), ``category`` (original / regression / generative), ``is_reference``.
* ``pairs``, ``pairs_Reg``, ``pairs_Gen`` - the evaluation pairs: every C(n, 2) pair of each MOS file in
  file order, ``g12`` = 1 / 0 / 0.5 as MOS1 >, <, = MOS2, reference = the Original (also when img1 or img2
  is the Original); ``g1ref``/``g2ref`` compare with the Original's MOS.
* ``annotations`` - raw judgements: ``annotator`` (A-J), ``img1``/``img2`` with ``label1``/``label2``,
  ``g12`` (1 / 0 / 0.5 from the labels), timing (``start``, ``end``, ``time_total``) and ``label_file``.
"""

from __future__ import annotations

from pathlib import Path

import datasets

from ..labels import compare_labels
from ..layouts import MOS_FOLDERS, SRIQA_CATEGORIES as CATEGORIES, scan_sriqa, sriqa_category, sriqa_method
from ..pairing import all_pairs
from ..problems import CheckReport
from ..schema import label_feature, mos_features, triplet_features
from .base import BUILDER_VERSION, AfineBuilder, AfineDataConfig, require_data_dir, shards_of

_CONFIGS = {
    "MOS": "MOS table of all methods (MOS/)",
    "MOS_Reg": "MOS table of the regression methods (MOS_Reg/)",
    "MOS_Gen": "MOS table of the generative methods (MOS_Gen/)",
    "pairs": "evaluation pairs of MOS/",
    "pairs_Reg": "evaluation pairs of MOS_Reg/",
    "pairs_Gen": "evaluation pairs of MOS_Gen/",
    "annotations": "raw paired-comparison annotations",
}
_PAIRS_FOLDER = {"pairs": "MOS", "pairs_Reg": "MOS_Reg", "pairs_Gen": "MOS_Gen"}


def _needed_parts(name: str) -> set[str]:
    """Parts of the folder a view reads: ``images`` always, plus its MOS folder(s) or ``labels``."""
    if name in MOS_FOLDERS:
        return {"images", name}
    if name in _PAIRS_FOLDER:
        # the Original's MOS comes from MOS/ when the subset file does not list it
        return {"images", _PAIRS_FOLDER[name], "MOS"}
    return {"images", "labels"}


class SRIQABench(AfineBuilder):
    """SRIQA-Bench builder; instantiate with ``data_dir=`` (see module doc for the configs)."""

    BUILDER_CONFIGS = [AfineDataConfig(name=n, version=datasets.Version(BUILDER_VERSION), description=d)
                       for n, d in _CONFIGS.items()]
    DEFAULT_CONFIG_NAME = "MOS"

    @classmethod
    def fingerprint_sources(cls, root: Path) -> tuple[list[Path], list[Path]]:
        return [root / "labels", root / "MOS", root / "MOS_Reg", root / "MOS_Gen"], [root / "images"]

    def _info(self) -> datasets.DatasetInfo:
        name = self.config.name
        s = datasets.Value("string")
        if name in MOS_FOLDERS:
            features = mos_features({"method": s, "method_token": s, "category": datasets.ClassLabel(names=list(CATEGORIES)),
                                     "is_reference": datasets.Value("bool")})
        elif name in _PAIRS_FOLDER:
            features = triplet_features({"method1": s, "method2": s})
        else:
            features = triplet_features({
                "annotator": s, "label1": label_feature(), "label2": label_feature(), "start": s, "end": s,
                "time_total": datasets.Value("float32"), "label_file": s,
            })
        return datasets.DatasetInfo(description=f"SRIQA-Bench: {_CONFIGS.get(name, name)}", features=features)

    def _split_generators(self, dl_manager):
        root = require_data_dir(self.config, "SRIQA-Bench")
        report = CheckReport(str(root), "sriqa_bench")
        scan = scan_sriqa(root, report)
        name = self.config.name
        folder = name if name in MOS_FOLDERS else _PAIRS_FOLDER.get(name)
        if folder is not None and folder not in scan.mos:
            report.add("layout", root / folder, f"folder needed by config {name!r} not found")
        if name == "annotations" and not scan.annotators:
            report.add("layout", root / "labels", "folder needed by config 'annotations' not found")
        self.preflight(report, _needed_parts(name))
        if folder is not None:
            shards = shards_of(list(scan.mos[folder]))  # by group
        else:
            shards = [(a[0], a[-1] + 1) for a in shards_of(list(range(len(scan.labels))))]
        return [datasets.SplitGenerator(name="test", gen_kwargs={"scan": scan, "shards": shards})]

    def _generate_examples(self, scan, shards):
        name = self.config.name
        if name in MOS_FOLDERS:
            key = 0
            for group in (g for chunk in shards for g in chunk):
                rows = scan.mos[name][group]
                ref = scan.reference_name(group)
                for img, mos in rows:
                    _, token, method = sriqa_method(img)
                    yield key, {
                        "group": group,
                        "image": str(scan.images[img]),
                        "reference": str(scan.images[ref]),
                        "image_name": img,
                        "reference_name": ref,
                        "mos": mos,
                        "method": method,
                        "method_token": token,
                        "category": sriqa_category(method),
                        "is_reference": method == "Original",
                    }
                    key += 1
        elif name in _PAIRS_FOLDER:
            folder = _PAIRS_FOLDER[name]
            key = 0
            for group in (g for chunk in shards for g in chunk):
                rows = scan.mos[folder][group]
                ref = scan.reference_name(group)
                ref_mos = dict(rows).get(ref)
                if ref_mos is None:
                    ref_mos = dict(scan.mos.get("MOS", {}).get(group, [])).get(ref)
                for t in all_pairs(rows, group=group, ref_name=ref, ref_score=ref_mos):
                    yield key, {
                        "group": group,
                        "img1": str(scan.images[t.img1_name]),
                        "img2": str(scan.images[t.img2_name]),
                        "ref": str(scan.images[ref]),
                        "img1_name": t.img1_name,
                        "img2_name": t.img2_name,
                        "ref_name": ref,
                        "g12": t.g12,
                        "g1ref": t.g1ref,
                        "g2ref": t.g2ref,
                        "type": None,
                        "method1": sriqa_method(t.img1_name)[2],
                        "method2": sriqa_method(t.img2_name)[2],
                    }
                    key += 1
        else:
            for key, (annot, group, path, lab) in enumerate(x for a, b in shards for x in scan.labels[a:b]):
                ref = scan.reference_name(group)
                yield key, {
                    "group": group,
                    "img1": str(scan.images[lab.name1]),
                    "img2": str(scan.images[lab.name2]),
                    "ref": str(scan.images[ref]),
                    "img1_name": lab.name1,
                    "img2_name": lab.name2,
                    "ref_name": ref,
                    "g12": compare_labels(lab.label1, lab.label2),
                    "g1ref": None,
                    "g2ref": None,
                    "type": None,
                    "annotator": annot,
                    "label1": lab.label1,
                    "label2": lab.label2,
                    "start": lab.start,
                    "end": lab.end,
                    "time_total": lab.time_total,
                    "label_file": str(path),
                }
