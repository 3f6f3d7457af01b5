"""Benchmark: folder-scale scoring (`afine score --pairs`) against the pure-model time, as ratios.

Generates N PNG pairs (smooth synthetic photos-like images, SIZE x SIZE) in a temporary folder, then measures
in one run on the same machine:

  pure model     the forward passes alone, on tensors already in memory, with the same batching as the
                 scorer (one backbone pass over distorted + reference per batch of one-off pairs; a shared
                 reference encoded once, then its distorted images in batches)
  scorer, 0 thr  AfineScorer.iter_pairs over the files, decoding in the calling thread (no overlap)
  scorer, N thr  the same with N background decoding threads (what `afine score` uses)
  CLI            `afine score --pairs CSV --output JSONL -q` in a fresh process: wall time, and wall time minus
                 the start-up + model loading of a one-pair run (the scoring part)
  afine --help   start-up of the command line in a fresh process (it imports neither torch nor transformers)

The pairs are split into ``--rounds`` chunks (whole reference groups); each round runs the pure model and both
scorer rows on its chunk, one after the other, and the rows' times are summed over the rounds. A machine whose
speed drifts during the run then moves all three rows alike; the range of the per-round ratios is printed. The
CLI runs once over all pairs afterwards and is compared with the summed pure-model time.

Every time is also given as a ratio to the pure-model time (1.00 = decoding and I/O fully hidden). The
model is the full-size ViT-B/32 A-FINE with random weights unless --model gives converted weights (the
compute is the same). Run it on a quiet machine; on a shared one the ratios are meaningless.

    python benchmarks/bench_folder.py                       # 1000 pairs at 512x512, batch 8
    python benchmarks/bench_folder.py --n 64 --size 256     # a quick smoke run
    python benchmarks/bench_folder.py --per-reference 10    # 100 references x 10 distorted each
    python benchmarks/bench_folder.py --device cuda --dtype bfloat16 --batch 32
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def smooth_photo(rng, yy, xx):
    """A photo-like 8-bit reference ``H x W x 3``: three random sinusoids plus mild noise (``yy``/``xx``: the
    ``np.mgrid`` of the size, scaled to [0, 1))."""
    f = rng.uniform(1, 6, size=(3, 2))
    phase = rng.uniform(0, 6.28, size=3)
    ref = np.stack([np.sin(f[c, 0] * 6.28 * xx + f[c, 1] * 6.28 * yy + phase[c]) for c in range(3)], axis=-1)
    return (ref * 90 + 128 + rng.normal(0, 6, ref.shape)).clip(0, 255).astype(np.uint8)


def make_images(folder: Path, n: int, size: int, per_reference: int, seed: int = 0) -> Path:
    """N pairs as PNG files; every ``per_reference`` distorted images share one reference. Returns the CSV."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rows = ["distorted,reference"]
    n_refs = math.ceil(n / per_reference)
    done = 0
    for r in range(n_refs):
        ref = smooth_photo(rng, yy, xx)
        Image.fromarray(ref).save(folder / f"ref{r:05d}.png")
        for k in range(min(per_reference, n - done)):
            dis = (ref.astype(np.float32) + rng.normal(0, 4 + 3 * k, ref.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(dis).save(folder / f"dis{r:05d}_{k:03d}.png")
            rows.append(f"dis{r:05d}_{k:03d}.png,ref{r:05d}.png")
            done += 1
        if (r + 1) % 100 == 0:
            print(f"  generated {done}/{n} pairs", file=sys.stderr)
    csv = folder / "pairs.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def pure_model_seconds(scorer, n: int, per_reference: int, size: int) -> float:
    """The scorer's forward passes for this job, on in-memory tensors (content does not change the cost)."""
    import torch

    from modeling_afine.modeling_afine import stretch_to_multiple, target_size

    model, device, b = scorer.model, scorer.device, scorer.batch_size
    target = target_size(size, size, scorer.processor.size_multiple)
    gen = torch.Generator().manual_seed(0)
    batch = stretch_to_multiple(torch.randn(b, 3, size, size, generator=gen), size=target).to(device)
    refs = stretch_to_multiple(torch.randn(b, 3, size, size, generator=gen), size=target).to(device)
    start = time.perf_counter()
    with scorer._inference():
        if per_reference == 1:  # one-off pairs: one backbone pass over distorted + reference per batch
            left = n
            while left > 0:
                k = min(b, left)
                model(distorted=batch[:k], reference=refs[:k])
                left -= k
        else:
            left = n
            while left > 0:
                group = min(per_reference, left)
                enc = model.encode_reference(refs[:1])
                enc.image_size = tuple(target)
                for s in range(0, group, b):
                    model(distorted=batch[: min(b, group - s)], reference_encoding=enc)
                left -= group
    sync(device)
    return time.perf_counter() - start


def read_pairs(csv: Path) -> list[tuple[str, str]]:
    rows = [line.split(",") for line in csv.read_text().splitlines()[1:]]
    return [(str(csv.parent / d), str(csv.parent / r)) for d, r in rows]


def rounds_of(pairs: list, per_reference: int, rounds: int) -> list[list]:
    """``pairs`` in ``rounds`` contiguous chunks of whole reference groups (sizes differ by at most one group)."""
    groups = [pairs[i : i + per_reference] for i in range(0, len(pairs), per_reference)]
    rounds = max(1, min(rounds, len(groups)))
    bounds = [round(k * len(groups) / rounds) for k in range(rounds + 1)]
    return [[p for g in groups[bounds[k] : bounds[k + 1]] for p in g] for k in range(rounds)]


def scorer_seconds(scorer, pairs: list[tuple[str, str]], workers: int) -> float:
    counts: dict[str, int] = {}
    for _, r in pairs:
        counts[r] = counts.get(r, 0) + 1
    scorer.num_workers = workers
    start = time.perf_counter()
    for _, result in scorer.iter_pairs(pairs, shared_references={r for r, c in counts.items() if c > 1}):
        if isinstance(result, Exception):
            raise result
    sync(scorer.device)
    return time.perf_counter() - start


def cli_seconds(csv: Path, model_dir: str, args, out: Path) -> float:
    cmd = [sys.executable, "-m", "modeling_afine", "score", "--pairs", str(csv), "--output", str(out), "--model", model_dir,
           "-q", "--batch-size", str(args.batch), "--device", args.device, "--dtype", args.dtype]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"afine score failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return seconds


def help_seconds(repeats: int = 5) -> float:
    """Median wall time of `python -m modeling_afine --help` in a fresh process (start-up cost of every command)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "modeling_afine", "--help"], env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="pairs (default 1000)")
    ap.add_argument("--size", type=int, default=512, help="image side (default 512)")
    ap.add_argument("--per-reference", type=int, default=1, help="distorted images per reference (default 1: one-off pairs)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=None, help="decoding threads (default: the scorer's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--model", default=None, help="converted model dir (default: full-size random weights)")
    ap.add_argument("--keep", metavar="DIR", help="generate into DIR and keep it (reused when it already has the pairs)")
    ap.add_argument("--skip-cli", action="store_true", help="skip the fresh-process CLI runs")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the in-process rows (default 5)")
    args = ap.parse_args()

    import torch

    from modeling_afine import AfineConfig, AfineModel
    from modeling_afine.scoring import AfineScorer, _default_workers, load_afine

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="afine-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        csv = folder / "pairs.csv"
        if not (csv.is_file() and len(csv.read_text().splitlines()) == args.n + 1):
            print(f"generating {args.n} pairs at {args.size}x{args.size} in {folder}", file=sys.stderr)
            csv = make_images(folder, args.n, args.size, args.per_reference)
        if args.model:
            model_dir = args.model
            model, processor = load_afine(model_dir, device=args.device, dtype=args.dtype)
        else:
            torch.manual_seed(0)
            model_dir = str(folder / "random-model")
            if not (Path(model_dir) / "config.json").is_file():
                AfineModel(AfineConfig()).save_pretrained(model_dir)
            model, processor = load_afine(model_dir, device=args.device, dtype=args.dtype)
        workers = _default_workers(torch.device(args.device)) if args.workers is None else args.workers
        scorer = AfineScorer(model, processor=processor, batch_size=args.batch, num_workers=workers)

        pure_model_seconds(scorer, min(args.n, 2 * args.batch), args.per_reference, args.size)  # warm-up
        names = ["pure model", "scorer, 0 decoding threads", f"scorer, {workers} decoding threads"]
        per_round: dict[str, list[float]] = {name: [] for name in names}
        chunks = rounds_of(read_pairs(csv), args.per_reference, args.rounds)
        for k, chunk in enumerate(chunks):
            per_round[names[0]].append(pure_model_seconds(scorer, len(chunk), args.per_reference, args.size))
            per_round[names[1]].append(scorer_seconds(scorer, chunk, 0))
            per_round[names[2]].append(scorer_seconds(scorer, chunk, workers))
            print(f"  round {k + 1}/{len(chunks)}: " + ", ".join(f"{n} {v[-1]:.1f} s" for n, v in per_round.items()), file=sys.stderr)
        rows = [(name, sum(times)) for name, times in per_round.items()]
        pure = rows[0][1]
        ratios = {name: [t / p for t, p in zip(times, per_round[names[0]])] for name, times in per_round.items()}
        if not args.skip_cli:
            one = folder / "one.csv"
            one.write_text("\n".join(csv.read_text().splitlines()[:2]) + "\n")
            for out in (folder / "one.jsonl", folder / "all.jsonl"):
                out.unlink(missing_ok=True)
            startup = cli_seconds(one, model_dir, args, folder / "one.jsonl")
            total = cli_seconds(csv, model_dir, args, folder / "all.jsonl")
            rows.append(("CLI (fresh process), wall", total))
            rows.append(("CLI minus one-pair run (start-up + model load)", total - startup))

        print(
            f"\n{args.n} pairs at {args.size}x{args.size}, {args.per_reference} distorted per reference, batch {args.batch}, "
            f"{args.device} {args.dtype}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
            f"{os.cpu_count()} CPUs"
        )
        for name, seconds in rows:
            shown = name in names[1:] and len(chunks) > 1
            lo_hi = f"   rounds {min(ratios[name]):.2f}-{max(ratios[name]):.2f}x" if shown else ""
            print(f"  {name:<48} {seconds:9.2f} s   {seconds / pure:5.2f}x pure model{lo_hi}")
        print(f"  {'afine --help (fresh process, median of 5)':<48} {help_seconds():9.3f} s")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
