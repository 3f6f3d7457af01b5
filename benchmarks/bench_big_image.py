"""One big pair (default 3840x2160) through the full-size A-FINE model: wall time and peak memory.

Run it in a fresh process (``bench_scoring.py`` does) so the peak belongs to this pair alone:

    python benchmarks/bench_big_image.py [--dtype fp32|bf16] [--size 2160 3840] [--model DIR] [--threads N] [--json]
        [--path streaming|all-features|stock-modules|scorer|cli] [--workers N]

Paths:
  streaming       the model's own forward on two tensors already in memory (``model(distorted, reference)``)
  all-features    the computation before streaming (all 12 block outputs kept, then the heads)
  stock-modules   streaming with transformers' stock CLIP attention, MLP and patch convolution (bf16 fast paths off)
  scorer          the user path: ``AfineScorer(model).score([d.png], r.png)`` on PNG files written beforehand
  cli             ``afine score d.png r.png --model DIR -q --json`` run in this process (it loads the model itself)

Every path loads a saved model as users do (``load_afine``); without ``--model`` a child process saves the
random-weight model to a temporary folder first.

``peak_above_model_mb`` is the working set of the pair: the peak resident size (``VmHWM``) after the model is loaded
minus the resident size at that moment (the high-water mark is reset there through ``/proc/self/clear_refs``; for
the CLI at the moment it starts scoring). It includes the inputs (the tensors, or decoding the files).
``peak_rss_mb`` is the whole process. Random ViT-B/32 weights unless ``--model`` names a converted checkpoint (time
and memory do not depend on the weights). The last line of output is one JSON object when ``--json`` is given.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    On Linux this is ``VmHWM`` from /proc/self/status: ``ru_maxrss`` survives ``execve``, so a benchmark started
    by a big parent (a test session, say) would report the parent's peak instead of its own.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak() -> float:
    """Reset this process's peak resident size to its current one (Linux ``clear_refs``); returns the resident MiB.

    Freed heap memory is handed back first, so the baseline is what the loaded model really holds. Where the reset
    is not available the returned baseline is the peak so far, which only ever understates the working set.
    """
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return peak_rss_mb()
    rss = _status_mb("VmRSS")
    return peak_rss_mb() if rss is None else rss


def write_pair_pngs(folder: Path, size: tuple[int, int], seed: int = 1) -> tuple[Path, Path]:
    """A smooth random reference and a noisier copy as PNG files of ``size`` (H, W); fast to encode."""
    import numpy as np
    from PIL import Image

    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ref = np.stack([np.sin(xx / (40 + 9 * c) + yy / (55 + 7 * c)) for c in range(3)], axis=-1) * 90 + 128
    ref = ref.clip(0, 255).astype(np.uint8)
    dis = (ref + rng.integers(-12, 13, ref.shape)).clip(0, 255).astype(np.uint8)
    paths = folder / "distorted.png", folder / "reference.png"
    for array, path in zip((dis, ref), paths):
        Image.fromarray(array).save(path, compress_level=1)
    return paths


DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

#: A tiny backbone for smoke tests of the benchmark scripts themselves (``--tiny``).
TINY_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)


def build_model(model_dir: str | None, dtype: str, tiny: bool = False):
    """The model with the backbone in ``dtype`` and the heads in fp32 (as ``load_afine`` does).

    Random full-size ViT-B/32 weights (seed 0) unless ``model_dir`` names a converted checkpoint.
    """
    import torch

    from modeling_afine import AfineConfig, AfineModel

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    if model_dir:
        return AfineModel.from_pretrained(model_dir, dtype=torch_dtype).eval()
    torch.manual_seed(0)
    model = AfineModel(AfineConfig(vision_config=TINY_VISION if tiny else None)).eval()
    model.vision_model.to(torch_dtype)  # heads stay fp32, like from_pretrained(dtype=...) with the strict fp32 list
    return model


def all_features_forward(model, distorted, reference):
    """The pre-streaming computation: one joint backbone pass keeping all block outputs, then the heads."""
    import torch

    from modeling_afine.modeling_afine import stretch_to_multiple, target_size

    size = target_size(*distorted.shape[-2:])
    dp, rp = stretch_to_multiple(distorted, size=size), stretch_to_multiple(reference, size=size)
    feats = model.extract_features(torch.cat([dp, rp]))
    fd, fr = [f[:1] for f in feats], [f[1:] for f in feats]
    with torch.autocast(distorted.device.type, enabled=False):
        u_dis = model.natural_head(dp.float(), fd)
        u_ref = model.natural_head(rp.float(), fr)
        dist = model.fidelity_head(dp.float(), rp.float(), fd, fr)
        n_dis, n_ref = model.natural_calibration(u_dis), model.natural_calibration(u_ref)
        return model.scale_score(model.adapter(n_dis, n_ref, model.fidelity_calibration(dist)))


def _save_model_dir(args, folder: Path) -> None:
    """The benchmark's model saved with ``save_pretrained`` by a child process (this process stays clean)."""
    import subprocess

    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from bench_big_image import build_model; "
        "build_model(sys.argv[2] or None, 'fp32', sys.argv[3] == '1').save_pretrained(sys.argv[4])"
    )
    res = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent), args.model or "",
                          "1" if args.tiny else "0", str(folder)], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"saving the model failed: {res.stderr.strip()[-2000:]}")


def _run_cli(args, model_dir: Path, dis: Path, ref: Path) -> tuple[float, float]:
    """``afine score`` in this process; returns (score, resident MiB when scoring started, after the reset)."""
    import contextlib
    import io

    from modeling_afine import cli_score, scoring
    base: list[float] = []
    original = scoring.AfineScorer.iter_pairs

    def iter_pairs(self, *a, **k):  # the model is loaded by now: the pair's working set starts here
        base.append(reset_peak())
        return original(self, *a, **k)

    argv = [str(dis), str(ref), "--model", str(model_dir), "--device", args.device, "-q", "--json",
            "--dtype", DTYPE_NAMES[args.dtype]]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    out = io.StringIO()
    scoring.AfineScorer.iter_pairs = iter_pairs
    try:
        with contextlib.redirect_stdout(out):
            code = cli_score.score_main(argv)
    finally:
        scoring.AfineScorer.iter_pairs = original
    if code != 0:
        raise SystemExit(f"afine score exited with {code}")
    return float(json.loads(out.getvalue())[0]["score"]), base[0]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=2, default=(2160, 3840), metavar=("H", "W"))
    ap.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="backbone precision")
    ap.add_argument("--path", choices=("streaming", "all-features", "stock-modules", "scorer", "cli"), default="streaming",
                    help="stock-modules: streaming with transformers' stock CLIP attention/MLP/patch convolution; "
                         "scorer / cli: the user paths on PNG files")
    ap.add_argument("--model", default=None, help="converted A-FINE folder (default: random full-size weights)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--workers", type=int, default=None, help="decoding threads of the scorer / CLI (default: theirs)")
    ap.add_argument("--json", action="store_true", help="print one JSON line at the end")
    ap.add_argument("--tiny", action="store_true", help="tiny random backbone (smoke test of this script)")
    args = ap.parse_args(argv)

    import os
    import tempfile

    import torch

    if args.path == "stock-modules":
        from modeling_afine.modeling_afine import STOCK_MODULES_ENV

        os.environ[STOCK_MODULES_ENV] = "1"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    h, w = args.size
    tmp = tempfile.TemporaryDirectory(prefix="afine-big-")
    folder = Path(tmp.name)
    files = write_pair_pngs(folder, (h, w)) if args.path in ("scorer", "cli") else None
    # Every path loads the saved model the way users do (load_afine: from_pretrained, heads in fp32), so the resident
    # size it starts from is the same; the CLI loads it itself.
    model_dir = Path(args.model) if args.model else folder / "model"
    if not args.model:
        _save_model_dir(args, model_dir)
    model = scorer = None
    if args.path == "scorer":
        from modeling_afine import AfineScorer

        scorer = AfineScorer(str(model_dir), device=args.device, dtype=DTYPE_NAMES[args.dtype], num_workers=args.workers)
        model = scorer.model
    elif args.path != "cli":
        from modeling_afine import load_afine

        model = load_afine(str(model_dir), device=args.device, dtype=DTYPE_NAMES[args.dtype])[0]
    rss_model = peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    base = reset_peak() if args.path != "cli" else None
    start = time.perf_counter()
    if args.path == "cli":
        score, base = _run_cli(args, model_dir, *files)
    elif args.path == "scorer":
        score = float(scorer.score([str(files[0])], str(files[1])).score[0])
    else:
        g = torch.Generator().manual_seed(1)
        distorted = torch.randn(1, 3, h, w, generator=g).to(device)
        reference = torch.randn(1, 3, h, w, generator=g).to(device)
        with torch.inference_mode():
            if args.path in ("streaming", "stock-modules"):
                score = float(model(distorted, reference).score[0])
            else:
                score = float(all_features_forward(model, distorted, reference)[0])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    tmp.cleanup()
    patch = 32 if model is None else model.config.vision_config.patch_size
    tokens = (-(-h // patch)) * (-(-w // patch)) + 1
    report = {
        "size": [h, w],
        "tokens_per_image": tokens,
        "dtype": args.dtype,
        "path": args.path,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 3),  # the CLI's includes loading the model
        "peak_rss_mb": round(peak, 1),
        "rss_after_model_mb": round(base, 1),
        "peak_above_model_mb": round(peak - base, 1),
        "score": score,
    }
    if args.path != "cli":
        report["peak_rss_after_model_load_mb"] = round(rss_model, 1)
    if device.type == "cuda":
        report["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>20}: {value}")
    return report


if __name__ == "__main__":
    main()
