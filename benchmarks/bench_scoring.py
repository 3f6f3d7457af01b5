"""Benchmark: A-FINE scoring throughput, full-size ViT-B/32 with random weights.

Compares, in one run on the same machine:
  baseline   one pair per forward call, both images encoded every time (how the official afine.py scores)
  batched    pairs stacked into batches (distorted and reference go through CLIP in one pass)
  reuse      the shared reference encoded once (`encode_reference`), distorted images batched

Numbers are reported as ratios against the baseline measured in the same run.

    python benchmarks/bench_scoring.py [--n 8] [--size 256 256] [--batch 8] [--repeats 3] [--device cpu]

Last runs (2-core x86_64 CPU, no GPU, torch 2.13 CPU, fp32, medians of 3, another job sharing the machine
in the second run):
  8 distorted 256x256 vs one reference, batch 8:  baseline 2.25 s | batched 1.61 s (1.39x) | reuse 1.00 s (2.24x)
  4 distorted 512x512 vs one reference, batch 4:  baseline 3.37 s | batched 3.25 s (1.04x) | reuse 2.48 s (1.36x)
On a CPU, batching mostly saves per-call overhead; skipping the repeated reference encoding is the real win.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from modeling_afine import AfineConfig, AfineModel


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="distorted images")
    ap.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = AfineModel(AfineConfig()).eval().to(device)
    h, w = args.size
    dis = torch.randn(args.n, 3, h, w, device=device)
    ref = torch.randn(1, 3, h, w, device=device)

    def baseline():
        return torch.cat([model(distorted=dis[i : i + 1], reference=ref).score for i in range(args.n)])

    def batched():
        return torch.cat(
            [model(distorted=dis[i : i + args.batch], reference=ref.expand(len(dis[i : i + args.batch]), -1, -1, -1)).score
             for i in range(0, args.n, args.batch)]
        )

    def reuse():
        enc = model.encode_reference(ref)
        return torch.cat([model(distorted=dis[i : i + args.batch], reference_encoding=enc).score for i in range(0, args.n, args.batch)])

    with torch.inference_mode():
        a, b, c = baseline(), batched(), reuse()  # warm-up + agreement check
        assert torch.allclose(a, b, atol=1e-4) and torch.allclose(a, c, atol=1e-4), (a, b, c)
        t0 = timed(baseline, args.repeats)
        t1 = timed(batched, args.repeats)
        t2 = timed(reuse, args.repeats)
    print(f"device={device} threads={torch.get_num_threads()} n={args.n} size={h}x{w} batch={args.batch}")
    print(f"baseline {t0:.2f} s | batched {t1:.2f} s ({t0 / t1:.2f}x) | reuse {t2:.2f} s ({t0 / t2:.2f}x)")


if __name__ == "__main__":
    main()
