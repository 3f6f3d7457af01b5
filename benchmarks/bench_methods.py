"""Benchmark: several methods against one ground-truth folder, against the same work done as independent pairs.

``afine score M1 ... MK GT`` decodes and encodes each ground truth once for all K methods: K + 1 backbone passes
per image instead of 2K, so about (K + 1) / 2K of the time from reference reuse alone (0.6 for K = 5). This script
generates K method folders and a ground-truth folder of N PNG images (SIZE x SIZE) and times, in one run and on
the same machine:

  methods       the folder run of ``afine score M1 ... MK GT`` / ``score_methods``: pairing, then every pair
                with each ground truth decoded and encoded once (the leaderboard statistics are timed apart)
  independent   the same K x N pairs through ``AfineScorer.iter_pairs`` with every pair's ground truth reached
                by a path of its own (a symlink per method), so nothing is shared: what scoring each pair on its
                own costs, batched as ``--pairs`` batches one-off pairs

for fp32 and bf16 (``--dtypes``), in ``--repeats`` interleaved rounds (the two rows alternate which goes first),
and prints per dtype the median time of each row and the median and range of the per-round ratio
methods / independent. Before timing, fp32 scores of the folder run are compared with the single-pair path
(``iter_pairs`` on one pair, what ``afine score D R`` runs) for ``--check`` pairs: they must be equal exactly.

The model is the full-size ViT-B/32 A-FINE with random weights unless ``--model`` gives converted weights (the
compute is the same). Run it on a quiet machine; on a shared one the ratios are meaningless.

    python benchmarks/bench_methods.py                          # 5 methods x 100 images at 512x512, fp32 and bf16
    python benchmarks/bench_methods.py --quick                  # tiny backbone and sizes: a smoke test (seconds)
    python benchmarks/bench_methods.py --device cuda --batch 32
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_big_image import build_model  # noqa: E402
from bench_folder import smooth_photo  # noqa: E402


def make_folders(root: Path, methods: int, images: int, size: int, seed: int = 0) -> tuple[list[Path], Path]:
    """``root/gt/img_NNNN.png`` and ``root/mK/img_NNNN.png`` (K noise levels); returns (method folders, gt)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    gt = root / "gt"
    folders = [root / f"m{k}" for k in range(methods)]
    for f in [gt, *folders]:
        f.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        ref = smooth_photo(rng, yy, xx)
        Image.fromarray(ref).save(gt / f"img_{i:04d}.png")
        for k, folder in enumerate(folders):
            out = (ref.astype(np.float32) + rng.normal(0, 3 + 4 * k, ref.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(out).save(folder / f"img_{i:04d}.png")
    return folders, gt


def independent_pairs(root: Path, folders: list[Path], gt: Path) -> list[tuple[str, str]]:
    """Every (output, ground truth) pair, the ground truth reached through a per-method symlink folder."""
    pairs = []
    for k, folder in enumerate(folders):
        link = root / f"gt_for_m{k}"
        link.mkdir(exist_ok=True)
        for out in sorted(folder.glob("*.png")):
            target = link / out.name
            if not target.exists():
                target.symlink_to(gt / out.name)
            pairs.append((str(out), str(target)))
    return pairs


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def time_methods(scorer, folders: list[Path], gt: Path) -> tuple[float, list[dict]]:
    """The folder run's scoring: pairing, then every pair with the ground truths shared (as ``afine score``)."""
    from modeling_afine.folder_pairing import pair_folders
    from modeling_afine.method_scores import pair_record, shared_references

    start = time.perf_counter()
    plan = pair_folders(folders, gt)
    pairs = [(p.distorted, p.reference) for p in plan.pairs]
    results = dict(scorer.iter_pairs(pairs, shared_references=shared_references([r for _, r in pairs])))
    sync(scorer.device)
    seconds = time.perf_counter() - start
    records = [pair_record(p.method, (p.distorted, p.reference), results[i], image=p.image) for i, p in enumerate(plan.pairs)]
    for rec in records:
        if "error" in rec:
            raise SystemExit(f"{rec['distorted']}: {rec['error']}")
    return seconds, records


def time_leaderboard(records: list[dict]) -> float:
    from modeling_afine.leaderboard import summarize

    summarize(records[:2])  # scipy.stats is imported on first use: not part of the statistics' cost
    start = time.perf_counter()
    summarize(records)
    return time.perf_counter() - start


def time_independent(scorer, pairs: list[tuple[str, str]]) -> float:
    start = time.perf_counter()
    for _, res in scorer.iter_pairs(pairs):
        if isinstance(res, Exception):
            raise res
    sync(scorer.device)
    return time.perf_counter() - start


def exactness(scorer, records: list[dict], check: int) -> dict:
    """Folder-run scores against the single-pair path (one pair per call) for the first ``check`` records."""
    fields = ("score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference")
    worst = 0.0
    unequal = 0
    for rec in records[:check]:
        ((_, one),) = list(scorer.iter_pairs([(rec["distorted"], rec["reference"])]))
        diffs = [abs(float(one[f]) - rec[f]) for f in fields]
        worst = max(worst, *diffs)
        unequal += any(d != 0.0 for d in diffs)
    return {"pairs_checked": min(check, len(records)), "pairs_not_equal": unequal, "max_abs_difference": worst}


def machine() -> dict:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", type=int, default=5, help="method folders (default 5)")
    ap.add_argument("--images", type=int, default=100, help="images per folder (default 100)")
    ap.add_argument("--size", type=int, default=512, help="image side (default 512)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=None, help="decoding threads (default: the scorer's default)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds per dtype (default 3)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16 (default fp32,bf16)")
    ap.add_argument("--check", type=int, default=25, help="pairs compared with the single-pair path in fp32 (default 25)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None, help="converted model dir (default: full-size random weights)")
    ap.add_argument("--quick", action="store_true", help="tiny backbone, 3 methods x 4 images at 64x64, 2 rounds: a smoke test")
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.methods, args.images, args.size, args.repeats = 3, 4, 64, 2
        args.check = min(args.check, args.methods * args.images)

    import torch

    from modeling_afine import AfineImageProcessor
    from modeling_afine.scoring import AfineScorer

    root = Path(tempfile.mkdtemp(prefix="afine-bench-methods-"))
    try:
        print(f"generating {args.methods} methods x {args.images} images at {args.size}x{args.size} in {root}", file=sys.stderr)
        folders, gt = make_folders(root, args.methods, args.images, args.size)
        pairs = independent_pairs(root, folders, gt)
        device = torch.device(args.device)
        results: dict = {"machine": machine(), "setup": {k: getattr(args, k) for k in ("methods", "images", "size", "batch", "repeats", "device", "quick")}}
        results["setup"]["model"] = args.model or ("random tiny" if args.quick else "random full-size ViT-B/32")
        results["expected_ratio"] = (args.methods + 1) / (2 * args.methods)
        for dtype in args.dtypes.split(","):
            model = build_model(args.model, dtype, tiny=args.quick).to(device)
            processor = AfineImageProcessor(
                image_mean=model.config.image_mean, image_std=model.config.image_std, size_multiple=model.config.size_multiple
            )
            scorer = AfineScorer(model, processor=processor, batch_size=args.batch, num_workers=args.workers)
            _, records = time_methods(scorer, folders, gt)  # warm-up, and the records to check
            row: dict = {}
            if dtype == "fp32":
                row["exact_vs_single_pair"] = exactness(scorer, records, args.check)
            time_independent(scorer, pairs[: 2 * args.batch])  # warm-up of the joint path
            methods_s, independent_s = [], []
            for r in range(args.repeats):
                order = ("methods", "independent") if r % 2 == 0 else ("independent", "methods")
                for name in order:
                    if name == "methods":
                        methods_s.append(time_methods(scorer, folders, gt)[0])
                    else:
                        independent_s.append(time_independent(scorer, pairs))
                print(f"  {dtype} round {r + 1}/{args.repeats}: methods {methods_s[-1]:.2f} s, independent {independent_s[-1]:.2f} s", file=sys.stderr)
            ratios = [m / i for m, i in zip(methods_s, independent_s)]
            row["leaderboard_s"] = time_leaderboard(records)
            row.update({
                "methods_s": methods_s,
                "independent_s": independent_s,
                "methods_median_s": statistics.median(methods_s),
                "independent_median_s": statistics.median(independent_s),
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
            })
            results[dtype] = row
            del scorer, model

        m = results["machine"]
        print(
            f"\n{args.methods} methods x {args.images} images at {args.size}x{args.size}, batch {args.batch}, {args.device}; "
            f"{m['date']}, {m['cpu']}, {m['cpus']} CPUs, torch {m['torch']} ({m['torch_threads']} threads); "
            f"model: {results['setup']['model']}"
        )
        print(f"  expected ratio from reference reuse alone: (K+1)/2K = {results['expected_ratio']:.2f}")
        for dtype in args.dtypes.split(","):
            row = results[dtype]
            print(
                f"  {dtype}: methods {row['methods_median_s']:.2f} s, independent pairs {row['independent_median_s']:.2f} s "
                f"(medians of {args.repeats}); ratio median {row['ratio_median']:.3f}, range {row['ratio_min']:.3f}-{row['ratio_max']:.3f}; "
                f"leaderboard statistics {row['leaderboard_s']:.2f} s"
            )
            if "exact_vs_single_pair" in row:
                ex = row["exact_vs_single_pair"]
                verdict = "equal exactly" if ex["pairs_not_equal"] == 0 else f"{ex['pairs_not_equal']} differ, max |diff| {ex['max_abs_difference']:.3g}"
                print(f"  {dtype}: scores against the single-pair path, {ex['pairs_checked']} pairs: {verdict}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
