"""One big pair (default 3840x2160) through the full-size A-FINE model: wall time and peak RSS of this process.

Run it in a fresh process (``bench_scoring.py`` does) so the peak RSS belongs to this pair alone:

    python benchmarks/bench_big_image.py [--dtype fp32|bf16] [--size 2160 3840] [--path streaming|all-features]
                                         [--model DIR] [--threads N] [--json]

``--path all-features`` reproduces the computation before streaming (all 12 block outputs kept, then the heads),
and ``--path stock-modules`` streams with transformers' stock CLIP attention, MLP and patch convolution (the bf16
CPU fast paths off), for before/after comparisons in the same environment. Random ViT-B/32 weights unless ``--model`` names a
converted checkpoint (the numbers of interest, time and memory, do not depend on the weights).
The last line of output is one JSON object when ``--json`` is given.
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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs=2, default=(2160, 3840), metavar=("H", "W"))
    ap.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="backbone precision")
    ap.add_argument("--path", choices=("streaming", "all-features", "stock-modules"), default="streaming",
                    help="stock-modules: streaming with transformers' stock CLIP attention/MLP/patch convolution")
    ap.add_argument("--model", default=None, help="converted A-FINE folder (default: random full-size weights)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="print one JSON line at the end")
    ap.add_argument("--tiny", action="store_true", help="tiny random backbone (smoke test of this script)")
    args = ap.parse_args(argv)

    import os

    import torch

    if args.path == "stock-modules":
        from modeling_afine.modeling_afine import STOCK_MODULES_ENV

        os.environ[STOCK_MODULES_ENV] = "1"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_model(args.model, args.dtype, args.tiny).to(device)
    rss_model = peak_rss_mb()
    h, w = args.size
    g = torch.Generator().manual_seed(1)
    distorted = torch.randn(1, 3, h, w, generator=g).to(device)
    reference = torch.randn(1, 3, h, w, generator=g).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        if args.path in ("streaming", "stock-modules"):
            score = model(distorted, reference).score
        else:
            score = all_features_forward(model, distorted, reference)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    patch = model.config.vision_config.patch_size
    tokens = (-(-h // patch)) * (-(-w // patch)) + 1
    report = {
        "size": [h, w],
        "tokens_per_image": tokens,
        "dtype": args.dtype,
        "path": args.path,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_after_model_mb": round(rss_model, 1),
        "score": float(score[0]),
    }
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
