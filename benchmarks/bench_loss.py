"""AfineLoss forward+backward: time and memory, against the official-style computation used as a loss, in one run.

    python benchmarks/bench_loss.py --out bench_loss.json              # the full run (minutes; quiet machine)
    python benchmarks/bench_loss.py --quick                            # tiny model, small sizes: proves the script works

Rows (batch ``--batch`` of ``--sizes`` squares; full-size ViT-B/32 with random weights unless ``--model DIR``):
  official-style   what a pyiqa ``as_loss=True`` user gets: weights not frozen (pyiqa leaves them trainable), one
                   pair per call (pyiqa's A-FINE handles batch 1 only), both images through CLIP in one pass with
                   gradients enabled, all 12 block outputs kept, then the heads
                   (``bench_big_image.all_features_forward``); backward to the prediction
  AfineLoss        ``AfineLoss(output="score")``: frozen weights, the reference encoded under no_grad, block outputs
                   reduced to statistics as they come
  AfineLoss+ckpt   the same with ``gradient_checkpointing=True`` (each CLIP block recomputed in backward)
each in fp32 and in bf16 (``torch.autocast``, the usual mixed-precision training setting).

Time: one forward+backward, repeated ``--repeats`` times in interleaved rounds (each round runs every row once, so
drift on a shared machine hits all rows alike); median and the spread (min-max) are reported, and each row's
ratio to the official-style row of the same size and precision. Memory: ``saved MB`` is what autograd holds for
backward (distinct storages saved by the graph; exact and machine-independent); ``peak MB`` is the device's peak
allocation on CUDA, and on CPU the peak RSS increase of a fresh subprocess running that row alone (``--no-rss``
skips those subprocesses). Time is meaningless while other jobs share the cores; memory is not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_big_image import all_features_forward, build_model, peak_rss_mb  # noqa: E402

KINDS = ("official-style", "AfineLoss", "AfineLoss+ckpt")
DTYPES = ("fp32", "bf16")


def make_images(size: int, batch: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random reference ``[1, 3, size, size]`` in [0, 1] and ``batch`` noisy versions of it."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, size // 16), max(2, size // 16), generator=g)
    ref = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    pred = (ref + 0.05 * torch.randn(batch, 3, size, size, generator=g)).clamp(0, 1)
    return pred.to(device), ref.to(device)


class Row:
    """One configuration: ``step()`` runs forward+backward on a fresh leaf and returns the loss."""

    def __init__(self, kind: str, dtype: str, size: int, model, args, device: torch.device) -> None:
        from modeling_afine import AfineLoss

        self.kind, self.dtype, self.size, self.device = kind, dtype, size, device
        self.pred, self.ref = make_images(size, args.batch, device)
        self.model = model
        if kind == "official-style":
            self.loss = None
            self.proc = AfineLoss(model).processor  # the same normalisation constants
        else:
            self.loss = AfineLoss(model, output="score", gradient_checkpointing=kind.endswith("ckpt"))

    @property
    def name(self) -> str:
        return f"{self.kind} {self.dtype} {self.size}"

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.loss is not None:
            return self.loss(x, self.ref)
        # pyiqa-style: parameters trainable, reference in the same graph, every block output kept
        for p in self.model.parameters():
            p.requires_grad_(True)
        try:
            dis = self.proc.normalize_tensor(x)
            ref = self.proc.normalize_tensor(self.ref).expand_as(dis)
            return torch.cat([all_features_forward(self.model, dis[i : i + 1], ref[i : i + 1]) for i in range(len(dis))]).mean()
        finally:
            for p in self.model.parameters():
                p.requires_grad_(False)

    def step(self, saved: dict | None = None) -> float:
        x = self.pred.clone().requires_grad_()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bf16"):
            if saved is None:
                value = self._forward(x)
            else:
                with torch.autograd.graph.saved_tensors_hooks(_recorder(saved), lambda t: t):
                    value = self._forward(x)
        value.backward()
        self.model.zero_grad(set_to_none=True)
        return float(value.detach())


def _recorder(seen: dict):
    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        except RuntimeError:
            pass
        return t

    return pack


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak(row: Row) -> float:
    """Peak memory of one step in MiB: CUDA peak allocation, or (CPU, in a fresh process) the peak RSS increase."""
    if row.device.type == "cuda":
        sync(row.device)
        torch.cuda.reset_peak_memory_stats(row.device)
        base = torch.cuda.memory_allocated(row.device)
        row.step()
        sync(row.device)
        return (torch.cuda.max_memory_allocated(row.device) - base) / 2**20
    before = peak_rss_mb()
    row.step()
    return peak_rss_mb() - before


def rss_in_subprocess(args, kind: str, dtype: str, size: int) -> float:
    cmd = [sys.executable, __file__, "--single", kind, dtype, str(size), "--batch", str(args.batch), "--device", args.device]
    if args.model:
        cmd += ["--model", args.model]
    if args.quick:
        cmd.append("--quick")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr[-2000:]}")
    return float(json.loads(res.stdout.strip().splitlines()[-1])["peak_mb"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="converted A-FINE directory (default: random full-size weights)")
    parser.add_argument("--sizes", type=int, nargs="+", help="square sizes (default 256 512; --quick: 64 96)")
    parser.add_argument("--batch", type=int, help="images per batch (default 4; --quick: 2)")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--repeats", type=int, help="interleaved rounds, median and min-max reported (default 5; --quick: 2)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny model and small defaults: proves the script works")
    parser.add_argument("--no-rss", action="store_true", help="CPU: skip the per-row peak-RSS subprocesses")
    parser.add_argument("--single", nargs=3, metavar=("KIND", "DTYPE", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    defaults = ([64, 96], 2, 2) if args.quick else ([256, 512], 4, 5)
    args.sizes = args.sizes or defaults[0]
    args.batch = args.batch or defaults[1]
    args.repeats = args.repeats or defaults[2]
    device = torch.device(args.device)
    model = build_model(args.model, "fp32", tiny=args.quick).to(device)
    model.requires_grad_(False)

    if args.single:  # one row alone in this process: its peak memory
        kind, dtype, size = args.single
        row = Row(kind, dtype, int(size), model, args, device)
        print(json.dumps({"peak_mb": measure_peak(row)}))
        return {}

    rows = [Row(k, d, s, model, args, device) for s in args.sizes for d in args.dtypes for k in KINDS]
    times: dict[str, list[float]] = {row.name: [] for row in rows}
    values: dict[str, float] = {}
    for row in rows:  # warm-up, the values (for the agreement check) and what autograd saves
        seen: dict = {}
        values[row.name] = row.step(saved=seen)
        row.saved_mb = sum(seen.values()) / 2**20
    for _ in range(args.repeats):
        for row in rows:
            sync(device)
            start = time.perf_counter()
            row.step()
            sync(device)
            times[row.name].append(time.perf_counter() - start)

    results = []
    for row in rows:
        t = times[row.name]
        base = f"official-style {row.dtype} {row.size}"
        if device.type == "cuda":
            peak = measure_peak(row)
        elif args.no_rss:
            peak = None
        else:
            peak = rss_in_subprocess(args, row.kind, row.dtype, row.size)
        results.append(
            {
                "row": row.kind,
                "dtype": row.dtype,
                "size": row.size,
                "batch": args.batch,
                "median_s": statistics.median(t),
                "min_s": min(t),
                "max_s": max(t),
                "time_vs_official": statistics.median(t) / statistics.median(times[base]),
                "saved_mb": row.saved_mb,
                "saved_vs_official": row.saved_mb / next(r.saved_mb for r in rows if r.name == base),
                "peak_mb": peak,
                "loss": values[row.name],
            }
        )
    header = f"{'row':<15} {'dtype':<5} {'size':>5} {'median s':>9} {'min-max s':>15} {'x official':>10} {'saved MB':>9} {'x official':>10} {'peak MB':>8} {'loss':>9}"
    print(f"device {device}, batch {args.batch}, {args.repeats} interleaved rounds" + (" (quick: tiny model)" if args.quick else ""))
    print(header)
    for r in results:
        peak = "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        print(
            f"{r['row']:<15} {r['dtype']:<5} {r['size']:>5} {r['median_s']:>9.3f} {r['min_s']:>7.3f}-{r['max_s']:<7.3f} "
            f"{r['time_vs_official']:>10.2f} {r['saved_mb']:>9.1f} {r['saved_vs_official']:>10.2f} {peak:>8} {r['loss']:>9.3f}"
        )
    report = {"device": str(device), "torch": torch.__version__, "quick": bool(args.quick), "rows": results}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
