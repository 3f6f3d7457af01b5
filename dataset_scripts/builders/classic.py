"""KADID-10k, PIPAL and TID2013 as ``datasets`` builders (spec section 3.2).

Layout: ``{root}/images/`` (distorted and reference images together) and
``{root}/{Train,Validation,Test}/MOS/{ref}.txt``; splits ``train``/``validation``/``test`` as present.

Configs:

* ``mos`` - MOS tables: ``image``, ``reference`` (named by the MOS file's second column, so ``.bmp``
  references stay ``.bmp``), ``mos`` (**higher = better**, the dataset's own scale), ``var`` (KADID only,
  else None). TID2013 names are lower-cased and images are found case-insensitively.
* ``triplets`` - the "nlogn" triplets regenerated deterministically from the MOS files with
  ``seed`` (config argument, default 0).
* ``triplets_shipped`` - the authors' ``{Split}/Triplet/Triplet.txt`` files where present.
"""

from __future__ import annotations

from pathlib import Path

import datasets

from ..layouts import SPLIT_FOLDERS, read_shipped_triplets, scan_classic
from ..pairing import nlogn_triplets
from ..problems import CheckReport
from ..schema import mos_features, triplet_features
from .base import BUILDER_VERSION, AfineBuilder, AfineDataConfig, require_data_dir, shards_of

_CONFIGS = {
    "mos": "MOS tables per split",
    "triplets": "nlogn triplets regenerated from the MOS files (seeded)",
    "triplets_shipped": "the shipped Triplet/Triplet.txt files",
}


class _ClassicIQA(AfineBuilder):
    DATASET = ""
    BUILDER_CONFIGS = [AfineDataConfig(name=n, version=datasets.Version(BUILDER_VERSION), description=d)
                       for n, d in _CONFIGS.items()]
    DEFAULT_CONFIG_NAME = "mos"

    @classmethod
    def fingerprint_sources(cls, root: Path) -> tuple[list[Path], list[Path]]:
        return [root / s for s in SPLIT_FOLDERS], [root / "images"]

    def _info(self) -> datasets.DatasetInfo:
        if self.config.name == "mos":
            features = mos_features({"var": datasets.Value("float32")})
        else:
            features = triplet_features()
        return datasets.DatasetInfo(description=f"{self.DATASET}: {_CONFIGS.get(self.config.name)}", features=features)

    def _split_generators(self, dl_manager):
        root = require_data_dir(self.config, self.DATASET)
        report = CheckReport(str(root), self.DATASET)
        scan = scan_classic(root, self.DATASET, report)
        shipped = {}
        if self.config.name == "triplets_shipped":
            for split, path in scan.triplet_files.items():
                shipped[split] = read_shipped_triplets(path, scan, report)
            if not scan.triplet_files:
                report.add("layout", root, "no {Train,Validation,Test}/Triplet/Triplet.txt found (config 'triplets_shipped')")
        self.preflight(report)
        splits = shipped.keys() if self.config.name == "triplets_shipped" else scan.records.keys()
        out = []
        for s in splits:
            if s in shipped:  # the authors' file, shared out by row ranges
                n = len(shipped[s])
                shards = [(a[0], a[-1] + 1) for a in shards_of(list(range(n)))]
            else:  # by group: a group's rows (and seeded triplets) do not depend on other groups
                shards = shards_of(list(dict.fromkeys(r.group for r in scan.records[s])))
            out.append(datasets.SplitGenerator(name=s, gen_kwargs={"scan": scan, "split": s, "shipped": shipped.get(s),
                                                                   "shards": shards}))
        return out

    def _generate_examples(self, scan, split, shipped, shards):
        if shipped is None:
            chunk = {g for c in shards for g in c}
            records = [r for r in scan.records[split] if r.group in chunk]
        if self.config.name == "mos":
            for key, r in enumerate(records):
                yield key, {
                    "group": r.group,
                    "image": str(scan.path(r.image_name)),
                    "reference": str(scan.path(r.reference_name)),
                    "image_name": r.image_name,
                    "reference_name": r.reference_name,
                    "mos": r.mos,
                    "var": r.extra.get("var"),
                }
            return
        if shipped is not None:
            trips = [t for a, b in shards for t in shipped[a:b]]
        else:
            trips = nlogn_triplets(records, seed=self.config.seed)
        for key, t in enumerate(trips):
            yield key, {
                "group": t.group,
                "img1": str(scan.path(t.img1_name)),
                "img2": str(scan.path(t.img2_name)),
                "ref": str(scan.path(t.ref_name)),
                "img1_name": t.img1_name,
                "img2_name": t.img2_name,
                "ref_name": t.ref_name,
                "g12": t.g12,
                "g1ref": t.g1ref,
                "g2ref": t.g2ref,
                "type": t.type or None,
            }


class KADID10k(_ClassicIQA):
    """KADID-10k (MOS lines ``dist,ref,MOS,var``; references ``.png``)."""

    DATASET = "kadid10k"


class PIPAL(_ClassicIQA):
    """PIPAL (MOS lines ``dist,ref,MOS`` with Elo-scale MOS; references ``.bmp``)."""

    DATASET = "pipal"


class TID2013(_ClassicIQA):
    """TID2013 (MOS lines ``dist,ref,MOS``; names lower-cased; references ``.bmp``)."""

    DATASET = "tid2013"
