"""How far bf16 (and fp16) scores drift from fp32 on real photographs.

    python benchmarks/bf16_deviation.py [--model DIR] [--size 256] [--device cpu|cuda] [--dtypes bf16 fp16]
                                        [--out bf16_deviation.json]

Pairs: every real photograph available offline (scikit-image's sample photos plus ``examples/reference.png``),
centre-cropped to ``--size`` squared, each degraded with Gaussian blur, Gaussian noise and JPEG at three strengths
(9 distorted images per reference), plus the shipped ``examples/`` pair. Every pair is scored with the fp32
model and with the backbone in bf16 (heads fp32, as ``load_afine(dtype="bfloat16")``), reusing each reference's
encoding. Reported: max and mean |score_bf16 - score_fp32| (0-100 scale) and how many orderings flip among
pairs of pairs whose fp32 scores differ by more than ``--margin`` (0.1): over all pairs, and within each
reference's 9 distortions.

Without ``--model`` the weights are random (a full-size ViT-B/32 with random init): the deviation is then only
indicative of the arithmetic, not of the released model's behaviour. Pass a converted checkpoint for real numbers.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_big_image import build_model  # noqa: E402

#: scikit-image samples that are photographs and ship with the package (no download needed).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field", "immunohistochemistry",
          "camera", "coins", "moon", "brick", "grass", "gravel", "page")

DEGRADATIONS = {
    "blur": (0.8, 1.6, 3.2),  # Gaussian blur radius (px)
    "noise": (4.0, 12.0, 30.0),  # Gaussian noise sigma (8-bit levels)
    "jpeg": (60, 25, 8),  # JPEG quality
}


def load_photos(size: int) -> dict[str, Image.Image]:
    """Real photographs as RGB PIL images, centre-cropped (after a shrink if needed) to ``size`` x ``size``."""
    import skimage.data

    photos = {}
    for name in PHOTOS:
        try:
            arr = getattr(skimage.data, name)()
        except Exception:  # a sample that needs a download: skip it offline
            continue
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        photos[name] = _square(Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8)), size)
    example = ROOT / "examples" / "reference.png"
    if example.exists():
        photos["examples_reference"] = _square(Image.open(example).convert("RGB"), size)
    return photos


def _square(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    short = min(w, h)
    if short < size:
        img = img.resize((max(size, round(w * size / short)), max(size, round(h * size / short))), Image.BICUBIC)
        w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def degrade(img: Image.Image, kind: str, strength: float, seed: int) -> Image.Image:
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(strength))
    if kind == "noise":
        arr = np.asarray(img).astype(np.float64)
        arr += np.random.default_rng(seed).normal(0.0, strength, arr.shape)
        return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))
    if kind == "jpeg":
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(strength))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    raise ValueError(f"unknown degradation {kind!r}")


def build_pairs(size: int) -> list[tuple[str, Image.Image, list[tuple[str, Image.Image]]]]:
    """(reference name, reference, [(distortion name, distorted image), ...]) groups."""
    groups = []
    for i, (name, ref) in enumerate(load_photos(size).items()):
        dis = [(f"{kind}{strength:g}", degrade(ref, kind, s, seed=i * 10 + j))
               for kind, values in DEGRADATIONS.items() for j, s in enumerate(values) for strength in [s]]
        groups.append((name, ref, dis))
    ex_ref, ex_dis = ROOT / "examples" / "reference.png", ROOT / "examples" / "distorted.png"
    if ex_ref.exists() and ex_dis.exists():
        groups.append(("examples_pair", Image.open(ex_ref).convert("RGB"), [("examples", Image.open(ex_dis).convert("RGB"))]))
    return groups


def score_groups(model, processor, groups, device: torch.device) -> list[float]:
    scores: list[float] = []
    with torch.inference_mode():
        for _, ref, dis in groups:
            inputs = processor([d for _, d in dis], ref)
            enc = model.encode_reference(inputs["reference"].to(device))
            scores += model(inputs["distorted"].to(device), reference_encoding=enc).score.float().cpu().tolist()
    return scores


def orderings(base: list[float], other: list[float], margin: float, groups_of: list[int]) -> dict:
    """Flips of sign(b_i - b_j) among index pairs with |b_i - b_j| > margin: overall and within a reference."""
    out = {}
    for scope in ("all", "within_reference"):
        considered = flipped = 0
        for i, j in itertools.combinations(range(len(base)), 2):
            if scope == "within_reference" and groups_of[i] != groups_of[j]:
                continue
            diff = base[i] - base[j]
            if abs(diff) <= margin:
                continue
            considered += 1
            flipped += (other[i] - other[j]) * diff <= 0
        out[scope] = {"pairs_considered": considered, "flipped": flipped}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="converted A-FINE folder (default: random full-size weights)")
    ap.add_argument("--size", type=int, default=256, help="square crop side of every photograph")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", nargs="+", default=["bf16"], choices=("bf16", "fp16"))
    ap.add_argument("--margin", type=float, default=0.1, help="only orderings whose fp32 gap exceeds this count")
    ap.add_argument("--tiny", action="store_true", help="tiny random backbone (smoke test of this script)")
    ap.add_argument("--max-references", type=int, default=0, help="use only the first N photographs (0: all)")
    ap.add_argument("--out", default="bf16_deviation.json")
    args = ap.parse_args(argv)

    from modeling_afine import AfineImageProcessor

    device = torch.device(args.device)
    processor = AfineImageProcessor.from_pretrained(args.model) if args.model else AfineImageProcessor()
    groups = build_pairs(args.size)
    if args.max_references:
        groups = groups[: args.max_references]
    groups_of = [g for g, (_, _, dis) in enumerate(groups) for _ in dis]
    names = [f"{name}/{d}" for name, _, dis in groups for d, _ in dis]
    base = score_groups(build_model(args.model, "fp32", args.tiny).to(device), processor, groups, device)
    report = {
        "weights": args.model or "random (indicative only)",
        "device": str(device),
        "pairs": len(base),
        "references": len(groups),
        "size": args.size,
        "margin": args.margin,
        "fp32_score_range": [min(base), max(base)],
        "by_dtype": {},
    }
    for dtype in args.dtypes:
        other = score_groups(build_model(args.model, dtype, args.tiny).to(device), processor, groups, device)
        delta = [abs(a - b) for a, b in zip(other, base)]
        worst = int(np.argmax(delta))
        report["by_dtype"][dtype] = {
            "max_abs_dscore": max(delta),
            "mean_abs_dscore": float(np.mean(delta)),
            "worst_pair": names[worst],
            "orderings": orderings(base, other, args.margin, groups_of),
        }
    print(f"{report['pairs']} pairs from {report['references']} references at {args.size}x{args.size}, weights: {report['weights']}")
    for dtype, r in report["by_dtype"].items():
        o = r["orderings"]
        print(f"{dtype}: max |dscore| {r['max_abs_dscore']:.4f} (worst {r['worst_pair']}), mean {r['mean_abs_dscore']:.4f}; "
              f"flips with fp32 gap > {args.margin}: {o['all']['flipped']}/{o['all']['pairs_considered']} overall, "
              f"{o['within_reference']['flipped']}/{o['within_reference']['pairs_considered']} within a reference")
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
