"""Factories that write tiny synthetic copies of the official dataset layouts into tmp folders.

Nothing here is committed as binary: every PNG/BMP and label file is generated at test time. The
factories return the ground truth they wrote (labels, latent scores, MOS) so that tests can compute
expected results independently of the package.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

LABELS = ("Positive", "Similar", "Negative")


def write_image(path: Path, size=(16, 12), seed: int = 0, fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr, "RGB").save(path, format=fmt)


def _json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4), encoding="utf-8")


# ---------------------------------------------------------------------------------------------- DiffIQA

#: Default DiffIQA votes: {split: {ref: {variant: (A, B, C)}}}, covering ties (2-1 majorities), three-way
#: disagreements, all-Similar groups and P-P / N-N pairs.
P, S, N = "Positive", "Similar", "Negative"
DIFFIQA_VOTES = {
    "Train": {
        "000001x0y0": {"01": (P, P, S), "02": (S, S, N), "03": (N, N, N), "04": (P, S, N), "05": (P, P, P), "06": (S, N, N)},
        "000002x32y0": {"01": (S, S, S), "02": (S, P, S), "03": (N, S, P), "04": (N, N, S), "05": (P, N, P), "06": (S, S, N)},
        "000003x0y64": {"01": (P, P, P), "02": (P, N, P), "03": (N, N, P), "04": (N, N, N), "05": (S, S, P), "06": (P, S, N)},
    },
    "Validation": {
        "000004x64y64": {"01": (P, S, S), "02": (P, P, N), "03": (N, S, N), "04": (S, S, S), "05": (P, S, N), "06": (N, P, N)},
    },
    "Test": {
        "000005x0y32": {"01": (P, P, N), "02": (S, S, P), "03": (N, N, S), "04": (P, S, N), "05": (S, P, S), "06": (N, N, N)},
        "000006x32y32": {"01": (N, S, N), "02": (P, P, P), "03": (S, S, S), "04": (P, N, N), "05": (S, N, P), "06": (P, S, P)},
    },
}


def make_diffiqa(root: Path, votes=None, *, split_folders: bool = True, size=(16, 16)) -> dict:
    """Write a DiffIQA layout; returns the votes used."""
    votes = DIFFIQA_VOTES if votes is None else votes
    seed = 0
    for split, groups in votes.items():
        base = root / split if split_folders else root
        for ref, by_variant in groups.items():
            seed += 1
            write_image(base / "images" / "Original" / f"{ref}.png", size, seed)
            for variant, labs in by_variant.items():
                seed += 1
                write_image(base / "images" / variant / f"{ref}_{variant}.png", size, seed)
                for annot, lab in zip("ABC", labs):
                    _json(base / "labels" / annot / variant / f"{ref}_{variant}.json", {
                        "Picture_AI": {"Name": f"{ref}_{variant}.png", "File": variant, "ImageSize": [], "Label": lab},
                        "picture_Original": {"Name": f"{ref}.png", "File": "Original", "ImageSize": [], "Label": None},
                        "Time_cost": {"Start": "2024-05-08 19:34:49", "End": "2024-05-08 19:34:50", "Total": 1.5 + seed % 3},
                    })
    return votes


# ---------------------------------------------------------------------------------------------- SRIQA-Bench

SRIQA_METHODS = ("SwinIR", "RealESRNet", "BSRGAN", "SeeSR")  # two regression, two generative


def make_sriqa(root: Path, *, groups=("online1", "realworld2", "srtest3"), methods=SRIQA_METHODS,
               annotators="ABCDE", folder_style: str = "method", size=(16, 16), seed: int = 0,
               noise: float = 0.6) -> dict:
    """Write a SRIQA-Bench layout. Latent qualities are random except that in the second group an SR
    output beats the Original. Labels are simulated from the latents (Thurstone, with ties when the noisy
    difference is small). MOS files are min-max scaled latents (0-100, higher = better), sorted descending.
    Returns ``{"latent": {group: {name: value}}, "labels": [(annot, group, n1, n2, l1, l2)]}``."""
    rng = np.random.default_rng(seed)
    latent = {}
    img_seed = 100
    for gi, g in enumerate(groups):
        names = [f"{g}_Original.png"] + [f"{g}_{m}x4.png" for m in methods]
        vals = rng.normal(size=len(names))
        vals[0] = vals.max() + 0.5  # Original best ...
        if gi == 1:
            vals[-1] = vals[0] + 0.7  # ... except here an SR output (SeeSR) beats it
        latent[g] = dict(zip(names, vals))
        for name in names:
            token = name[len(g) + 1 : -4]
            method = "Original" if token == "Original" else token[:-2]
            folder = method if folder_style == "method" else token
            img_seed += 1
            write_image(root / "images" / folder / name, size, img_seed)
        write_image(root / "LRImages" / f"{g}_Original.png", (size[0] // 4, size[1] // 4), img_seed)
    labels = []
    for g in groups:
        names = list(latent[g])
        for a in annotators:
            pairs = list(itertools.combinations(names, 2))
            for k, (n1, n2) in enumerate(pairs):
                if k % 2:
                    n1, n2 = n2, n1  # display order varies
                d = latent[g][n1] - latent[g][n2] + rng.normal() * noise
                l1, l2 = (P, N) if d > 0.25 else (N, P) if d < -0.25 else (S, S)
                m1, m2 = n1[len(g) + 1 : -4], n2[len(g) + 1 : -4]
                _json(root / "labels" / a / g / f"{g}_{m1}_{m2}.json", {
                    "Picture_01": {"Name": n1, "Label": l1},
                    "Picture_02": {"Name": n2, "Label": l2},
                    "Time_cost": {"Start": "2024-10-01 10:00:00", "End": "2024-10-01 10:00:03", "Total": 3.0},
                })
                labels.append((a, g, n1, n2, l1, l2))
    for folder, keep in (("MOS", None), ("MOS_Reg", ("Original", "SwinIR", "RealESRNet")),
                         ("MOS_Gen", ("Original",) + tuple(m for m in methods if m not in ("SwinIR", "RealESRNet")))):
        for g in groups:
            vals = latent[g]
            lo, hi = min(vals.values()), max(vals.values())
            rows = []
            for name, v in vals.items():
                token = name[len(g) + 1 : -4]
                method = "Original" if token == "Original" else token[:-2]
                if keep is None or method in keep:
                    rows.append((name, 100 * (v - lo) / (hi - lo)))
            rows.sort(key=lambda t: t[1], reverse=True)
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / folder / f"{g}.txt").write_text("".join(f"{n},{s}\n" for n, s in rows))
    return {"latent": latent, "labels": labels}


# ---------------------------------------------------------------------------------------------- classic

def make_classic(root: Path, dataset: str, *, refs_per_split=(("Train", 3), ("Validation", 1), ("Test", 1)),
                 n_dist: int = 6, size=(16, 12), seed: int = 0) -> dict:
    """Write a KADID-10k / PIPAL / TID2013 layout: flat ``images/`` and ``{Split}/MOS/{ref}.txt``.

    KADID: ``I01.png`` references, lines ``dist,ref,MOS,var`` (MOS with ties). PIPAL: ``A0001.bmp``
    references, Elo-like MOS. TID2013: ``.bmp`` files with UPPER-CASE names on disk and in some MOS lines.
    Returns ``{split: {ref_stem: [(dist, ref, mos, var)]}}`` with names as written in the MOS files.
    """
    rng = random.Random(seed)
    out: dict = {}
    k = 0
    img_seed = 1000
    for split, n_refs in refs_per_split:
        out[split] = {}
        for _ in range(n_refs):
            k += 1
            if dataset == "kadid10k":
                stem, ext = f"I{k:02d}", ".png"
                dists = [f"{stem}_{d:02d}_01{ext}" for d in range(1, n_dist + 1)]
            elif dataset == "pipal":
                stem, ext = f"A{k:04d}", ".bmp"
                dists = [f"{stem}_00_{d:02d}{ext}" for d in range(n_dist)]
            else:
                stem, ext = f"i{k:02d}", ".bmp"
                dists = [f"{stem}_{d:02d}_1{ext}" for d in range(1, n_dist + 1)]
            ref = stem + ext
            disk = (lambda n: n.upper()) if dataset == "tid2013" else (lambda n: n)
            img_seed += 1
            write_image(root / "images" / disk(ref), size, img_seed, fmt="BMP" if ext == ".bmp" else "PNG")
            rows = []
            for j, d in enumerate(dists):
                img_seed += 1
                write_image(root / "images" / disk(d), size, img_seed, fmt="BMP" if ext == ".bmp" else "PNG")
                if dataset == "kadid10k":
                    mos = [4.33, 3.1, 3.1, 2.0, 1.25, 4.33, 2.5, 1.0][j % 8]  # ties on purpose
                    rows.append((d, ref, mos, round(rng.uniform(0.1, 1.0), 3)))
                elif dataset == "pipal":
                    rows.append((d, ref, round(rng.uniform(1000, 1800), 4), None))
                else:
                    name = d.upper() if j == 0 else d  # one upper-case line
                    rows.append((name, ref.upper() if j == 0 else ref, round(rng.uniform(0.5, 7.0), 5), None))
            mos_dir = root / split / "MOS"
            mos_dir.mkdir(parents=True, exist_ok=True)
            (mos_dir / f"{stem}.txt").write_text("".join(
                f"{d},{r},{m}" + (f",{v}" if v is not None else "") + "\n" for d, r, m, v in rows))
            out[split][stem] = rows
    return out


@pytest.fixture(scope="session")
def diffiqa_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("DiffIQA")
    make_diffiqa(root)
    return root


@pytest.fixture(scope="session")
def sriqa_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("SRIQA-Bench")
    truth = make_sriqa(root)
    return root, truth


@pytest.fixture(scope="session")
def classic_roots(tmp_path_factory):
    out = {}
    for ds in ("kadid10k", "pipal", "tid2013"):
        root = tmp_path_factory.mktemp(ds)
        out[ds] = (root, make_classic(root, ds))
    return out


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf_cache")


@pytest.fixture
def factories():
    """The layout factories, for tests that build their own variants."""
    return {"diffiqa": make_diffiqa, "sriqa": make_sriqa, "classic": make_classic, "image": write_image, "json": _json}
